"""Losses for Gatys-style transfer: Gram matrix, content, style, total variation.

Normalisation (the same weights mean the same thing at every image size and
for every weight source):

* ``gram(F) = F Fᵀ / (H·W)``: the mean outer product per position, so it does
  not grow with the image (this is Gatys et al.'s 1/(4N²M²) up to a constant).
* content and style terms are *relative* squared errors, ``‖X − T‖² / ‖T‖²``
  per layer, so layers with large activations do not drown the others and
  Caffe (0-255) and torchvision (mean/std) weights need the same weights.
* total variation is the mean squared difference of neighbouring pixels of
  the RGB [0, 1] image.

All functions take and return tensors and work on any device. Features may be
reduced precision; Grams and losses are computed in float32.
"""

from __future__ import annotations

from typing import Mapping

import torch

_EPS = 1e-8


class _Gram(torch.autograd.Function):
    """F Fᵀ / n for (N, C, n) F; the backward is one batched matmul, (G' + G'ᵀ) F / n, not autograd's two."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, f: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(f)
        return torch.bmm(f, f.transpose(1, 2)).div_(f.shape[-1])

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (f,) = ctx.saved_tensors
        return torch.bmm(grad + grad.transpose(1, 2), f).div_(f.shape[-1])


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrices of (N, C, H, W) features, shape (N, C, C), divided by H·W."""
    n, c, h, w = features.shape
    f = features.to(torch.promote_types(features.dtype, torch.float32))  # reduced precision -> float32
    with torch.autocast(f.device.type, enabled=False):  # under autocast too: the product stays float32
        return _Gram.apply(f.reshape(n, c, h * w))


def relative_error(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖x − target‖² / ‖target‖², per batch element: shape (N,)."""
    dtype = torch.promote_types(x.dtype, torch.float32)  # reduced precision -> float32; float64 stays
    x = x.to(dtype).flatten(1)
    target = target.to(dtype).flatten(1)
    return (x - target).pow(2).sum(1) / (target.pow(2).sum(1) + _EPS)


def content_loss(features: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean over content layers of the relative feature error; shape (N,)."""
    return sum(relative_error(features[k], t) for k, t in targets.items()) / len(targets)


def style_loss(
    features: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    layer_weights: Mapping[str, float],
) -> torch.Tensor:
    """Weighted sum over style layers of the relative Gram error; shape (N,).

    `targets` maps a layer to a (C, C) or (N, C, C) Gram target.
    """
    return gram_loss({k: gram(features[k]) for k in targets}, targets, layer_weights)


def gram_loss(
    grams: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    layer_weights: Mapping[str, float],
) -> torch.Tensor:
    """`style_loss` of Grams already made, (N, C, C) per layer; shape (N,)."""
    total = sum(layer_weights.values())
    return sum(
        (layer_weights[k] / total) * relative_error(grams[k], t.expand(grams[k].shape[0], *t.shape[-2:]))
        for k, t in targets.items()
    )


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of vertical and horizontal neighbours; shape (N,)."""
    dy = (image[:, :, 1:, :] - image[:, :, :-1, :]).pow(2).flatten(1).mean(1)
    dx = (image[:, :, :, 1:] - image[:, :, :, :-1]).pow(2).flatten(1).mean(1)
    return dy + dx
