"""The one-image optimiser: coarse-to-fine Gatys style transfer.

Pure tensor code. It never touches files, never prints and never picks a
device: everything runs where the tensors and the model already are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F

from pipeline.core.descent import adam, lbfgs
from pipeline.core.losses import (
    EPS,
    gram_errors_loss,
    layer_of,
    squared_norm,
    statistic_names,
    statistics_loss,
    style_statistics,
    style_targets_of,
    tapped_error,
    tapped_gram_error,
    tv_loss,
)
from pipeline.core.scaling import loss_scale_for
from pipeline.core.temporal import temporal_loss
from pipeline.core.tiles import Tile, grid, positions, stride, tiled_statistics

DEFAULT_CONTENT_LAYERS: tuple[str, ...] = ("relu4_2",)
DEFAULT_STYLE_LAYERS: Mapping[str, float] = {f"relu{i}_1": 1.0 for i in range(1, 6)}
MIN_SIDE = 64  # the coarsest scale never goes below this (relu5_1 sees 1/16 of it)

_GOLDEN = (
    5**0.5 - 1
) / 2  # tiled levels move their grid by this fraction of a piece per evaluation: never the same cuts twice

# ITU-R BT.601 luma weights, for luminance-only transfer.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Settings:
    """Everything that changes the pixels of one optimised image."""

    size: int = 512
    scales: int = 3
    iterations: int = 300
    coarse_iterations: float = 1.0  # each coarser level runs this many times the next finer level's iterations
    refine_iterations: int | None = None  # each level above `size` (content larger than it); None: iterations // 4
    tile_side: int = 0  # a level with a side over this many px is evaluated in tiles of at most this side; 0: never
    history: int = 20  # L-BFGS (s, y) pairs kept (whole-image vectors: the shell shrinks it for huge tiled images)
    optimizer: str = "lbfgs"
    learning_rate: float = 0.02  # Adam only; the image is in [0, 1]
    content_weight: float = 1.0
    style_weight: float = 10.0
    tv_weight: float = 1.0
    style_loss: str = "gram"  # gram | wasserstein (see losses)
    style_balance: str = (
        "total"  # how the Gram loss weighs its layers: total (neural-style's) | layer (see losses.gram_loss)
    )
    temporal_weight: float = 0.0  # weight of the temporal term, when held frames are given
    content_layers: tuple[str, ...] = DEFAULT_CONTENT_LAYERS
    style_layers: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_STYLE_LAYERS))
    init: str = "content"  # content | noise | style | image (pass init_image)
    preserve_colors: bool = False
    seed: int = 0
    tolerance: float = (
        0.0  # a level ends once its loss changes by less than this fraction in tolerance_window iterations; 0: off
    )
    tolerance_window: int = 20

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.content_layers, *self.style_layers)))


@dataclass(frozen=True)
class Progress:
    """One progress report, handed to the callback."""

    scale: int  # 1-based, coarse to fine
    scales: int
    shape: tuple[int, int]
    iteration: int  # within this scale
    iterations: int
    loss: float
    content: float
    style: float
    tv: float
    temporal: float = 0.0


@dataclass
class Result:
    image: torch.Tensor  # (N, 3, H, W), RGB in [0, 1]
    trace: list[Progress]  # one entry per iteration, all scales; losses summed over the batch
    traces: list[list[Progress]]  # the same, per image of the batch, with its own losses

    @property
    def final(self) -> Progress:
        return self.trace[-1]

    @property
    def finals(self) -> list[Progress]:
        """Each image's own losses at the last iteration."""
        return [t[-1] for t in self.traces]


Callback = Callable[[Progress], None]
StyleTargets = dict[str, torch.Tensor]  # per style loss, its targets by name (see losses.target_names)
Held = Sequence[tuple[torch.Tensor, torch.Tensor]]  # (earlier stylised frame warped onto this one, its mask)


def fit_longest(shape: tuple[int, int], side: float) -> tuple[int, int]:
    """(height, width) scaled so that the longest side is `side`, aspect kept (each side at least 1 px)."""
    h, w = shape
    longest = max(h, w)
    return max(1, round(h * side / longest)), max(1, round(w * side / longest))


