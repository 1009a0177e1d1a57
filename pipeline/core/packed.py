"""Frozen 3x3 convs whose weights oneDNN gets already packed, for the CPU.

torch's CPU convolution hands oneDNN plain weights, and oneDNN reorders them into its blocked layout on every
call, forward and backward alike: a cost that grows with the weights, not the image, so on VGG's deep layers at
the small maps of coarse levels it outweighs the convolution itself. `PackedConv3x3` packs its weights once per
input shape: W for the forward, and W flipped and transposed for the input gradient, so that the backward is a
forward conv too (grad_x = conv2d(grad_y, W.flip(2, 3).transpose(0, 1), padding=1)); weights are frozen and get
no gradient. Where no tap needs the conv's own output, the ReLU after it runs inside the same oneDNN call.
`use_packed` swaps the layers in. The figures: docs/performance.md.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.core.winograd import eligible

SHAPES_KEPT = 4  # packed weights are kept for this many input shapes per layer (a job's levels, a tile)
_ONE = [1, 1]  # padding, stride and dilation of a 3x3 same conv


def available(dtype: torch.dtype) -> bool:
    """Whether this torch and CPU run packed convs in `dtype`: float32 wherever torch has oneDNN, bfloat16 where
    the CPU has bf16 units (AVX-512 BF16 or AMX; oneDNN refuses bf16 on CPUs without AVX-512)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):
        return False
    caps = torch.cpu.get_capabilities()
    return dtype == torch.float32 or (dtype == torch.bfloat16 and bool(caps.get("avx512_bf16") or caps.get("amx_bf16")))


def _pack(weight: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """`weight` in the blocked layout oneDNN picks for inputs of `shape`."""
    return torch._C._nn.mkldnn_reorder_conv2d_weight(weight.to_mkldnn(), _ONE, _ONE, _ONE, 1, list(shape))


def _conv(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, relu: bool) -> torch.Tensor:
    return torch.ops.mkldnn._convolution_pointwise(
        x, packed, bias, _ONE, _ONE, _ONE, 1, "relu" if relu else "none", [], ""
    )


class _PackedFn(torch.autograd.Function):
    """The conv (and its ReLU); the backward gives the input gradient only."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, layer: PackedConv3x3) -> torch.Tensor:  # type: ignore[override]
        y = _conv(x, layer.packed(x.shape, transposed=False), layer.bias, layer.relu)
        ctx.layer = layer
        ctx.layout = layer.layout
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        layer = ctx.layer
        if layer.relu:
            grad = torch.ops.aten.threshold_backward(grad, y, 0)
        grad = grad.contiguous(memory_format=ctx.layout)
        return _conv(grad, layer.packed(grad.shape, transposed=True), None, False), None


class PackedConv3x3(nn.Module):
    """Drop-in replacement for a frozen 3x3/stride-1/pad-1 `nn.Conv2d`, with the ReLU after it when `relu`."""

    def __init__(self, conv: nn.Conv2d, relu: bool) -> None:
        super().__init__()
        if not eligible(conv):
            raise ValueError(f"PackedConv3x3 needs a 3x3 stride-1 pad-1 dense conv, got {conv}")
        self.relu = relu
        self.register_buffer("weight", conv.weight.detach().clone())
        bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias.to(conv.weight.dtype))
        self.packs: dict[tuple[bool, tuple[int, ...]], torch.Tensor] = {}

    @property
    def layout(self) -> torch.memory_format:
        """The memory format inputs and gradients take: channels-last for reduced precision, as VGGFeatures."""
        return torch.contiguous_format if self.weight.dtype == torch.float32 else torch.channels_last

    def packed(self, shape: torch.Size, transposed: bool) -> torch.Tensor:
        """The weights packed for inputs of `shape` (of the input gradient's conv when `transposed`)."""
        key = (transposed, tuple(shape))
        if key not in self.packs:
            if len(self.packs) >= 2 * SHAPES_KEPT:
                del self.packs[next(iter(self.packs))]
            weight = self.weight.flip(2, 3).transpose(0, 1) if transposed else self.weight
            self.packs[key] = _pack(weight.contiguous(memory_format=self.layout), shape)
        return self.packs[key]

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202  a move or cast makes the packs stale
        self.packs.clear()
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _PackedFn.apply(x.contiguous(memory_format=self.layout), self)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, relu={self.relu}"


def use_packed(features: nn.Sequential, taps: set[int]) -> nn.Sequential:
    """Replace, in place, each eligible `nn.Conv2d` of `features` by `PackedConv3x3`, with the `nn.ReLU` after it
    fused (that slot becomes `nn.Identity`) unless `taps` holds the conv's index. Returns `features`."""
    for i, module in enumerate(features):
        if isinstance(module, nn.Conv2d) and eligible(module):
            relu = i not in taps and i + 1 < len(features) and isinstance(features[i + 1], nn.ReLU)
            features[i] = PackedConv3x3(module, relu)
            if relu:
                features[i + 1] = nn.Identity()
    return features
