"""Packed oneDNN convs (pipeline.core.packed): the same features and input gradients as torch's own convs."""

import pytest
import torch

from pipeline.core import packed
from pipeline.core.packed import SHAPES_KEPT, PackedConv3x3
from pipeline.core.vgg import VGGFeatures
from pipeline.media.images import read_image

LAYERS = ["relu1_1", "conv2_1", "relu3_1", "relu4_2", "relu5_1"]  # conv2_1: a tapped conv keeps its ReLU apart


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_packed_model_matches_torchs_convs_on_a_real_image(shared, bundled, dtype):
    if not packed.available(dtype):
        pytest.skip(f"this CPU runs no packed {dtype} convs")
    plain, fast = VGGFeatures(bundled, LAYERS, dtype=dtype), VGGFeatures(bundled, LAYERS, dtype=dtype, packed=True)
    assert sum(isinstance(m, PackedConv3x3) for m in fast.body) == 13  # every conv up to conv5_1
    assert sum(isinstance(m, PackedConv3x3) and m.relu for m in fast.body) == 12  # all but conv2_1 fuse their ReLU
    image = read_image(shared / "content" / "chelsea.png", 80).expand(2, -1, -1, -1)  # a batch of two
    a, b = image.clone().requires_grad_(True), image.clone().requires_grad_(True)
    fa, fb = plain(a), fast(b)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: its own rounding, 2⁻⁸ of each value
    for name in LAYERS:
        assert fb[name].shape == fa[name].shape and fb[name].dtype == dtype, name
        assert _relative(fb[name], fa[name]) < tolerance, name
    assert fb["conv2_1"].min() < 0 <= fb["relu3_1"].min()  # the tapped conv's output is before its ReLU
    sum(v.float().pow(2).mean() for v in fa.values()).backward()
    sum(v.float().pow(2).mean() for v in fb.values()).backward()
    assert b.grad.abs().sum() > 0
    assert _relative(b.grad, a.grad) < (5e-3 if dtype == torch.float32 else 3e-2)  # max-pool ties flip either way


def test_packs_follow_the_shapes_and_a_cast(bundled):
    model = VGGFeatures(bundled, ["relu2_1"], packed=True)
    layer = model.body[0]
    for side in range(32, 32 + 4 * (SHAPES_KEPT + 2), 4):  # more shapes than are kept
        model(torch.rand(1, 3, side, side))
    assert len(layer.packs) <= 2 * SHAPES_KEPT
    x = torch.rand(1, 3, 40, 40)
    reference = VGGFeatures(bundled, ["relu2_1"])(x)["relu2_1"]
    model.double()  # a cast drops the packs made for float32: they are made again in float64
    assert not layer.packs
    model.float()
    assert _relative(model(x)["relu2_1"], reference) < 1e-5


def test_bf16_packs_only_where_the_cpu_has_bf16_units(monkeypatch):
    real = torch.cpu.get_capabilities()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {**real, "avx512_bf16": False, "amx_bf16": False})
    assert not packed.available(torch.bfloat16)
    assert packed.available(torch.float32) == torch.backends.mkldnn.is_available()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {**real, "avx512_bf16": True, "amx_bf16": False})
    assert packed.available(torch.bfloat16) == torch.backends.mkldnn.is_available()
