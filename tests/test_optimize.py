"""The one-image optimiser on real inputs at tiny sizes."""

import dataclasses
import math

import pytest
import torch
from conftest import gpu

from pipeline.core.losses import content_loss, style_loss, tv_loss
from pipeline.core.optimize import (
    Objective,
    Settings,
    converged,
    iterations_per_scale,
    luminance,
    scale_shapes,
    stack_targets,
    style_area,
    style_area_shape,
    style_targets,
    stylize,
)
from pipeline.core.packed import available as packed_available
from pipeline.core.vgg import VGGFeatures
from pipeline.media.images import read_image

TINY = Settings(size=64, scales=1, iterations=15)


def _inputs(shared, size=64):
    content = read_image(shared / "content" / "chelsea.png", size)
    style = read_image(shared / "style" / "starry_night.jpg")
    return content, style


def _targets(model, content, style, settings, styles=None):
    shapes = scale_shapes(*content.shape[-2:], settings.size, settings.scales)
    blend = styles or [(style, 1.0)]
    return [
        style_targets(model, blend, h * w, list(settings.style_layers), settings.preserve_colors) for h, w in shapes
    ]


def test_scale_shapes_coarse_to_fine():
    assert scale_shapes(300, 451, 256, 3) == [(43, 64), (85, 128), (170, 256)]
    assert scale_shapes(512, 512, 96, 3) == [(96, 96)]  # 48 and 24 px would be below MIN_SIDE
    assert scale_shapes(512, 512, 128, 3) == [(64, 64), (128, 128)]


def test_style_scale_sets_the_style_images_side_relative_to_the_levels():
    style = torch.zeros(1, 3, 300, 400)  # 3:4, like a level of (96, 128)
    assert style_area((96, 128)) == 96 * 128
    assert style_area_shape(style, style_area((96, 128))) == (96, 128)  # 1: the level's own area
    assert style_area_shape(style, style_area((96, 128), 2.0)) == (192, 256)  # twice the side
    assert style_area_shape(style, style_area((96, 128), 0.5)) == (48, 64)
    assert style_area_shape(torch.zeros(1, 3, 100, 100), style_area((96, 128), 1.5)) == (166, 166)  # aspect kept


def test_converged_compares_the_loss_with_the_one_a_window_before():
    losses = [10.0, 9.0, 8.0, 7.9, 7.85]
    assert not converged(losses, 0.0, 2)  # off
    assert not converged(losses[:2], 0.5, 2)  # not a window yet
    assert converged(losses, 0.02, 2)  # 8.0 -> 7.85: under 2 %
    assert not converged(losses, 0.01, 2)
    assert not converged(losses, 0.02, 3)  # 9.0 -> 7.85: 13 %


def test_coarse_levels_get_more_iterations():
    s = Settings(iterations=100, coarse_iterations=2.0)
    assert iterations_per_scale(s, 3) == [400, 200, 100]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_the_objective_is_the_losses_plain_formulas(shared, bundled, model, dtype):
    """The objective makes its losses at the taps, its gradients summed inside their nodes (`tapped_gram`,
    `tapped_error`): the same parts and gradient as autograd through `content_loss`, `style_loss` and `tv_loss`
    on the features, in float64, and in bfloat16 (packed convs where the CPU runs them) up to its round-off."""
    layers = VGGFeatures(bundled, model.layers, dtype=dtype, packed=packed_available(dtype))
    content, style = _inputs(shared)
    image = read_image(shared / "content" / "coffee.png", 64)[..., : content.shape[-2], : content.shape[-1]]
    image = torch.nn.functional.interpolate(image, size=content.shape[-2:]).to(
        torch.promote_types(dtype, torch.float32)
    )
    objective = Objective(layers, TINY, content.to(image.dtype), _targets(layers, content, style, TINY)[0])
    fused = image.clone().requires_grad_()
    parts = objective.backward(fused)
    plain = image.clone().requires_grad_()
    feats = layers(plain)
    expected = [
        content_loss(feats, objective.content_targets),
        style_loss(feats, objective.style_targets, TINY.style_layers),
        tv_loss(plain),
    ]
    (sum(w * p for w, p in zip((TINY.content_weight, TINY.style_weight, TINY.tv_weight), expected)).sum()).backward()
    close = {"rtol": 1e-9} if dtype == torch.float64 else {"rtol": 0.01}
    assert all(torch.allclose(parts[i + 1].double(), e.detach().double(), **close) for i, e in enumerate(expected))
    error = float((fused.grad - plain.grad).norm() / plain.grad.norm())
    assert error < (1e-9 if dtype == torch.float64 else 0.02)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_loss_falls(shared, model, optimizer):
    content, style = _inputs(shared)
    settings = dataclasses.replace(TINY, optimizer=optimizer, iterations=20)
    result = stylize(model, content, _targets(model, content, style, settings), settings)
    first, last = result.trace[0], result.trace[-1]
    assert len(result.trace) == 20
    assert last.loss < 0.8 * first.loss
    assert last.style < first.style  # content init: the style term is what falls
    assert result.image.shape == content.shape
    assert 0.0 <= result.image.min() and result.image.max() <= 1.0


