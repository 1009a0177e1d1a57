"""The one-image optimiser: coarse-to-fine Gatys style transfer.

Pure tensor code. It never touches files, never prints and never picks a
device: everything runs where the tensors and the model already are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from pipeline.descent import adam, lbfgs
from pipeline.losses import content_loss, gram, style_loss, tv_loss
from pipeline.temporal import temporal_loss

DEFAULT_CONTENT_LAYERS: tuple[str, ...] = ("relu4_2",)
DEFAULT_STYLE_LAYERS: Mapping[str, float] = {f"relu{i}_1": 1.0 for i in range(1, 6)}
MIN_SIDE = 64  # the coarsest scale never goes below this (relu5_1 sees 1/16 of it)

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}

# ITU-R BT.601 luma weights, for luminance-only transfer.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Settings:
    """Everything that changes the pixels of one optimised image."""

    size: int = 512
    scales: int = 3
    iterations: int = 300
    coarse_iterations: float = 1.0  # each coarser level runs this many times the next finer level's iterations
    optimizer: str = "lbfgs"
    precision: str = "fp32"  # fp32 | bf16 | fp16: the VGG pass under autocast; Grams and losses stay float32
    learning_rate: float = 0.02  # Adam only; the image is in [0, 1]
    content_weight: float = 1.0
    style_weight: float = 10.0
    tv_weight: float = 1.0
    temporal_weight: float = 0.0  # weight of the temporal term, when held frames are given
    content_layers: tuple[str, ...] = DEFAULT_CONTENT_LAYERS
    style_layers: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_STYLE_LAYERS))
    init: str = "content"  # content | noise | style | image (pass init_image)
    preserve_colors: bool = False
    seed: int = 0

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
StyleTargets = dict[str, torch.Tensor]
Held = Sequence[tuple[torch.Tensor, torch.Tensor]]  # (earlier stylised frame warped onto this one, its mask)


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
        ratio = side / max(height, width)
        shapes.append((max(1, round(height * ratio)), max(1, round(width * ratio))))
    return shapes


def iterations_per_scale(settings: Settings, n_scales: int) -> list[int]:
    """Iterations for each level, coarse to fine: the finest gets `iterations`."""
    return [
        max(1, round(settings.iterations * settings.coarse_iterations ** (n_scales - 1 - i))) for i in range(n_scales)
    ]


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
) -> StyleTargets:
    """Blended Gram targets for style images rescaled to `area` pixels.

    `styles` holds (image (1, 3, H, W) RGB [0, 1], weight) pairs; the weights
    are normalised to sum to 1 and the Grams blended by them.
    """
    total = sum(w for _, w in styles)
    blended: StyleTargets = {}
    for image, weight in styles:
        x = resize(image, style_area_shape(image, area))
        if preserve_colors:
            x = luminance(x)
        feats = model(x)
        for layer in layers:
            g = gram(feats[layer])[0] * (weight / total)
            blended[layer] = blended[layer] + g if layer in blended else g
    return blended


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


class _Objective:
    """Weighted total loss of an image at one scale; keeps the last components."""

    def __init__(
        self, model: torch.nn.Module, settings: Settings, content: torch.Tensor, targets: StyleTargets, held: Held = ()
    ) -> None:
        if settings.precision not in ("fp32", *_AUTOCAST):
            raise ValueError(f"unknown precision {settings.precision!r}; use fp32, bf16 or fp16")
        self.model = model
        self.settings = settings
        with torch.inference_mode():
            feats = model(content)
        self.content_targets = {k: feats[k].clone() for k in settings.content_layers}
        self.style_targets = {k: targets[k] for k in settings.style_layers}
        shape = tuple(content.shape[-2:])
        self.held = [(resize(w, shape), resize(m, shape)) for w, m in held]

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (total loss, [total, content, style, tv, temporal] per image, shape (5, N)) for (N, 3, H, W) images."""
        s = self.settings
        dtype = _AUTOCAST.get(s.precision)
        with torch.autocast(image.device.type, dtype=dtype, enabled=dtype is not None):
            feats = self.model(image)
        c = content_loss(feats, self.content_targets)
        st = style_loss(feats, self.style_targets, s.style_layers)
        tv = tv_loss(image)
        tm = temporal_loss(image, self.held) if self.held else torch.zeros_like(tv)
        each = s.content_weight * c + s.style_weight * st + s.tv_weight * tv + s.temporal_weight * tm
        return each.sum(), torch.stack([p.detach() for p in (each, c, st, tv, tm.expand_as(tv))])


