"""Winograd F(4 x 4, 3 x 3) convolution for frozen 3x3 stride-1 pad-1 convs.

`WinogradConv3x3` replaces a frozen `nn.Conv2d`; its backward returns the
input gradient only, itself a Winograd conv with the flipped, transposed
kernel (grad_x = conv2d(grad_y, W.flip(2, 3).transpose(0, 1), padding=1)).
Kernels are transformed once, at construction. `use_winograd` swaps in the
layers for which it wins. fp32 error vs F.conv2d: <= 1e-5 relative (max abs
err / max abs value) on VGG-scale inputs.

Winograd only pays once the GEMMs dominate, as its transforms are memory-bound:
the rule is in_channels >= 128 (MIN_IN_CHANNELS) and, at run time, H*W >= 256
(MIN_PIXELS; smaller maps fall back to F.conv2d). F(4x4) is never slower than
F(2x2); the per-layer figures behind the rule: docs/performance.md, Winograd.

On CPU each thread keeps two scratch buffers (see `_Workspace`), sized to
the largest layer it has run and held for reuse.
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F
from torch import nn

MIN_IN_CHANNELS = 128  # thinner convs: transforms are memory-bound and cost more than they save
MIN_PIXELS = 256  # smaller maps (e.g. conv5_1 at 4x4): too few tiles, direct conv is faster

# Lavin & Gray (2016) transforms for F(4x4, 3x3): Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A.
_BT = [
    [4, 0, -5, 0, 1, 0],
    [0, -4, -4, 1, 1, 0],
    [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, 2, -1, -2, 1, 0],
    [0, 4, 0, -5, 0, 1],
]
_G = [
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
]
_AT = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]


def _transform_weight(weight: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) kernel -> (a*a, K, C) Winograd-domain kernel G w Gᵀ.

    One GEMM with the Kronecker product G ⊗ G (a*a x 9): an einsum over the
    kernel axes makes tiny per-kernel products and takes seconds for VGG.
    """
    k, c = weight.shape[:2]
    u = torch.mm(torch.kron(g, g).to(weight.dtype), weight.reshape(k * c, 9).t())
    return u.view(-1, k, c)