def scale_shapes(height: int, width: int, size: int, scales: int) -> list[tuple[int, int]]:
    """Shapes of the coarse-to-fine levels for a (height, width) image whose longest side becomes `size`.

    Each level doubles the previous one; levels whose longest side would drop
    below MIN_SIDE are left out (the finest level is always kept).
    """
    shapes = []
    for level in reversed(range(max(1, scales))):
        side = size / 2**level
        if side < MIN_SIDE and level > 0:
            continue
        shapes.append(fit_longest((height, width), side))
    return shapes


def iterations_per_scale(settings: Settings, n_scales: int) -> list[int]:
    """Iterations for each level, coarse to fine: the finest gets `iterations`."""
    return [
        max(1, round(settings.iterations * settings.coarse_iterations ** (n_scales - 1 - i))) for i in range(n_scales)
    ]


@dataclass(frozen=True)
class Level:
    """One level of the schedule: its shape and iterations."""

    shape: tuple[int, int]
    iterations: int


def levels(shape: tuple[int, int], settings: Settings) -> list[Level]:
    """The schedule for content of `shape`: `scales` coarse-to-fine levels up to `size`, then, for content
    larger than `size`, refinement levels that double up to the content's own shape (the last is it).

    A refinement level starts from the level below, upsampled, and runs `refine_iterations`.
    """
    h, w = shape
    longest = max(h, w)
    size = min(settings.size, longest)
    optimised = scale_shapes(h, w, size, settings.scales)
    out = [Level(s, i) for s, i in zip(optimised, iterations_per_scale(settings, len(optimised)))]
    refine = settings.refine_iterations or max(1, settings.iterations // 4)
    side = 2 * size
    while side * 1.5 <= longest:  # no level within 1.5x of the full size: the last step goes straight there
        out.append(Level(fit_longest(shape, side), refine))
        side *= 2
    if size < longest:
        out.append(Level((h, w), refine))
    return out


def tile_for(shape: tuple[int, int], settings: Settings) -> int:
    """The tile side a level of `shape` is evaluated in: `settings.tile_side` when a side exceeds it, else 0 (whole)."""
    return settings.tile_side if settings.tile_side and max(shape) > settings.tile_side else 0


def min_side(layers: Sequence[str]) -> int:
    """The shortest side an input needs for each of `layers` to keep a position: 2 px per pool before the
    deepest (relu5_1: 16, pool5: 32); VGG's pools fail on anything shorter."""
    return max(stride(layer) for layer in layers)


Pads = tuple[int, int, int, int]  # (left, right, top, bottom) px, as F.pad takes them


def padding(shape: tuple[int, int], side: int) -> Pads:
    """The pads that bring both sides of `shape` to at least `side` px, split evenly (none when they are)."""
    dh, dw = max(0, side - shape[0]), max(0, side - shape[1])
    return dw // 2, dw - dw // 2, dh // 2, dh - dh // 2


def pad(image: torch.Tensor, pads: Pads, mode: str = "replicate") -> torch.Tensor:
    """(N, C, H, W) `image` padded by `pads`, its edge pixels repeated (`mode` as F.pad's)."""
    return F.pad(image, pads, mode=mode) if any(pads) else image


def crop(image: torch.Tensor, pads: Pads) -> torch.Tensor:
    """What `pad(image, pads)` padded, cropped away again."""
    left, right, top, bottom = pads
    h, w = image.shape[-2:]
    return image[..., top : h - bottom, left : w - right]


def resize(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Resize (N, C, H, W) to `shape`, antialiased when shrinking."""
    if tuple(image.shape[-2:]) == tuple(shape):
        return image
    shrink = shape[0] < image.shape[-2] or shape[1] < image.shape[-1]
    return F.interpolate(image, size=shape, mode="bilinear", align_corners=False, antialias=shrink)


def luminance(image: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of an RGB image, repeated to 3 channels."""
    weights = image.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (image * weights).sum(1, keepdim=True).expand_as(image).contiguous()


def recolor(luma_image: torch.Tensor, color_source: torch.Tensor) -> torch.Tensor:
    """Put the luminance of `luma_image` under the chroma of `color_source` (YIQ)."""
    to_yiq = luma_image.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq = torch.einsum("ij,njhw->nihw", to_yiq, color_source)
    yiq[:, :1] = torch.einsum("j,njhw->nhw", to_yiq[0], luma_image).unsqueeze(1)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(to_yiq), yiq).clamp(0, 1)


def style_area(shape: tuple[int, int], scale: float = 1.0) -> int:
    """The pixel area style images are rescaled to for a level of `shape`: its own area, times scale²
    (`scale` is the style's side relative to the level's, as neural-style's -style_scale)."""
    return max(1, round(shape[0] * shape[1] * scale**2))


def style_area_shape(style: torch.Tensor, area: int) -> tuple[int, int]:
    """The shape of `style` rescaled to `area` pixels, aspect kept."""
    h, w = style.shape[-2:]
    ratio = math.sqrt(area / (h * w))
    return max(1, round(h * ratio)), max(1, round(w * ratio))


@torch.inference_mode()
def style_targets(
    model: torch.nn.Module,
    styles: Sequence[tuple[torch.Tensor, float]],
    area: int,
    layers: Sequence[str],
    preserve_colors: bool = False,
    tile_side: int = 0,
    loss: str = "gram",
) -> StyleTargets:
    """Blended targets of style loss `loss` (see `losses.style_targets_of`) for style images rescaled to `area` pixels.

    `styles` holds (image (1, 3, H, W) RGB [0, 1], weight) pairs; the weights
    are normalised to sum to 1 and the statistics blended by them: the Grams,
    and for wasserstein the means (the covariance follows from the blended
    moments). With `tile_side` (the optimiser's), a rescaled style image
    with a side over it is encoded in tiles (see `tiled_statistics`).
    """
    total = sum(w for _, w in styles)
    names = statistic_names(layers, loss)
    blended: StyleTargets = {}
    for image, weight in styles:
        x = resize(image, style_area_shape(image, area))
        x = pad(x, padding(tuple(x.shape[-2:]), min_side(layers)))  # a thin strip of a style: see `min_side`
        if preserve_colors:
            x = luminance(x)
        if tile_side and max(x.shape[-2:]) > tile_side:
            stats = tiled_statistics(model, x, names, grid(tuple(x.shape[-2:]), tile_side))
        else:
            stats = style_statistics(model(x), layers, loss)
        for name in names:
            part = stats[name][0] * (weight / total)
            blended[name] = blended[name] + part if name in blended else part
    return style_targets_of(blended, loss)


def _initial_image(settings: Settings, content: torch.Tensor, init_image: torch.Tensor | None) -> torch.Tensor:
    if settings.init == "content":
        return content.clone()
    if settings.init == "noise":  # each image of a batch gets the noise it would get alone
        generator = (torch.Generator().manual_seed(settings.seed) for _ in range(content.shape[0]))
        noise = torch.cat([torch.rand((1, *content.shape[1:]), generator=g) for g in generator])
        return noise.to(content.device, content.dtype)
    if init_image is None:
        raise ValueError(f"init {settings.init!r} needs an init image")
    return resize(init_image.to(content.device, content.dtype), tuple(content.shape[-2:])).expand_as(content).clone()


OnIteration = Callable[
    [int, list[list[float]]], None
]  # (iteration within the level, [total, content, style, tv, temporal] per image)


class Objective:
    """Weighted total loss of an image at one scale."""

    def __init__(
        self, model: torch.nn.Module, settings: Settings, content: torch.Tensor, targets: StyleTargets, held: Held = ()
    ) -> None:
        self.model = model
        self.settings = settings
        self.style_targets = {k: t for k, t in targets.items() if layer_of(k) in settings.style_layers}
        self.shape = tuple(content.shape[-2:])
        self.held = [(resize(w, self.shape), resize(m, self.shape)) for w, m in held]
        self.loss_scale = loss_scale_for(model)  # scales only for float16 layers (see scaling)
        self._encode(content)
        self.content_norms = _norms(self.content_targets)  # outside inference mode: autograd keeps them
        # ‖A‖² per image of each target Gram ((C, C) for all images, or (N, C, C)), for the Gram loss
        grams = self.style_targets if settings.style_loss == "gram" else {}
        self.style_norms = {k: squared_norm(t.reshape(-1, *t.shape[-2:])) for k, t in grams.items()}

    @torch.inference_mode()
    def _encode(self, content: torch.Tensor) -> None:
        feats = self.model(content)
        self.content_targets = {k: feats[k].clone() for k in self.settings.content_layers}

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (total loss, [total, content, style, tv, temporal] per image, shape (5, N)) for (N, 3, H, W) images."""
        s = self.settings
        errors: dict[str, torch.Tensor] = {}  # made as the features pass, where the next layers take them over
        style_errors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # the Gram loss's, likewise

        def tap(name: str, x: torch.Tensor) -> torch.Tensor:
            if name in self.content_targets:
                x, errors[name] = tapped_error(x, self.content_targets[name])
            if s.style_loss == "gram" and name in self.style_targets:
                x, error = tapped_gram_error(x, self.style_targets[name])
                style_errors[name] = (error, self.style_norms[name])
            return x

        feats = self.model(image, tap)
        if style_errors:
            style = gram_errors_loss(style_errors, self.style_targets, s.style_layers, s.style_balance)
        else:
            stats = style_statistics(feats, list(dict.fromkeys(map(layer_of, self.style_targets))), s.style_loss)
            style = statistics_loss(stats, self.style_targets, s.style_layers, s.style_loss, s.style_balance)
        tv = tv_loss(image)
        tm = temporal_loss(image, self.held) if self.held else torch.zeros_like(tv)
        return _combine(s, sum(errors[k] / self.content_norms[k] for k in errors) / len(errors), style, tv, tm)

    def backward(self, image: torch.Tensor) -> torch.Tensor:
        """The loss components at `image` (as `__call__`), with the gradient of the total left in `image.grad`."""
        out: list[torch.Tensor] = []

        def total() -> torch.Tensor:
            loss, parts = self(image)
            out[:] = [parts]
            return loss

        self.loss_scale.backward(total, image)
        return out[0]


def _norms(targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """‖T‖² + ε per image of each content target, in float32 at least (the denominators of `losses.relative_error`)."""
    return {k: squared_norm(t) + EPS for k, t in targets.items()}


def _combine(
    settings: Settings, content: torch.Tensor, style: torch.Tensor, tv: torch.Tensor, temporal: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total, [total, content, style, tv, temporal] per image) from the (N,) components."""
    s = settings
    each = s.content_weight * content + s.style_weight * style + s.tv_weight * tv + s.temporal_weight * temporal
    return each.sum(), torch.stack([p.detach() for p in (each, content, style, tv, temporal.expand_as(tv))])


class TiledObjective(Objective):
    """The same loss as `Objective`, and its gradient, for a level too large to encode at once: the VGG
    passes run on one tile at a time (see `tiles`), so memory holds one tile's activations.

    Per evaluation, a first pass without gradients sums each piece's contributions into the whole level's
    style statistics (Grams, and means for wasserstein); the style loss and its gradient with respect to each
    statistic follow. A second pass encodes each tile again, with gradients, and back-propagates that tile's
    share: its sums weighted by those gradients, plus its content error against the level's content features
    (assembled once from the pieces). The gradients of all tiles add up to the whole level's. Every evaluation moves the grid, so
    that no cut stays put. Total variation and the temporal term are per pixel and need no VGG pass: they
    use the whole image.
    """

    @torch.no_grad()  # not inference mode: the targets take part in the autograd graph of `backward`
    def _encode(self, content: torch.Tensor) -> None:
        self.evaluations = 0
        self.content_targets = {}  # the whole level's content features, assembled from the pieces'
        for t in grid(self.shape, self.settings.tile_side):
            feats = self.model(t.crop(content))
            for k in self.settings.content_layers:
                piece = t.window(feats[k], k)
                if k not in self.content_targets:
                    rows, cols = (n // stride(k) for n in self.shape)
                    self.content_targets[k] = piece.new_zeros(*piece.shape[:2], rows, cols)
                self.content_targets[k][(..., *t.placed(k))] = piece

    def _tile_share(
        self,
        t: Tile,
        crop: torch.Tensor,
        names: Sequence[str],
        stat_grads: Mapping[str, torch.Tensor],
        found: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Tile `t`'s share of the loss at `crop` (its pixels): its statistics' sums weighted by the loss's
        gradients with respect to the level's statistics, plus its content error (each also left in `found`)."""
        s = self.settings
        feats = self.model(crop)
        sums = t.sums(feats, names)
        share = sum((stat_grads[k] * sums[k]).sum() / positions(self.shape, layer_of(k)) for k in sums)
        for k, target in self.content_targets.items():
            error = (t.window(feats[k], k).float() - target[(..., *t.placed(k))].float()).flatten(1).pow(2).sum(1)
            found[k] = error.detach()
            share = share + s.content_weight * (error / self.content_norms[k]).sum() / len(self.content_targets)
        return share

    def backward(self, image: torch.Tensor) -> torch.Tensor:
        """As `Objective.backward`; each evaluation moves the tile grid (see `tiles.grid`)."""
        s = self.settings
        tiles = grid(self.shape, s.tile_side, (self.evaluations * _GOLDEN) % 1.0)
        self.evaluations += 1
        names = statistic_names(list(dict.fromkeys(layer_of(k) for k in self.style_targets)), s.style_loss)
        with torch.no_grad():
            stats = tiled_statistics(self.model, image, names, tiles)
        stats = {k: g.requires_grad_() for k, g in stats.items()}
        style = statistics_loss(stats, self.style_targets, s.style_layers, s.style_loss, s.style_balance)
        stat_grads = dict(zip(stats, torch.autograd.grad(style.sum() * s.style_weight, list(stats.values()))))
        grad = torch.zeros_like(image)
        errors = {k: torch.zeros(image.shape[0], device=image.device) for k in self.content_targets}
        for t in tiles:
            crop = t.crop(image).detach().requires_grad_()
            found: dict[str, torch.Tensor] = {}
            self.loss_scale.backward(partial(self._tile_share, t, crop, names, stat_grads, found), crop)
            for k, error in found.items():
                errors[k] += error
            t.crop(grad).add_(crop.grad)
        pixels = image.detach().requires_grad_()
        tv = tv_loss(pixels)
        tm = temporal_loss(pixels, self.held) if self.held else torch.zeros_like(tv)
        (s.tv_weight * tv + s.temporal_weight * tm).sum().backward()
        image.grad = grad.add_(pixels.grad)
        content = sum(errors[k] / self.content_norms[k] for k in errors) / len(errors)
        return _combine(s, content, style.detach(), tv.detach(), tm.detach())[1]


READ_EVERY = 0.1  # seconds between reads of the losses from the device (each a sync; on the CPU, every iteration)


def converged(losses: Sequence[float], tolerance: float, window: int) -> bool:
    """Whether the last of `losses` is within `tolerance` (a fraction) of the one `window` iterations before."""
    if tolerance <= 0 or len(losses) <= window:
        return False
    before = losses[-1 - window]
    return abs(losses[-1] - before) < tolerance * abs(before)


def _run_scale(
    objective: Objective, image: torch.Tensor, iterations: int, settings: Settings, report: OnIteration
) -> torch.Tensor:
    """Optimise one level for `iterations`, or until its loss has `converged` (settings.tolerance)."""
    image = image.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)
    losses: list[float] = []  # the batch's total per iteration, as read back
    pending: list[torch.Tensor] = []  # iterations' loss parts not read back yet
    last_read = [time.monotonic()]

    def read() -> None:
        """Read the pending losses back in one sync, and report each iteration's."""
        for values in torch.stack(pending).tolist() if pending else ():
            losses.append(sum(values[0]))
            report(len(losses), values)
        pending.clear()
        last_read[0] = time.monotonic()

    def evaluate() -> torch.Tensor:
        parts = objective.backward(image)
        pending.append(parts.detach())
        if settings.tolerance > 0 or time.monotonic() - last_read[0] >= READ_EVERY:
            read()  # a device sync: at most READ_EVERY apart unless the early stop needs every value
        return parts[0].sum()

    def stop() -> bool:
        return converged(losses, settings.tolerance, settings.tolerance_window)

    if settings.optimizer == "lbfgs":
        lbfgs(image, evaluate, iterations, settings.history, stop=stop)
    elif settings.optimizer == "adam":
        adam(image, evaluate, iterations, settings.learning_rate, stop=stop)
    else:
        raise ValueError(f"unknown optimizer {settings.optimizer!r}; use lbfgs or adam")
    read()
    return image.detach()


class _Recorder:
    """The run's trace: one entry per iteration, the batch's sums and each image's own; each sum goes to the callback."""

    def __init__(self, images: int, scales: int, callback: Callback | None) -> None:
        self.scales = scales
        self.callback = callback
        self.trace: list[Progress] = []
        self.traces: list[list[Progress]] = [[] for _ in range(images)]

    def level(self, number: int, shape: tuple[int, int], iterations: int) -> OnIteration:
        """The report function of one level."""

        def report(i: int, parts: list[list[float]]) -> None:
            for own, each in zip(self.traces, zip(*parts)):
                own.append(Progress(number, self.scales, shape, i, iterations, *each))
            p = Progress(number, self.scales, shape, i, iterations, *map(sum, parts))
            self.trace.append(p)
            if self.callback is not None:
                self.callback(p)

        return report


def _run_level(
    model: torch.nn.Module,
    settings: Settings,
    level: Level,
    source: torch.Tensor,
    image: torch.Tensor,
    targets: StyleTargets,
    held: Held,
    report: OnIteration,
) -> torch.Tensor:
    """`image` optimised at `level` against `source`, both resized to its shape. A side shorter than the
    layers need (see `min_side`) is padded, edge pixels repeated (earlier frames' masks with 0: the
    temporal term ignores the pad), for the optimisation and cropped back: the result has the level's shape."""
    pads = padding(level.shape, min_side(settings.layers))
    level_source = pad(resize(source, level.shape), pads)
    level_held = [(pad(resize(w, level.shape), pads), pad(resize(m, level.shape), pads, "constant")) for w, m in held]
    start = pad(resize(image, level.shape).clamp(0, 1), pads)
    kind = TiledObjective if tile_for(tuple(level_source.shape[-2:]), settings) else Objective
    objective = kind(model, settings, level_source, targets, level_held)
    return crop(_run_scale(objective, start, level.iterations, settings, report), pads)


def stylize(
    model: torch.nn.Module,
    content: torch.Tensor,
    targets: Sequence[StyleTargets],
    settings: Settings,
    init_image: torch.Tensor | None = None,
    callback: Callback | None = None,
    held: Held = (),
) -> Result:
    """Optimise one image, or a batch of same-size images, from coarse to fine.

    `content` is (N, 3, H, W) RGB [0, 1] at the output shape, which may be larger than `settings.size`
    (see `levels`); `targets` holds one set of style targets per level of `levels((H, W), settings)`,
    as made by `style_targets` for `settings.style_loss` at that level's area (luminance-only when
    `preserve_colors`): for all images, or (N, …) tensors, one per image
    (see `stack_targets`). A batch needs Adam, whose per-element update keeps
    the images independent; L-BFGS's dot products would couple them.
    `init_image` is one image for all or one per image. `held` adds the
    temporal term (video): earlier stylised frames warped onto this one, with
    their (N, 1, H, W) reliability masks, weighted by `settings.temporal_weight`.
    A level with a side over `settings.tile_side` is evaluated in tiles (see `TiledObjective`). A level ends early
    once its loss has converged (`settings.tolerance`: see `converged`); the trace holds the iterations run.
    Returns the images in [0, 1], a per-iteration trace and each image's final losses.
    """
    schedule = levels(tuple(content.shape[-2:]), settings)
    if len(targets) != len(schedule):
        raise ValueError(f"{len(schedule)} scales need {len(schedule)} style target sets, got {len(targets)}")
    if content.shape[0] > 1 and settings.optimizer != "adam":
        raise ValueError(f"a batch of {content.shape[0]} images needs optimizer adam, not {settings.optimizer!r}")
    source = content
    if settings.preserve_colors:  # optimise luminance only; earlier frames and the init image too
        source = luminance(content)
        held = [(luminance(w), m) for w, m in held]
        init_image = luminance(init_image) if init_image is not None else None
    image = _initial_image(settings, source, init_image)
    recorder = _Recorder(content.shape[0], len(schedule), callback)
    for number, (level, level_targets) in enumerate(zip(schedule, targets), start=1):
        report = recorder.level(number, level.shape, level.iterations)
        image = _run_level(model, settings, level, source, image, level_targets, held, report)
    image = image.clamp(0, 1)
    if settings.preserve_colors:
        image = recolor(image, content)
    return Result(image=image, trace=recorder.trace, traces=recorder.traces)


def stack_targets(per_image: Sequence[Sequence[StyleTargets]]) -> list[StyleTargets]:
    """Per-image target sets (one list of levels each) as one batch's: (N, …) tensors per name and level."""
    return [{k: torch.stack([t[k] for t in level]) for k in level[0]} for level in zip(*per_image)]
