"""Losses for Gatys-style transfer: Gram matrix, content, style, total variation.

Normalisation (the same weights mean the same thing at every image size and
for every weight source):

* ``gram(F) = F Fᵀ / (H·W)``: the mean outer product per position, so it does
  not grow with the image (this is Gatys et al.'s 1/(4N²M²) up to a constant).
* the content term is the *relative* squared error ``‖X − T‖² / ‖T‖²`` per
  layer, so Caffe (0-255) and torchvision (mean/std) weights need the same
  weights.
* the Gram style term, with balance ``total`` (the default), is neural-style's
  sum over layers of the mean squared error of Grams divided by C (its
  ``F Fᵀ / (C·H·W)``), taken relative to the same sum for zero Grams: layers
  count by the size of their activations, as in jcjohnson's neural-style, and
  the weights stay free of the activations' scale. With balance ``layer``
  each layer's relative error counts alike (relu5_1 like relu1_1).
* the Wasserstein style term (``wasserstein``) is the squared 2-Wasserstein
  distance between Gaussian fits of the features, relative to the target's
  ``‖μₛ‖² + tr Σₛ`` per layer (see `wasserstein`).
* total variation is the mean squared difference of neighbouring pixels of
  the RGB [0, 1] image.

Style statistics and targets are dicts of tensors named by layer: the layer's
own name holds its Gram (for a Gaussian fit, the second raw moment), and with
``wasserstein`` ``layer.mean`` holds the mean of its features and, in targets,
``layer.sqrt`` the symmetric square root of the covariance.

All functions take and return tensors and work on any device. Features may be
reduced precision; losses are computed in float32, the Wasserstein term in
float64. Grams come out in float32; those of bfloat16 features are products
of the bfloat16 values, accumulated in float32 (see `gram`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

EPS = 1e-8
STYLE_LOSSES = ("gram", "wasserstein")
STYLE_BALANCES = ("total", "layer")  # how the Gram loss weighs its layers (see gram_loss)
MEAN, SQRT = ".mean", ".sqrt"  # the suffixes of a layer's mean and covariance square root (see the module docstring)
PIECE = 2048  # the fewest positions a piece of a Gram's product is made over (see `_pieces`)
_FLOOR = 1e-8  # the backward of tr √A holds A's eigenvalues at least this fraction of its largest


class _Gram(torch.autograd.Function):
    """(X, F Fᵀ / n) for (N, C, H, W) X, F its (N, C, n) positions: the Gram (float32 at least), and X passed
    through (a view).

    Where the network goes on from the passed X, the backward gets both gradients at once and adds the Gram's,
    (G' + G'ᵀ) F / n, into the layer's own X' inside one batched matmul (`baddbmm_`), in place where autograd
    holds X' alone: autograd's own Gram would make the product and then sum the two, two more passes over a
    feature-sized tensor. The 1/n is taken on C × C, and the gradient keeps X's memory layout.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.set_materialize_grads(False)
        return x.view_as(x), _gram_of(x)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_x: torch.Tensor | None, grad: torch.Tensor | None
    ) -> torch.Tensor | None:
        (x,) = ctx.saved_tensors
        if grad is None:
            return grad_x
        both = (grad + grad.transpose(1, 2)).div_(x.shape[-2] * x.shape[-1]).to(x.dtype)
        return add_gram_gradient(x, both, grad_x)


def _gram_of(x: torch.Tensor) -> torch.Tensor:
    """F Fᵀ / n of (N, C, H, W) X, F its (N, C, n) positions, in float32 at least (a new tensor): `_Gram`'s
    forward, the product (`_product`) divided in float32."""
    return _product(x).to(torch.promote_types(x.dtype, torch.float32)).div_(x.shape[-2] * x.shape[-1])