def _run_scale(
    objective: _Objective, image: torch.Tensor, iterations: int, settings: Settings,
    report: Callable[[int, list[list[float]]], None],
) -> torch.Tensor:
    image = image.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)
    count = 0

    def evaluate() -> torch.Tensor:
        nonlocal count
        total, parts = objective(image)
        total.backward()
        count += 1
        report(count, parts.tolist())  # L-BFGS reads the loss anyway: one sync per iteration
        return total

    if settings.optimizer == "lbfgs":
        lbfgs(image, evaluate, iterations)
    elif settings.optimizer == "adam":
        adam(image, evaluate, iterations, settings.learning_rate)
    else:
        raise ValueError(f"unknown optimizer {settings.optimizer!r}; use lbfgs or adam")
    return image.detach()


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

    `content` is (N, 3, H, W) RGB [0, 1] at the output shape; `targets` holds
    one set of style Grams per level of `scale_shapes(H, W, max(H, W), settings.scales)`,
    as made by `style_targets` at that level's area (luminance-only when
    `preserve_colors`): (C, C) for all images, or (N, C, C), one per image
    (see `stack_targets`). A batch needs Adam, whose per-element update keeps
    the images independent; L-BFGS's dot products would couple them.
    `init_image` is one image for all or one per image. `held` adds the
    temporal term (video): earlier stylised frames warped onto this one, with
    their (N, 1, H, W) reliability masks, weighted by `settings.temporal_weight`.
    Returns the images in [0, 1], a per-iteration trace and each image's final losses.
    """
    shapes = scale_shapes(*content.shape[-2:], max(content.shape[-2:]), settings.scales)
    if len(targets) != len(shapes):
        raise ValueError(f"{len(shapes)} scales need {len(shapes)} style target sets, got {len(targets)}")
    if content.shape[0] > 1 and settings.optimizer != "adam":
        raise ValueError(f"a batch of {content.shape[0]} images needs optimizer adam, not {settings.optimizer!r}")
    source = content
    if settings.preserve_colors:  # optimise luminance only; earlier frames and the init image too
        source = luminance(content)
        held = [(luminance(w), m) for w, m in held]
        init_image = luminance(init_image) if init_image is not None else None
    image = _initial_image(settings, source, init_image)
    trace: list[Progress] = []
    traces: list[list[Progress]] = [[] for _ in range(content.shape[0])]
    for level, (shape, iters, level_targets) in enumerate(
        zip(shapes, iterations_per_scale(settings, len(shapes)), targets), start=1
    ):
        def report(i: int, parts: list[list[float]], _shape=shape, _iters=iters, _level=level) -> None:
            for own, each in zip(traces, zip(*parts)):
                own.append(Progress(_level, len(shapes), _shape, i, _iters, *each))
            p = Progress(_level, len(shapes), _shape, i, _iters, *map(sum, parts))
            trace.append(p)
            if callback is not None:
                callback(p)

        objective = _Objective(model, settings, resize(source, shape), level_targets, held)
        image = _run_scale(objective, resize(image, shape).clamp(0, 1), iters, settings, report)
    image = image.clamp(0, 1)
    if settings.preserve_colors:
        image = recolor(image, content)
    return Result(image=image, trace=trace, traces=traces)


def stack_targets(per_image: Sequence[Sequence[StyleTargets]]) -> list[StyleTargets]:
    """Per-image target sets (one list of levels each) as one batch's: (N, C, C) Grams per layer and level."""
    return [{k: torch.stack([t[k] for t in level]) for k in level[0]} for level in zip(*per_image)]