class _Workspace(threading.local):
    """Two reusable CPU scratch buffers used ping-pong by `winograd_conv`.

    Fresh multi-megabyte CPU allocations are page-faulted in on every call,
    which costs as much as the transforms themselves; on other devices the
    caching allocator already avoids that, so plain `torch.empty` is used.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[int, torch.dtype, bool], torch.Tensor] = {}

    def get(self, slot: int, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        if like.device.type != "cpu":
            return torch.empty(shape, dtype=like.dtype, device=like.device)
        n = math.prod(shape)
        key = (slot, like.dtype, torch.is_inference_mode_enabled())  # inference tensors refuse updates outside it
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < n:
            buf = self.buffers[key] = torch.empty(n, dtype=like.dtype)
        return buf[:n].view(shape)


_WS = _Workspace()


def winograd_conv(
    x: torch.Tensor, u: torch.Tensor, bt: torch.Tensor, at: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """3x3 stride-1 pad-1 conv of x (N, C, H, W) with Winograd-domain kernel u (a*a, K, C)."""
    n, c, h, w = x.shape
    m, a = at.shape
    k = u.shape[1]
    th, tw = -(-h // m), -(-w // m)
    hp, wp = m * th + 2, m * tw + 2
    p = n * th * tw
    xp = _WS.get(0, (n, c, hp, wp), x)
    xp[:, :, 1 : h + 1, 1 : w + 1] = x
    for border in (xp[:, :, 0], xp[:, :, h + 1 :], xp[:, :, 1 : h + 1, 0], xp[:, :, 1 : h + 1, w + 1 :]):
        border.zero_()
    # Rows: overlapping windows along H laid out (a, C, N, tH, Wp), then Bᵀ on the window axis.
    rows = _WS.get(1, (a, c, n, th, wp), x)
    rows.copy_(xp.as_strided((a, c, n, th, wp), (wp, hp * wp, c * hp * wp, m * wp, 1)))
    r = torch.mm(bt, rows.view(a, -1), out=_WS.get(0, (a, c * n * th * wp), x))
    # Columns: overlapping windows along W laid out (a, a, C, P), then Bᵀ again -> V (a*a, C, P).
    cols = _WS.get(1, (a, a, c, n, th, tw), x)
    cols.copy_(r.as_strided(cols.shape, (c * n * th * wp, 1, n * th * wp, th * wp, wp, m)))
    v = torch.matmul(bt, cols.view(a, a, -1), out=_WS.get(0, (a, a, c * p), x))
    mm = torch.bmm(u, v.view(a * a, c, p), out=_WS.get(1, (a * a, k, p), x))
    # Output transform Aᵀ M A, one axis at a time, then scatter the m x m tiles (+ bias).
    z = torch.matmul(at, mm.view(a, a, -1), out=_WS.get(0, (a, m, k * p), x))
    z = torch.mm(at, z.view(a, -1), out=_WS.get(1, (m, m * k * p), x))
    y = z.view(m, m, k, n, th, tw).permute(3, 2, 4, 0, 5, 1)  # (N, K, tH, m, tW, m)
    exact = (th * m, tw * m) == (h, w)
    if exact:
        full = torch.empty((n, k, h, w), dtype=x.dtype, device=x.device)
    else:
        full = _WS.get(0, (n, k, th * m, tw * m), x)
    tiles = full.view(n, k, th, m, tw, m)
    if bias is None:
        tiles.copy_(y)
    else:
        torch.add(y, bias.view(1, k, 1, 1, 1, 1), out=tiles)
    return full if exact else full[:, :, :h, :w].clone(memory_format=torch.contiguous_format)


def eligible(conv: nn.Conv2d) -> bool:
    """Whether `conv` is a dense 3x3 stride-1 pad-1 undilated convolution."""
    return (
        conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


class _WinogradFn(torch.autograd.Function):
    """Winograd conv whose backward gives the input gradient only (weights are frozen)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        u: torch.Tensor,
        u_t: torch.Tensor,
        bt: torch.Tensor,
        at: torch.Tensor,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(u_t, bt, at)
        return winograd_conv(x, u, bt, at, bias)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        u_t, bt, at = ctx.saved_tensors
        return winograd_conv(grad_out, u_t, bt, at, None), None, None, None, None, None


class WinogradConv3x3(nn.Module):
    """Drop-in replacement for a frozen 3x3/stride-1/pad-1 `nn.Conv2d`, computed with Winograd F(4x4, 3x3)."""

    def __init__(self, conv: nn.Conv2d, min_pixels: int = MIN_PIXELS) -> None:
        super().__init__()
        if not eligible(conv):
            raise ValueError(f"WinogradConv3x3 needs a 3x3 stride-1 pad-1 dense conv, got {conv}")
        bt, g, at = (torch.tensor(t, dtype=torch.float64) for t in (_BT, _G, _AT))
        weight = conv.weight.detach()
        self.min_pixels = min_pixels
        self.register_buffer("weight", weight.clone())
        self.register_buffer("u", _transform_weight(weight, g))
        self.register_buffer("u_t", _transform_weight(weight.flip(2, 3).transpose(0, 1), g))
        self.register_buffer("bt", bt.to(weight.dtype))
        self.register_buffer("at", at.to(weight.dtype))
        bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(weight.shape[0])
        self.register_buffer("bias", bias.to(weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] * x.shape[-1] < self.min_pixels:  # too few tiles: direct conv is faster
            return F.conv2d(x, self.weight, self.bias, padding=1)
        return _WinogradFn.apply(x, self.u, self.u_t, self.bt, self.at, self.bias)

    def extra_repr(self) -> str:
        k, c = self.u.shape[1:]
        return f"{c}, {k}, min_pixels={self.min_pixels}"


def use_winograd(
    features: nn.Sequential, min_in_channels: int = MIN_IN_CHANNELS, min_pixels: int = MIN_PIXELS
) -> nn.Sequential:
    """Replace, in place, each eligible 3x3 conv with at least `min_in_channels` inputs by `WinogradConv3x3`.

    Returns `features` for chaining; other layers (and thinner convs) are kept as they are.
    """
    for i, module in enumerate(features):
        if isinstance(module, nn.Conv2d) and module.in_channels >= min_in_channels and eligible(module):
            features[i] = WinogradConv3x3(module, min_pixels)
    return features