@pytest.mark.slow
def test_coarse_to_fine_output_shape_and_trace(shared, model):
    content, style = _inputs(shared, 128)
    settings = Settings(size=128, scales=2, iterations=5, coarse_iterations=2.0)
    seen = []
    result = stylize(model, content, _targets(model, content, style, settings), settings, callback=seen.append)
    assert result.image.shape == content.shape == (1, 3, 85, 128)
    assert [p.shape for p in (seen[0], seen[-1])] == [(42, 64), (85, 128)]
    assert len(seen) == len(result.trace) == 10 + 5
    assert seen[-1].iteration == seen[-1].iterations == 5


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_noise_init_is_deterministic_for_a_seed(shared, bundled, dtype):
    """On the CPU, in float32 and in bf16 (the default where the CPU has bf16 units)."""
    model = VGGFeatures(bundled, Settings().layers, dtype=dtype)
    content, style = _inputs(shared)
    settings = dataclasses.replace(TINY, init="noise", iterations=5, seed=3)
    targets = _targets(model, content, style, settings)
    a = stylize(model, content, targets, settings).image
    b = stylize(model, content, targets, settings).image
    c = stylize(model, content, targets, dataclasses.replace(settings, seed=4)).image
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.slow
def test_preserve_colors_keeps_content_chroma(shared, model):
    content, style = _inputs(shared)
    settings = dataclasses.replace(TINY, preserve_colors=True, iterations=10)
    out = stylize(model, content, _targets(model, content, style, settings), settings).image
    yiq = torch.tensor([[0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    chroma = lambda x: torch.einsum("ij,njhw->nihw", yiq, x)  # noqa: E731
    inside = ((out > 0.01) & (out < 0.99)).all(1, keepdim=True).expand(1, 2, *out.shape[-2:])  # unclipped pixels
    assert torch.allclose(chroma(out)[inside], chroma(content)[inside], atol=2e-3)
    assert (luminance(out) - luminance(content)).abs().mean() > 0.01  # the luminance was stylised


def test_style_blend_is_weighted_gram_average(shared, model):
    _, starry = _inputs(shared)
    wave = read_image(shared / "style" / "wave.jpg")
    layers = ["relu1_1", "relu3_1"]
    only_starry = style_targets(model, [(starry, 1.0)], 64 * 64, layers)
    only_wave = style_targets(model, [(wave, 1.0)], 64 * 64, layers)
    zero_wave = style_targets(model, [(starry, 2.0), (wave, 0.0)], 64 * 64, layers)
    mix = style_targets(model, [(starry, 3.0), (wave, 1.0)], 64 * 64, layers)
    for layer in layers:
        assert torch.allclose(zero_wave[layer], only_starry[layer])
        assert torch.allclose(mix[layer], 0.75 * only_starry[layer] + 0.25 * only_wave[layer], rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_a_loose_tolerance_ends_each_level_early_and_0_runs_them_all(shared, model, optimizer):
    content, style = _inputs(shared, 128)
    settings = Settings(
        size=128,
        scales=2,
        iterations=25,
        optimizer=optimizer,
        learning_rate=0.05,
        style_layers={"relu1_1": 1.0, "relu3_1": 1.0},
    )
    targets = _targets(model, content, style, settings)
    early = stylize(model, content, targets, dataclasses.replace(settings, tolerance=0.3, tolerance_window=3))
    per_level = [sum(p.scale == n for p in early.trace) for n in (1, 2)]
    assert all(4 <= n < 25 for n in per_level), per_level  # each level stopped, after its first window
    first = [p.loss for p in early.trace if p.scale == 1]
    assert first[-1] < first[0]
    assert len(stylize(model, content, targets, dataclasses.replace(settings, iterations=4)).trace) == 8


def test_wasserstein_blend_averages_the_moments(shared, model):
    """A blend's means and second raw moments are the weighted averages; its covariance root follows from them."""
    _, starry = _inputs(shared)
    wave = read_image(shared / "style" / "wave.jpg")
    layers = ["relu1_1", "relu3_1"]
    a, b = (style_targets(model, [(s, 1.0)], 48 * 48, layers, loss="wasserstein") for s in (starry, wave))
    mix = style_targets(model, [(starry, 3.0), (wave, 1.0)], 48 * 48, layers, loss="wasserstein")
    for layer in layers:
        for name in (layer, f"{layer}.mean"):
            assert torch.allclose(mix[name], 0.75 * a[name] + 0.25 * b[name], rtol=1e-4, atol=1e-5)
        mean = mix[f"{layer}.mean"].double()
        cov = mix[layer].double() - torch.outer(mean, mean)
        root = mix[f"{layer}.sqrt"].double()
        assert float((root @ root - cov).norm() / cov.norm()) < 1e-4
        assert not torch.allclose(
            mix[f"{layer}.sqrt"], 0.75 * a[f"{layer}.sqrt"] + 0.25 * b[f"{layer}.sqrt"], rtol=1e-2
        )


@pytest.mark.slow
def test_wasserstein_style_loss_falls(shared, model):
    content, style = _inputs(shared)
    settings = dataclasses.replace(TINY, style_loss="wasserstein", iterations=10)
    shapes = scale_shapes(*content.shape[-2:], settings.size, settings.scales)
    targets = [
        style_targets(model, [(style, 1.0)], h * w, list(settings.style_layers), loss="wasserstein") for h, w in shapes
    ]
    result = stylize(model, content, targets, settings)
    assert len(result.trace) == 10 and torch.isfinite(result.image).all()
    assert result.final.style < 0.7 * result.trace[0].style
    assert result.final.loss < result.trace[0].loss


def test_a_batch_scores_each_image_against_its_own_wasserstein_targets(shared, model):
    """stack_targets on Gaussian fits: (N, C) means and (N, C, C) moments and roots, one per image."""
    content, starry = _inputs(shared)
    wave = read_image(shared / "style" / "wave.jpg")
    settings = dataclasses.replace(TINY, style_loss="wasserstein", style_layers={"relu1_1": 1.0, "relu3_1": 1.0})
    h, w = content.shape[-2:]
    per_image = [
        [style_targets(model, [(s, 1.0)], h * w, list(settings.style_layers), loss="wasserstein")]
        for s in (starry, wave)
    ]
    batch = torch.cat([content, content.flip(-1)])
    with torch.no_grad():
        together = Objective(model, settings, batch, stack_targets(per_image)[0])(batch)[1]
        for i, targets in enumerate(per_image):
            alone = Objective(model, settings, batch[i : i + 1], targets[0])(batch[i : i + 1])[1]
            assert torch.allclose(together[:, i], alone[:, 0], rtol=1e-4)
    assert float(together[2, 0]) != pytest.approx(float(together[2, 1]), rel=1e-2)  # two styles, two style losses


@pytest.mark.slow
@pytest.mark.parametrize("preserve_colors", [False, True])
def test_temporal_term_pulls_towards_the_held_frame_where_the_mask_holds(shared, model, preserve_colors):
    content, style = _inputs(shared)
    settings = dataclasses.replace(TINY, preserve_colors=preserve_colors, temporal_weight=0.0)
    targets = _targets(model, content, style, settings)
    unheld = stylize(model, content, targets, settings)
    free = unheld.image
    held_frame = torch.flip(free, dims=[-1])  # a different stylised frame to hold on to
    mask = torch.zeros(1, 1, *content.shape[-2:])
    mask[..., :, : content.shape[-1] // 2] = 1  # held on the left half only
    pulled = stylize(
        model, content, targets, dataclasses.replace(settings, temporal_weight=500.0), held=[(held_frame, mask)]
    )
    left, right = slice(None, content.shape[-1] // 2), slice(content.shape[-1] // 2, None)

    def gap(image, half):
        a, b = image[..., half], held_frame[..., half]
        if preserve_colors:  # only luminance is optimised; compare it
            a, b = luminance(a), luminance(b)
        return (a - b).pow(2).mean().item()

    assert gap(pulled.image, left) < 0.3 * gap(free, left)
    assert gap(pulled.image, right) > 0.5 * gap(free, right)  # no pull where the mask is 0
    assert pulled.final.temporal > 0 and unheld.final.temporal == 0


def test_style_targets_need_no_grad(shared, model):
    _, style = _inputs(shared)
    targets = style_targets(model, [(style, 1.0)], 32 * 32, ["relu1_1"])
    assert not targets["relu1_1"].requires_grad


def test_wrong_number_of_target_sets_is_an_error(shared, model):
    content, style = _inputs(shared)
    with pytest.raises(ValueError, match="scales need"):
        stylize(model, content, [], TINY)


@gpu
@pytest.mark.slow
def test_cuda_matches_cpu(shared, bundled):
    content, style = _inputs(shared)
    settings = dataclasses.replace(TINY, iterations=5)
    results = []
    for device in ("cpu", "cuda"):
        m = VGGFeatures(bundled, settings.layers).to(device)
        c = content.to(device)
        results.append(stylize(m, c, _targets(m, c, style.to(device), settings), settings).image.cpu())
    assert (results[0] - results[1]).abs().mean() < 0.02


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_tracks_fp32(shared, bundled, model, dtype):
    """A model with bf16/fp16 layers (slow on CPUs without bf16 units, but it runs) gives reduced-precision
    features; Grams and losses stay float32, so Adam's path follows the fp32 one: the result, scored in fp32,
    is within 3 %. Under the layer balance, whose every layer counts alike, so that the check covers the
    reduced-precision rounding of relu1_1 as much as relu4_1's (the total balance is nearly relu4_1's alone)."""
    reduced_model = VGGFeatures(bundled, model.layers, dtype=dtype)
    content, style = _inputs(shared)
    settings = dataclasses.replace(TINY, optimizer="adam", learning_rate=0.05, iterations=15, style_balance="layer")
    targets = _targets(model, content, style, settings)
    assert reduced_model(content)["relu4_2"].dtype == dtype
    exact = stylize(model, content, targets, settings)
    reduced = stylize(reduced_model, content, _targets(reduced_model, content, style, settings), settings)
    assert reduced.image.dtype == torch.float32
    assert reduced.final.loss < 0.8 * reduced.trace[0].loss
    score = Objective(model, settings, content, targets[0])
    with torch.no_grad():
        assert score(reduced.image)[0].item() == pytest.approx(score(exact.image)[0].item(), rel=0.03)
    assert (reduced.image - exact.image).abs().mean() < 0.03  # different images differ by ~0.3


@pytest.mark.slow
@pytest.mark.parametrize("init", ["content", "noise"])
def test_a_batch_equals_its_images_optimised_alone(shared, bundled, init):
    """Adam's per-element update keeps a batch's images independent: each equals its own run.

    In float64: a batch of two and an image alone may take different conv kernels, and Adam's first steps
    amplify their float32 round-off where a gradient is near 0 by a factor that depends on the CPU (1.6e-4
    of the loss on an AVX-512 BF16 EPYC). Float64 round-off, so amplified, stays far below the tolerances."""
    model = VGGFeatures(
        bundled, ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"), dtype=torch.float64
    )
    settings = Settings(size=64, scales=2, iterations=6, optimizer="adam", learning_rate=0.05, init=init, seed=5)
    contents = [read_image(shared / "content" / name, 64).double() for name in ("chelsea.png", "coffee.png")]
    shape = tuple(contents[0].shape[-2:])
    contents = [torch.nn.functional.interpolate(c, size=shape, mode="bilinear") for c in contents]
    styles = [read_image(shared / "style" / name) for name in ("starry_night.jpg", "wave.jpg")]
    per_image = [_targets(model, c, s, settings) for c, s in zip(contents, styles)]
    alone = [stylize(model, c, t, settings) for c, t in zip(contents, per_image)]
    batch = stylize(model, torch.cat(contents), stack_targets(per_image), settings)
    assert batch.image.shape == (2, 3, *shape)
    for i, single in enumerate(alone):
        gap = (batch.image[i : i + 1] - single.image).abs()  # float round-off, which Adam's first steps
        assert gap.mean() < 5e-4 and gap.max() < 0.02  # amplify where a gradient is near 0; other images: ~0.3
        assert batch.finals[i].loss == pytest.approx(single.final.loss, rel=1e-4)
        assert [p.loss for p in batch.traces[i]] == pytest.approx([p.loss for p in single.trace], rel=1e-3)
    assert batch.final.loss == pytest.approx(sum(s.final.loss for s in alone), rel=1e-4)


def test_a_batch_refuses_lbfgs(shared, model):
    content, style = _inputs(shared)
    targets = _targets(model, content, style, TINY)
    with pytest.raises(ValueError, match="needs optimizer adam"):
        stylize(model, torch.cat([content, content]), targets, TINY)


@pytest.mark.slow
def test_a_cpu_renderer_runs_reduced_precision(shared, tmp_path):
    """The CPU's fast float32 Winograd layers step aside for bf16 layers: a bf16 job renders and says so."""
    from pipeline.render.renderer import Renderer

    renderer = Renderer(Settings(size=48, scales=1, iterations=2), device="cpu", precision="bf16")
    done = renderer.render(
        shared / "content" / "coffee.png", [(shared / "style" / "wave.jpg", 1.0)], tmp_path / "out.png"
    )
    assert done.iterations == 2 and (tmp_path / "out.png").is_file()
    assert done.precision == "bf16" and renderer.model.identity.endswith("@bfloat16")


def test_a_cpu_renderer_picks_its_layers_by_precision(monkeypatch):
    """fp32 runs the Winograd layers and torch's own thin convs (packed ones lose to both in fp32); bf16 runs
    packed convs where the CPU has bf16 units, and torch's own where it has not."""
    from pipeline.core.packed import PackedConv3x3
    from pipeline.core.winograd import WinogradConv3x3
    from pipeline.render.renderer import Renderer

    def kinds(precision: str) -> set[type]:
        body = Renderer(Settings(size=32, scales=1), device="cpu", precision=precision).model.body
        return {type(m) for m in body} & {PackedConv3x3, WinogradConv3x3, torch.nn.Conv2d}

    assert kinds("fp32") == {WinogradConv3x3, torch.nn.Conv2d}
    real = torch.cpu.get_capabilities()
    for units, expected in ((True, PackedConv3x3), (False, torch.nn.Conv2d)):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda u=units: {**real, "avx512_bf16": u, "amx_bf16": u})
        if units and not torch.backends.mkldnn.is_available():
            continue
        assert kinds("bf16") == {expected}


@gpu
@pytest.mark.slow
def test_a_cuda_renderer_runs_its_auto_precision(shared, tmp_path):
    """On a GPU, precision: auto runs bf16 where the device supports it, and the job renders and converges."""
    from pipeline.render.renderer import Renderer

    renderer = Renderer(Settings(size=64, scales=1, iterations=10), device="cuda", precision="auto")
    done = renderer.render(
        shared / "content" / "coffee.png", [(shared / "style" / "wave.jpg", 1.0)], tmp_path / "out.png"
    )
    assert done.precision == ("bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32")
    assert done.iterations == 10 and (tmp_path / "out.png").is_file()
    assert done.trace[-1][2] < 0.8 * done.trace[0][2]  # the loss fell


def test_winograd_layers_are_float32_only(bundled):
    with pytest.raises(ValueError, match="float32 only"):
        VGGFeatures(bundled, ["relu1_1"], winograd=True, dtype=torch.bfloat16)


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        ({"avx2": True}, "fp32"),
        ({"avx2": True, "avx512_bf16": True}, "bf16"),
        ({"avx2": True, "amx_bf16": True}, "bf16"),
    ],
)
def test_auto_precision_is_bf16_only_on_cpus_with_bf16_units(monkeypatch, caps, expected):
    from pipeline.render.renderer import resolve_precision

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"  # an explicit choice stands
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", torch.device("cpu"))


def test_losses_read_back_in_bursts_still_reach_the_callback_every_iteration(shared, model, monkeypatch):
    """On a GPU the losses are read back at most every READ_EVERY s (each read is a sync): however late they
    arrive, the callback and the trace get every iteration, in order."""
    import pipeline.core.optimize as optimize

    content, style = _inputs(shared, 64)
    settings = Settings(size=64, scales=2, iterations=5, style_layers={"relu1_1": 1.0, "relu3_1": 1.0})
    targets = _targets(model, content, style, settings)

    def run() -> tuple[list, list]:
        seen: list = []
        result = stylize(
            model, content, targets, settings, callback=lambda p: seen.append((p.scale, p.iteration, p.loss))
        )
        return seen, [(p.scale, p.iteration, p.loss) for p in result.trace]

    monkeypatch.setattr(optimize, "READ_EVERY", 0.0)  # every iteration
    each, each_trace = run()
    monkeypatch.setattr(optimize, "READ_EVERY", 1e9)  # once per level
    burst, burst_trace = run()
    assert burst == each == each_trace == burst_trace and len(each) >= 5
    assert all(math.isfinite(loss) for _, _, loss in each)