def _product(x: torch.Tensor) -> torch.Tensor:
    """F Fᵀ of (N, C, H, W) X, F its (N, C, n) positions, in X's precision; where `_pieces` splits the
    positions, each piece's product is rounded to X's precision and the pieces are summed in float32; where
    `_bands` splits the channels, the product is made a band of rows at a time (`_symmetric`)."""
    n, c, h, w = x.shape
    pieces = _pieces(x)
    if pieces > 1:  # channels-last: (N, H, W, C) in memory, so each piece of positions is a view
        f = x.permute(0, 2, 3, 1).reshape(n * pieces, h * w // pieces, c)
        return torch.bmm(f.transpose(1, 2), f).view(n, pieces, c, c).sum(1, dtype=torch.float32)
    f = _by_position(x)
    bands = _bands(x)
    return _symmetric(f, bands) if bands > 1 else torch.bmm(f, f.transpose(1, 2))


def _bands(x: torch.Tensor) -> int:
    """How many bands of channels the Gram of (N, C, H, W) X is multiplied in (`_symmetric`): on the CPU, for
    float32 features in (N, C, H, W) memory, whose products run at the CPU's arithmetic speed, 2 bands up to
    128 channels and 4 above (at least 32 channels a band), so that the product makes about 3/4 or 5/8 of
    the sums; else 1. The figures: docs/performance.md."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not x.is_contiguous() or x.shape[1] < 64:
        return 1
    return 2 if x.shape[1] <= 128 else 4


def _symmetric(f: torch.Tensor, bands: int) -> torch.Tensor:
    """F Fᵀ of (N, C, n) F: each band of rows multiplied with the rows from its own on (its diagonal block and
    those right of it), and the blocks right of the diagonal mirrored below it. The diagonal blocks are as the
    GEMM makes them: symmetric to its round-off, not always to the bit (MKL's AVX2 kernels sum (i, j) and
    (j, i) in different orders), as a Gram made in one product is."""
    n, c, _ = f.shape
    edges = [c * i // bands for i in range(bands + 1)]
    out = f.new_empty(n, c, c)
    for lo, hi in zip(edges, edges[1:]):
        rows = torch.bmm(f[:, lo:hi], f[:, lo:].transpose(1, 2))
        out[:, lo:hi, lo:] = rows
        out[:, hi:, lo:hi] = rows[:, :, hi - lo :].transpose(1, 2)
    return out


def _pieces(x: torch.Tensor) -> int:
    """How many pieces of its positions the Gram of (N, C, H, W) X is multiplied in, one per CPU thread, where
    that is faster: bfloat16 channels-last features of at most 256 channels on the CPU, whose one product over
    all positions oneDNN splits among the threads poorly, at least PIECE positions a piece (below that, the
    pieces' sum costs more than it saves; the figures: docs/performance.md). Else 1."""
    if x.device.type != "cpu" or x.dtype != torch.bfloat16 or not _channels_last(x) or x.shape[1] > 256:
        return 1
    positions = x.shape[-2] * x.shape[-1]
    pieces = max(1, min(torch.get_num_threads(), positions // PIECE))
    while positions % pieces:
        pieces -= 1
    return pieces


def add_gram_gradient(x: torch.Tensor, both: torch.Tensor, grad_x: torch.Tensor | None) -> torch.Tensor:
    """grad_x + both · F for (N, C, H, W) features X, F their (N, C, n) positions, and a symmetric (N, C, C)
    `both` of X's dtype: one batched matmul in X's memory layout, added into grad_x in place where nothing
    else holds it (autograd's own buffer), else into a new tensor (grad_x None: the product alone)."""
    f = _by_position(x)
    # channels-last features hold positions × channels in memory: there the product is Fᵀ both (both is
    # symmetric), so that the matmuls read and write each tensor in its own layout
    last = f.transpose(1, 2).is_contiguous()
    a, b = (f.transpose(1, 2), both) if last else (both, f)

    def product_view(t: torch.Tensor) -> torch.Tensor:  # a gradient in the product's (N, n, C) or (N, C, n)
        return _by_position(t).transpose(1, 2) if last else _by_position(t)

    layout = torch.channels_last if last else torch.contiguous_format
    if _alone(grad_x) and grad_x.is_contiguous(memory_format=layout):
        product_view(grad_x).baddbmm_(a, b)
        return grad_x
    out = torch.bmm(a, b) if grad_x is None else torch.baddbmm(product_view(grad_x), a, b)
    n, c, h, w = x.shape
    return out.view(n, h, w, c).permute(0, 3, 1, 2) if last else out.view(x.shape)


class _GramError(torch.autograd.Function):
    """(X, ‖F Fᵀ / n − A‖² per image) for (N, C, H, W) X, F its (N, C, n) positions, and a symmetric target
    Gram A ((N or 1, C, C), float32 at least): the Gram's error made at the tap, X passed through as in `_Gram`.

    The backward adds the error's gradient, 4 D F / n for D = G − A (symmetric, as G and A are), into the
    layer's own as `_Gram`'s does. The loss on the Gram made apart would take the difference, the square,
    the sum and their gradients, and symmetrise the Gram's gradient, each a pass of its own over C × C.
    The forward makes A − G from the product in one pass (float32, one rounding), and keeps it.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        minus = torch.add(target, _product(x), alpha=-1 / (x.shape[-2] * x.shape[-1]))  # A − G = −D
        ctx.save_for_backward(x, minus)
        ctx.set_materialize_grads(False)
        return x.view_as(x), torch.linalg.vector_norm(minus.flatten(1), dim=1).square()

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_x: torch.Tensor | None, grad: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, None]:
        x, minus = ctx.saved_tensors
        if grad is None:  # the error left out of the loss: the layer's own gradient goes on as it is
            return grad_x, None
        scale = (grad * (-4 / (x.shape[-2] * x.shape[-1]))).view(-1, 1, 1)
        both = torch.mul(minus, scale, out=minus.new_empty(minus.shape, dtype=x.dtype))  # in X's dtype: one pass
        return add_gram_gradient(x, both, grad_x), None


def _channels_last(x: torch.Tensor) -> bool:
    """Whether (N, C, H, W) x is dense channels-last, (N, H, W, C) in memory, and not also dense as (N, C, H, W)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _by_position(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) features as (N, C, H·W), a view in either memory layout (no copy of channels-last ones)."""
    n, c, h, w = features.shape
    if not _channels_last(features):
        return features.reshape(n, c, h * w)
    return features.permute(0, 2, 3, 1).reshape(n, h * w, c).transpose(1, 2)


def _gram_precision(features: torch.Tensor, exact: bool) -> torch.dtype:
    """The precision a Gram of `features` is multiplied in: bfloat16 as it is unless `exact`, else float32 at least."""
    reduced = features.dtype == torch.bfloat16 and not exact
    return features.dtype if reduced else torch.promote_types(features.dtype, torch.float32)


def tapped_gram(features: torch.Tensor, exact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(features passed through, `gram(features, exact)`): let the network go on from the first, and the Gram's
    gradient joins the layer's own inside the Gram's backward (see `_Gram`), where the product runs in the
    features' own precision; otherwise the features come back as they are, beside the Gram of their cast."""
    dtype = _gram_precision(features, exact)
    with torch.autocast(features.device.type, enabled=False):  # under autocast too: the product stays as asked
        return _Gram.apply(features) if dtype == features.dtype else (features, _Gram.apply(features.to(dtype))[1])


def tapped_gram_error(features: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features passed through, ‖gram(features) − target‖² per image, in float32 at least), for a symmetric
    `target` (a Gram; the gradient takes it as one): the Gram's error made at the tap (see `_GramError`), the
    Gram multiplied as `gram` does; for `gram_errors_loss`."""
    dtype = _gram_precision(features, exact=False)
    target = target.to(torch.promote_types(dtype, torch.float32))
    with torch.autocast(features.device.type, enabled=False):
        if dtype == features.dtype:
            return _GramError.apply(features, target)
        return features, _GramError.apply(features.to(dtype), target)[1]


def gram(features: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """Gram matrices of (N, C, H, W) features, shape (N, C, C), divided by H·W, in float32 (or float64).

    bfloat16 features are multiplied as they are (the products accumulate in float32; the result, or on the CPU
    each piece of it (see `_pieces`), carries bfloat16's rounding, 2⁻⁹ of each entry) unless `exact`; any other
    reduced precision is cast to float32 first.
    """
    return tapped_gram(features, exact)[1]


class _Error(torch.autograd.Function):
    """(X, ‖X − T‖² per image) for (N, C, H, W) X and a target T of X's dtype: X passed through, as in `_Gram`.

    The difference is taken in X's precision (exact for near values, as bfloat16 features are near their
    targets; else rounded as X is), its squares summed in float32 at least (`_squares`). The backward adds
    2(X − T)·e' into the layer's own gradient in one pass (`addcmul_`), in place where autograd holds it alone:
    autograd's own squared error would cast both tensors up, and take five more passes over them.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        d = x - target
        ctx.save_for_backward(d)
        ctx.set_materialize_grads(False)
        return x.view_as(x), _squares(d)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_x: torch.Tensor | None, grad: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, None]:
        if grad is None:
            return grad_x, None
        (d,) = ctx.saved_tensors
        scale = (2 * grad).to(d.dtype).view(-1, *(1,) * (d.dim() - 1))
        if _alone(grad_x) and grad_x.stride() == d.stride():
            return grad_x.addcmul_(d, scale), None
        return (d * scale if grad_x is None else torch.addcmul(grad_x, d, scale)), None


def _alone(grad: torch.Tensor | None) -> bool:
    """Whether autograd holds `grad` alone, so a backward may add into it (torch's InputBuffer steals on the same)."""
    return grad is not None and grad._use_count() == 1 and grad._base is None


def _by_row(x: torch.Tensor) -> torch.Tensor:
    """(N, …) as (N, rows, width), the rows those of x's memory, a view where it is dense in either layout (its
    order does not matter to sums): channels-last (N, C, H, W) as (N, H·W, C), any other as (N, …, last)."""
    if x.dim() == 4 and _channels_last(x):
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _squares(x: torch.Tensor) -> torch.Tensor:
    """‖x‖² per image, shape (N,), in float32 at least: the norm of each row of x's memory (`_by_row`) in x's
    precision, accumulated in float32 inside, their squares summed in float32. One norm of the whole would cast
    a reduced-precision x to float32 first, a copy, and run several times slower (docs/performance.md)."""
    norms = torch.linalg.vector_norm(_by_row(x), dim=2)
    return norms.to(torch.promote_types(x.dtype, torch.float32)).square().sum(1)


def tapped_error(features: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features passed through, ‖features − target‖² per image in float32 at least), `target` of the features'
    dtype: let the network go on from the first (see `_Error`). float16 features (whose range the gradient's
    scale can leave) come back as they are, beside the error of their cast (`squared_error`)."""
    if features.dtype == torch.float16:
        return features, squared_error(features, target)[0]
    with torch.autocast(features.device.type, enabled=False):
        return _Error.apply(features, target)


def squared_norm(x: torch.Tensor) -> torch.Tensor:
    """‖x‖² per batch element, shape (N,), in float32 at least (reduced precision -> float32; float64 stays)."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    return x.pow(2).sum(tuple(range(1, x.dim())))  # summed in place: flattening a channels-last tensor would copy it


def squared_error(x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(‖x − target‖², ‖target‖²) per batch element, each of shape (N,), in float32 at least."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, target = x.to(dtype), target.to(dtype)
    return squared_norm(x - target), squared_norm(target)


def relative_error(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖x − target‖² / ‖target‖², per batch element: shape (N,)."""
    error, norm = squared_error(x, target)
    return error / (norm + EPS)


def content_loss(features: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean over content layers of the relative feature error; shape (N,)."""
    return sum(relative_error(features[k], t) for k, t in targets.items()) / len(targets)


def layer_of(name: str) -> str:
    """The layer a statistic or target is of: `relu1_1.mean` is of relu1_1."""
    return name.split(".", 1)[0]


def statistic_names(layers: Sequence[str], kind: str) -> list[str]:
    """The statistics style loss `kind` (gram | wasserstein) compares at `layers`: Grams, and for wasserstein means."""
    if kind not in STYLE_LOSSES:
        raise ValueError(f"unknown style loss {kind!r}; use gram or wasserstein")
    return [*layers, *(k + MEAN for k in layers if kind == "wasserstein")]


def target_names(layers: Sequence[str], kind: str) -> list[str]:
    """The tensors of style loss `kind`'s targets at `layers` (see `style_targets_of`)."""
    return [*statistic_names(layers, kind), *(k + SQRT for k in layers if kind == "wasserstein")]


def feature_mean(features: torch.Tensor) -> torch.Tensor:
    """The mean over positions of (N, C, H, W) features, shape (N, C), in float32 (or float64)."""
    return features.to(torch.promote_types(features.dtype, torch.float32)).mean((2, 3))


def style_statistics(features: Mapping[str, torch.Tensor], layers: Sequence[str], kind: str) -> dict[str, torch.Tensor]:
    """The statistics (see `statistic_names`) of features at `layers`: (N, C, C) Grams, (N, C) means."""
    return {
        name: feature_mean(features[layer_of(name)])
        if name.endswith(MEAN)
        else gram(features[name], exact=kind == "wasserstein")  # W2's covariance M − μμᵀ cancels digits
        for name in statistic_names(layers, kind)
    }


def style_targets_of(statistics: Mapping[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """Style loss `kind`'s targets from (blended) style statistics: the statistics, and for wasserstein the
    square root of each layer's covariance Σ = M − μμᵀ (second raw moment M, mean μ) under `layer.sqrt`."""
    targets = dict(statistics)
    if kind == "wasserstein":
        for name, mean in statistics.items():
            if name.endswith(MEAN):
                layer = layer_of(name)
                targets[layer + SQRT] = sqrtm(_covariance(mean, statistics[layer])).to(mean.dtype)
    return targets


def style_loss(
    features: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    layer_weights: Mapping[str, float],
    kind: str = "gram",
    balance: str = "total",
) -> torch.Tensor:
    """Weighted sum over style layers of style loss `kind` (gram | wasserstein); shape (N,).

    `targets` are `style_targets_of`'s, for all images or one per image ((N, …) tensors); `balance`
    weighs the Gram loss's layers (see `gram_loss`).
    """
    layers = list(dict.fromkeys(layer_of(k) for k in targets))
    return statistics_loss(style_statistics(features, layers, kind), targets, layer_weights, kind, balance)


def statistics_loss(
    statistics: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    layer_weights: Mapping[str, float],
    kind: str,
    balance: str = "total",
) -> torch.Tensor:
    """`style_loss` of statistics already made (see `style_statistics`); shape (N,)."""
    if kind == "gram":
        return gram_loss(statistics, targets, layer_weights, balance)
    if kind == "wasserstein":
        return wasserstein_loss(statistics, targets, layer_weights)
    raise ValueError(f"unknown style loss {kind!r}; use gram or wasserstein")


def gram_loss(
    grams: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    layer_weights: Mapping[str, float],
    balance: str = "total",
) -> torch.Tensor:
    """The Gram error of Grams already made, (N, C, C) per layer, weighted by layer; shape (N,).

    balance `total`: the layers' squared errors of Grams divided by C, summed, relative to the targets'
    sum (neural-style's balance, see the module docstring); `layer`: the mean of each layer's relative error.
    """
    errors = {k: squared_error(grams[k], t.expand(grams[k].shape[0], *t.shape[-2:])) for k, t in targets.items()}
    return gram_errors_loss(errors, targets, layer_weights, balance)


def gram_errors_loss(
    errors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    targets: Mapping[str, torch.Tensor],
    layer_weights: Mapping[str, float],
    balance: str = "total",
) -> torch.Tensor:
    """`gram_loss` from each layer's (‖G − A‖², ‖A‖²), both (N,) and already made (`tapped_gram_error`,
    `squared_norm`), the target Grams A giving each layer's C; shape (N,)."""
    if balance not in STYLE_BALANCES:
        raise ValueError(f"unknown style balance {balance!r}; use total or layer")
    total = sum(layer_weights.values())
    if balance == "layer":
        return sum(layer_weights[k] / total * (e / (n + EPS)) for k, (e, n) in errors.items())
    scale = {k: layer_weights[k] / total / targets[k].shape[-1] ** 4 for k in errors}  # neural-style's MSE of G/C
    return sum(scale[k] * e for k, (e, _) in errors.items()) / (sum(scale[k] * n for k, (_, n) in errors.items()) + EPS)


def wasserstein_loss(
    statistics: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor], layer_weights: Mapping[str, float]
) -> torch.Tensor:
    """The relative `wasserstein` distance of statistics already made (means and Grams), weighted by layer; shape (N,)."""
    total = sum(layer_weights.values())
    layers = [layer_of(k) for k in targets if k.endswith(MEAN)]
    return sum(
        (layer_weights[k] / total)
        * wasserstein(statistics[k + MEAN], statistics[k], targets[k + MEAN], targets[k], targets[k + SQRT])
        for k in layers
    )


def wasserstein(
    mean: torch.Tensor, second: torch.Tensor, t_mean: torch.Tensor, t_second: torch.Tensor, t_sqrt: torch.Tensor
) -> torch.Tensor:
    """W₂² between the Gaussian fits N(μ, Σ) and N(μₛ, Σₛ), relative to the target's ‖μₛ‖² + tr Σₛ; shape (N,).

    ‖μ − μₛ‖² + tr Σ + tr Σₛ − 2 tr √(√Σₛ Σ √Σₛ), from the means (N, C), second raw moments M (N, C, C)
    (Σ = M − μμᵀ) and the target's mean, second moment and covariance square root √Σₛ (unbatched or
    (N, …)). Computed in float64: the cross term nearly cancels the traces.
    """
    n, c = mean.shape
    dtype = torch.promote_types(mean.dtype, torch.float32)  # of the result: float32, or float64 for float64 input
    with torch.autocast(mean.device.type, enabled=False):
        mean, second = mean.double(), second.double()
        t_mean = t_mean.double().expand(n, c)
        t_second, t_sqrt = (t.double().expand(n, c, c) for t in (t_second, t_sqrt))
        cov, t_cov = _covariance(mean, second), _covariance(t_mean, t_second)
        cross = t_sqrt @ cov @ t_sqrt
        distance = (
            (mean - t_mean).pow(2).sum(1)
            + _trace(cov)
            + _trace(t_cov)
            - 2 * _TraceSqrtm.apply((cross + cross.transpose(1, 2)) / 2)
        )
        return (distance / (_trace(t_second) + EPS)).to(dtype)


def _covariance(mean: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Σ = M − μμᵀ from a mean (…, C) and a second raw moment (…, C, C)."""
    return second - mean.unsqueeze(-1) * mean.unsqueeze(-2)


def _trace(matrices: torch.Tensor) -> torch.Tensor:
    return matrices.diagonal(dim1=-2, dim2=-1).sum(-1)


def sqrtm(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite (…, C, C) matrix, in float64
    (by eigendecomposition; negative eigenvalues, round-off, count as 0)."""
    values, vectors = torch.linalg.eigh(matrix.double())
    return (vectors * values.clamp(min=0).sqrt().unsqueeze(-2)) @ vectors.transpose(-2, -1)


class _TraceSqrtm(torch.autograd.Function):
    """tr √A of symmetric positive semi-definite (N, C, C) A: the sum of the square roots of its eigenvalues.

    The gradient is ½ A^-½ = V diag(½ λ^-½) Vᵀ, which needs only the eigenvalues (no 1/(λᵢ − λⱼ) terms, so
    repeated eigenvalues are fine); eigenvalues below _FLOOR of the largest (a singular A: fewer positions
    than channels) are held at that floor, so the gradient stays bounded.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, a: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        values, vectors = torch.linalg.eigh(a)
        ctx.save_for_backward(values, vectors)
        return values.clamp(min=0).sqrt().sum(-1)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        values, vectors = ctx.saved_tensors
        floor = values.amax(-1, keepdim=True).clamp(min=torch.finfo(values.dtype).tiny) * _FLOOR
        scale = grad.unsqueeze(-1) / (2 * values.clamp(min=floor).sqrt())
        return (vectors * scale.unsqueeze(-2)) @ vectors.transpose(-2, -1)


class _TotalVariation(torch.autograd.Function):
    """The mean squared difference of vertical and horizontal neighbours, per image, of (N, C, H, W) images.

    The backward writes the gradient, (2/nᵧ)(Dᵧ moved one row down − Dᵧ) + (2/nₓ)(Dₓ moved one column right −
    Dₓ) for the saved differences D and their counts n, into one image-sized tensor in four passes over D;
    autograd's own would make each slice's gradient a zero-filled tensor the image's size, and sum four.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, image: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        dy, dx = image[:, :, 1:] - image[:, :, :-1], image[..., 1:] - image[..., :-1]
        ctx.save_for_backward(dy, dx)
        return sum(_squares(d) / d[0].numel() for d in (dy, dx))

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        dy, dx = ctx.saved_tensors
        sy, sx = ((grad * (2 / d[0].numel())).to(d.dtype).view(-1, 1, 1, 1) for d in (dy, dx))
        out = dx.new_empty(*dx.shape[:3], dx.shape[3] + 1)
        torch.mul(dy, -sy, out=out[:, :, :-1])
        out[:, :, -1].zero_()
        out[:, :, 1:].addcmul_(dy, sy)
        out[..., 1:].addcmul_(dx, sx)
        out[..., :-1].addcmul_(dx, -sx)
        return out


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of vertical and horizontal neighbours; shape (N,)."""
    return _TotalVariation.apply(image)
