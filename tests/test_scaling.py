"""Loss scaling for float16 layers: an overflow halves the scale and repeats the pass, a run of finite passes
doubles it, and at 512 px the float16 gradient follows the float32 one where the unscaled one loses it."""

import pytest
import torch

from pipeline.core.optimize import Objective, Settings, style_targets
from pipeline.core.scaling import START, LossScale, loss_scale_for
from pipeline.core.vgg import VGGFeatures
from pipeline.media.images import read_image


def test_an_overflow_halves_the_scale_until_the_gradient_is_finite():
    x = torch.ones(4, requires_grad=True)
    calls = []

    def loss() -> torch.Tensor:
        calls.append(1)
        return (x.half() * 1000).float().sum()  # the gradient passes float16 as scale × 1000

    scale = LossScale()
    scale.backward(loss, x)
    assert torch.equal(x.grad, torch.full((4,), 1000.0))
    assert scale.scale == 64  # the largest power of two with scale × 1000 under float16's 65504
    assert len(calls) == 11  # 2¹⁶ halved ten times, each a fresh pass


def test_finite_passes_double_the_scale_and_a_plain_scale_never_scales():
    x = torch.ones(3, requires_grad=True)
    scale = LossScale(growth_interval=3)
    for _ in range(3):
        scale.backward(lambda: (x * 2).sum(), x)
    assert scale.scale == 2 * START
    assert torch.equal(x.grad, torch.full((3,), 2.0))
    plain = LossScale(dynamic=False)
    plain.backward(lambda: (x.half() * 1e5).float().sum(), x)  # 1e5 overflows float16: not caught, not retried
    assert plain.scale == 1.0 and torch.isinf(x.grad).all()


def test_only_float16_layers_get_a_dynamic_scale(bundled):
    assert loss_scale_for(VGGFeatures(bundled, ("relu1_1",), dtype=torch.float16)).dynamic
    assert not loss_scale_for(VGGFeatures(bundled, ("relu1_1",), dtype=torch.bfloat16)).dynamic
    assert not loss_scale_for(VGGFeatures(bundled, ("relu1_1",))).dynamic


def _gradient(model: VGGFeatures, content: torch.Tensor, style: torch.Tensor, start: torch.Tensor, scaled: bool):
    settings = Settings(size=512, scales=1)
    h, w = content.shape[-2:]
    targets = style_targets(model, [(style, 1.0)], h * w, list(settings.style_layers))
    objective = Objective(model, settings, content, targets)
    if not scaled:
        objective.loss_scale = LossScale(dynamic=False)
    image = start.clone().requires_grad_(True)
    objective.backward(image)
    return image.grad.flatten()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0).item()


@pytest.mark.slow
def test_float16_layers_at_512_px_keep_the_float32_gradient(shared, bundled):
    """At 512 px the relative losses' feature gradients sit below float16's normal range: unscaled, the
    float16 gradient loses much of the float32 one; through the loss scale it follows it."""
    content = read_image(shared / "content" / "chelsea.png", 512)
    style = read_image(shared / "style" / "starry_night.jpg")
    start = (content + 0.1 * torch.randn(content.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    layers = Settings().layers
    exact = _gradient(VGGFeatures(bundled, layers), content, style, start, scaled=True)
    half = VGGFeatures(bundled, layers, dtype=torch.float16)
    scaled = _gradient(half, content, style, start, scaled=True)
    unscaled = _gradient(half, content, style, start, scaled=False)
    assert _cosine(scaled, exact) > 0.99
    assert scaled.norm() == pytest.approx(exact.norm().item(), rel=0.02)
    assert _cosine(unscaled, exact) < 0.9  # 0.2 here: most of the gradient underflows
