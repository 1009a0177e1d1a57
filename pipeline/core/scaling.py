"""Dynamic loss scaling, for VGG layers in float16.

The relative losses shrink per element as 1/(H·W), so their gradients with
respect to the features fall below float16's smallest normal number (6e-5)
at a few hundred pixels, and lose their digits or vanish on the way back
through float16 layers. Multiplying the loss by a scale before the backward
pass, and the gradient by its inverse after, keeps them in range; a
non-finite gradient (an overflow) halves the scale and repeats the pass,
and a run of finite ones doubles it again, as `torch.amp.GradScaler` does
for parameters. bfloat16 has float32's range and needs none of this.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

START = 2.0**16  # GradScaler's initial scale
GROWTH_INTERVAL = 100  # finite passes in a row before the scale doubles


class LossScale:
    """The scale of one optimisation's backward passes, kept across its iterations; `dynamic=False` (any
    layers but float16) differentiates the loss as it is, with no check and no device read."""

    def __init__(self, dynamic: bool = True, scale: float = START, growth_interval: int = GROWTH_INTERVAL) -> None:
        self.dynamic = dynamic
        self.scale = scale if dynamic else 1.0
        self.growth_interval = growth_interval
        self._finite = 0

    def backward(self, loss: Callable[[], torch.Tensor], leaf: torch.Tensor) -> None:
        """`loss()` differentiated into `leaf.grad`. Dynamic: through the scale; on overflow the scale halves
        and `loss()` is evaluated again (each check reads one value back from the device)."""
        if not self.dynamic:
            loss().backward()
            return
        while True:
            leaf.grad = None
            (loss() * self.scale).backward()
            if bool(torch.isfinite(leaf.grad).all()):
                break
            if self.scale <= 1.0:
                raise FloatingPointError("the gradient is not finite even with the loss unscaled")
            self.scale /= 2
            self._finite = 0
        leaf.grad.div_(self.scale)
        self._finite += 1
        if self._finite >= self.growth_interval:
            self.scale *= 2
            self._finite = 0


def loss_scale_for(model: torch.nn.Module) -> LossScale:
    """A dynamic LossScale for a model whose layers run in float16 (its `dtype`), a plain one for any other."""
    return LossScale(dynamic=getattr(model, "dtype", None) == torch.float16)
