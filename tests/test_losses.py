"""Each loss against a hand computation on tiny tensors."""

import pytest
import torch

from pipeline.core.losses import (
    content_loss,
    gram,
    gram_errors_loss,
    gram_loss,
    relative_error,
    style_loss,
    style_statistics,
    style_targets_of,
    tapped_error,
    tapped_gram,
    tapped_gram_error,
    tv_loss,
)


def test_gram_is_mean_outer_product_per_position():
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [-1.0, 2.0]]]])  # (1, 2, 2, 2)
    a = [1.0, 2.0, 3.0, 4.0]
    b = [0.0, 1.0, -1.0, 2.0]
    dot = lambda x, y: sum(i * j for i, j in zip(x, y))  # noqa: E731
    expected = torch.tensor([[dot(a, a), dot(a, b)], [dot(b, a), dot(b, b)]]) / 4
    assert torch.allclose(gram(f)[0], expected)


def test_gram_does_not_grow_with_image_size():
    f = torch.rand(1, 3, 4, 4)
    tiled = f.repeat(1, 1, 2, 2)  # same statistics, four times the positions
    assert torch.allclose(gram(f), gram(tiled), rtol=1e-5)


def test_relative_error_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0]])
    t = torch.tensor([[1.0, 0.0, 1.0]])
    assert torch.allclose(relative_error(x, t), torch.tensor([(0 + 4 + 4) / 2.0]))


def test_content_loss_is_mean_over_layers():
    feats = {"a": torch.ones(1, 1, 1, 2), "b": torch.zeros(1, 1, 1, 2)}
    targets = {"a": torch.full((1, 1, 1, 2), 2.0), "b": torch.ones(1, 1, 1, 2)}
    # a: ‖1-2‖²/‖2‖² = 2/8 = 0.25; b: ‖0-1‖²/‖1‖² = 1
    assert torch.allclose(content_loss(feats, targets), torch.tensor([0.625]))


def test_style_loss_weights_layers():
    fa = torch.tensor([[[[1.0, 1.0]]]])  # gram = 1
    fb = torch.tensor([[[[2.0, 0.0]]]])  # gram = 2
    targets = {"a": torch.tensor([[2.0]]), "b": torch.tensor([[2.0]])}
    # a: (1-2)²/4 = 0.25; b: 0. Weights 3:1 -> 0.75*0.25
    loss = style_loss({"a": fa, "b": fb}, targets, {"a": 3.0, "b": 1.0})
    assert torch.allclose(loss, torch.tensor([0.1875]))


def test_tv_loss_by_hand():
    img = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])
    # vertical diffs: (0-0), (0-1) -> mean 0.5; horizontal: (1-0), (0-0) -> mean 0.5
    assert torch.allclose(tv_loss(img), torch.tensor([1.0]))
    assert tv_loss(torch.ones(1, 3, 5, 5)).item() == 0.0


def test_tv_loss_and_its_gradient_are_the_plain_formulas():
    """The total variation's own backward gives autograd's gradient of the formula, per image of a batch."""
    x = torch.rand(2, 3, 7, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.tensor([0.3, 1.7], dtype=torch.float64)
    plain = (x[:, :, 1:] - x[:, :, :-1]).pow(2).mean((1, 2, 3)) + (x[..., 1:] - x[..., :-1]).pow(2).mean((1, 2, 3))
    expected = torch.autograd.grad((plain * weights).sum(), x)[0]
    assert torch.allclose(tv_loss(x), plain)
    assert torch.allclose(torch.autograd.grad((tv_loss(x) * weights).sum(), x)[0], expected)
    assert torch.autograd.gradcheck(lambda t: tv_loss(t) * weights, (x,))


def test_losses_are_per_batch_element():
    x = torch.rand(3, 3, 8, 8)
    assert tv_loss(x).shape == (3,)
    assert gram(x).shape == (3, 3, 3)


def test_gram_gradient_matches_autograd_of_the_plain_formula():
    f = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gram, (f,))
    weights = torch.randn(2, 3, 3, dtype=torch.float64)
    (gram(f) * weights).sum().backward()
    plain = f.detach().clone().requires_grad_(True)
    flat = plain.reshape(2, 3, 20)
    ((flat @ flat.transpose(1, 2) / 20) * weights).sum().backward()
    assert torch.allclose(f.grad, plain.grad)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_tapped_gram_adds_both_gradients_as_autograd_would(layout):
    """A tapped layer's two gradients, the Gram's and the rest of the network's, summed inside the Gram's backward:
    the same as autograd's sum of the plain formula's gradient and the layer's, in either memory layout."""
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=layout)
    weights, onward = torch.randn(2, 3, 3, dtype=torch.float64), torch.randn(2, 3, 4, 5, dtype=torch.float64)

    def loss(passed: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (g * weights).sum() + (passed.pow(2) * onward).sum()  # the Gram's loss, and the network going on

    fused = x.clone().requires_grad_(True)
    passed, g = tapped_gram(fused)
    assert torch.equal(passed, fused) and torch.equal(g, gram(x))
    loss(passed, g).backward()
    plain = x.clone().requires_grad_(True)
    flat = plain.reshape(2, 3, 20)
    loss(plain, flat @ flat.transpose(1, 2) / 20).backward()
    assert torch.allclose(fused.grad, plain.grad)
    assert fused.grad.is_contiguous(memory_format=layout)
    assert torch.autograd.gradcheck(lambda t: loss(*tapped_gram(t)), (x.clone().requires_grad_(True),))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_tapped_error_adds_both_gradients_as_autograd_would(layout):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=layout)
    target, onward = torch.randn_like(x), torch.randn_like(x)
    weights = torch.tensor([0.5, 2.0], dtype=torch.float64)

    def loss(passed: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
        return (error * weights).sum() + (passed.pow(2) * onward).sum()

    fused = x.clone().requires_grad_(True)
    passed, error = tapped_error(fused, target)
    assert torch.equal(passed, fused) and torch.allclose(error, (x - target).pow(2).sum((1, 2, 3)))
    loss(passed, error).backward()
    plain = x.clone().requires_grad_(True)
    loss(plain, (plain - target).pow(2).sum((1, 2, 3))).backward()
    assert torch.allclose(fused.grad, plain.grad)
    assert torch.autograd.gradcheck(lambda t: loss(*tapped_error(t, target)), (x.clone().requires_grad_(True),))


@pytest.mark.parametrize("target_shape", [(3, 3), (2, 3, 3)])  # one target for all images, or one per image
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_tapped_gram_error_adds_both_gradients_as_autograd_would(layout, target_shape):
    """The Gram's error ‖G − A‖² made at the tap, for a symmetric A: its value and the two gradients summed
    inside its backward are autograd's through the plain formula and the layer's own."""
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=layout)
    r, onward = torch.randn(target_shape, dtype=torch.float64), torch.randn_like(x)
    target = r + r.transpose(-1, -2)
    weights = torch.tensor([0.5, 2.0], dtype=torch.float64)

    def loss(passed: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
        return (error * weights).sum() + (passed.pow(2) * onward).sum()

    fused = x.clone().requires_grad_(True)
    passed, error = tapped_gram_error(fused, target)
    loss(passed, error).backward()
    plain = x.clone().requires_grad_(True)
    flat = plain.reshape(2, 3, 20)
    expected = (flat @ flat.transpose(1, 2) / 20 - target).pow(2).sum((1, 2))
    assert torch.equal(passed, fused) and torch.allclose(error, expected)
    loss(plain, expected).backward()
    assert torch.allclose(fused.grad, plain.grad)
    assert fused.grad.is_contiguous(memory_format=layout)
    check = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: loss(*tapped_gram_error(t, target)), (check,))


@pytest.mark.parametrize("balance", ["total", "layer"])
def test_the_gram_loss_of_errors_made_at_the_taps_is_the_gram_loss(balance):
    features = {f"relu{i}_1": torch.randn(2, 2 * i, 6, 5, dtype=torch.float64) for i in (1, 2, 3)}
    targets = {k: gram(torch.randn(1, f.shape[1], 6, 5, dtype=torch.float64))[0] for k, f in features.items()}
    weights = {"relu1_1": 1.0, "relu2_1": 0.5, "relu3_1": 2.0}
    errors = {
        k: (tapped_gram_error(f, targets[k])[1], t.pow(2).sum())
        for (k, f), t in zip(features.items(), targets.values())
    }
    plain = gram_loss({k: gram(f) for k, f in features.items()}, targets, weights, balance)
    assert torch.allclose(gram_errors_loss(errors, targets, weights, balance), plain)


def test_tapped_gram_error_of_bfloat16_is_the_error_of_its_gram():
    x = torch.randn(1, 8, 6, 6).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    target = torch.rand(8, 8)
    passed, error = tapped_gram_error(x, target)
    assert passed.dtype == torch.bfloat16 and error.dtype == torch.float32
    assert torch.allclose(error, (gram(x) - target).pow(2).sum((1, 2)), rtol=1e-5)


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_a_bfloat16_gram_made_in_pieces_is_the_gram_to_bfloat16s_rounding(monkeypatch, threads):
    """On the CPU, channels-last bfloat16 Grams are multiplied in one piece of the positions per thread, each
    of at least PIECE positions (6144 positions: 1, 2, 3 and 3 pieces; 6111: one, as 2 does not divide it;
    1024: one); each piece rounds to bfloat16, the sum is float32."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    for h, w in ((64, 96), (97, 63), (32, 32)):
        x = torch.randn(2, 16, h, w).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        f = x.double().flatten(2)
        exact = f @ f.transpose(1, 2) / f.shape[-1]
        g = gram(x)
        assert g.dtype == torch.float32 and g.shape == (2, 16, 16)
        assert (g.double() - exact).abs().max() <= 2**-8 * exact.abs().max()


@pytest.mark.parametrize("channels", [64, 96, 128, 200, 512])
def test_a_float32_gram_made_in_bands_is_the_product_and_symmetric(channels):
    """On the CPU, float32 Grams of 64 channels or more are multiplied a band of rows at a time (2 bands up to
    128 channels, 4 above; 200 splits unevenly): the same product, symmetric to float32's round-off (the blocks
    below the diagonal are mirrored from those above it: left unwritten, they would be whatever memory held)."""
    x = torch.randn(2, channels, 7, 9)
    f = x.double().flatten(2)
    exact = f @ f.transpose(1, 2) / f.shape[-1]
    g = gram(x)
    assert g.dtype == torch.float32 and g.shape == (2, channels, channels)
    scale = exact.abs().max().item()
    assert (g - g.transpose(1, 2)).abs().max().item() <= 1e-6 * scale
    assert torch.allclose(g.double(), exact, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize(
    "tapped",
    [
        lambda x: tapped_gram(x),
        lambda x: tapped_error(x, torch.zeros_like(x)),
        lambda x: tapped_gram_error(x, torch.eye(x.shape[1])),
    ],
)
def test_a_tap_adds_into_no_gradient_the_caller_holds(tapped):
    """The in-place sum is for gradients autograd made and holds alone: one handed in by the caller stays as it was."""
    x = torch.randn(1, 3, 4, 4, requires_grad=True)
    passed, statistic = tapped(x)
    given = torch.ones_like(x)
    torch.autograd.backward([passed, statistic.sum()], [given, None])
    assert torch.equal(given, torch.ones_like(x))
    assert not torch.allclose(x.grad, given)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_tapped_error_of_bfloat16_is_the_exact_error_to_bfloat16s_rounding(layout):
    """The squares of bfloat16 differences are summed as norms of rows, each rounded to bfloat16 (2⁻⁹) and
    squared: the sum is within 2⁻⁸ of the exact one, whatever the CPU's order of summing."""
    x = torch.randn(2, 64, 20, 30).to(torch.bfloat16).contiguous(memory_format=layout)
    target = (x.float() + 0.1 * torch.randn(x.shape)).to(torch.bfloat16).contiguous(memory_format=layout)
    passed, error = tapped_error(x, target)
    exact = (x.double() - target.double()).pow(2).sum((1, 2, 3))
    assert passed.dtype == torch.bfloat16 and error.dtype == torch.float32 and error.shape == (2,)
    assert ((error.double() - exact).abs() <= 2**-8 * exact).all()


def test_tapped_error_of_float16_is_autograds():
    x = torch.randn(1, 4, 3, 3, dtype=torch.float16)
    passed, error = tapped_error(x, torch.zeros_like(x))
    assert passed is x and error.dtype == torch.float32
    assert torch.allclose(error, x.float().pow(2).sum((1, 2, 3)))


def test_tapped_gram_of_a_cast_passes_the_features_untouched():
    x = torch.randn(1, 4, 3, 3, dtype=torch.float16)
    passed, g = tapped_gram(x)
    assert passed is x and g.dtype == torch.float32
    assert torch.allclose(g, gram(x.float()))
    passed, error = tapped_gram_error(x, torch.eye(4))
    assert passed is x and error.dtype == torch.float32
    assert torch.allclose(error, (gram(x.float()) - torch.eye(4)).pow(2).sum((1, 2)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gram_stays_float32_under_autocast(dtype):
    f = torch.randn(2, 8, 6, 5)
    with torch.autocast("cpu", dtype=dtype):
        g = gram(f)
    assert g.dtype == torch.float32
    assert torch.allclose(g, gram(f), rtol=1e-6, atol=1e-7)


def _w2_targets(features):
    """Wasserstein targets of (1, C, H, W) features: their own mean, second moment and covariance root."""
    stats = style_statistics({"a": features}, ["a"], "wasserstein")
    return style_targets_of({k: v[0] for k, v in stats.items()}, "wasserstein")


def test_wasserstein_by_hand_for_diagonal_covariances():
    """Uncorrelated channels: W₂² = ‖μ − μₛ‖² + Σ (σᵢ − σₛᵢ)², divided by ‖μₛ‖² + tr Σₛ."""
    x = torch.tensor([[[[1.0, 3.0], [1.0, 3.0]], [[0.0, 0.0], [4.0, 4.0]]]])  # means (2, 2), variances (1, 4)
    t = torch.tensor([[[[-1.0, 3.0], [-1.0, 3.0]], [[1.0, 1.0], [-1.0, -1.0]]]])  # means (1, 0), variances (4, 1)
    targets = _w2_targets(t)
    assert torch.allclose(targets["a.sqrt"], torch.diag(torch.tensor([2.0, 1.0])), atol=1e-6)
    # (2-1)² + (2-0)² + (1-2)² + (2-1)² = 7, over 1² + 0² + 4 + 1 = 6
    assert torch.allclose(style_loss({"a": x}, targets, {"a": 1.0}, "wasserstein"), torch.tensor([7 / 6]))
    assert style_loss({"a": t}, targets, {"a": 1.0}, "wasserstein").abs().item() < 1e-6  # its own target: 0


def test_wasserstein_matches_the_closed_form_of_two_dimensional_gaussians():
    """For 2 × 2 covariances, tr √(√Σₛ Σ √Σₛ) = √(tr ΣₛΣ + 2 √(det Σₛ det Σ)), non-commuting ones too."""
    g = torch.Generator().manual_seed(1)
    x, t = (torch.randn(2, 2, 4, 5, generator=g, dtype=torch.float64) + 1 for _ in range(2))
    targets = _w2_targets(t[:1])
    loss = style_loss({"a": x}, targets, {"a": 1.0}, "wasserstein")
    for i in range(2):
        fx, ft = x[i].flatten(1), t[0].flatten(1)
        mx, mt = fx.mean(1), ft.mean(1)
        cx = (fx - mx[:, None]) @ (fx - mx[:, None]).T / 20
        ct = (ft - mt[:, None]) @ (ft - mt[:, None]).T / 20
        cross = torch.sqrt(torch.trace(ct @ cx) + 2 * torch.sqrt(torch.det(ct) * torch.det(cx)))
        w2 = (mx - mt).pow(2).sum() + torch.trace(cx) + torch.trace(ct) - 2 * cross
        assert loss[i].item() == pytest.approx((w2 / (mt.pow(2).sum() + torch.trace(ct))).item(), rel=1e-5)


def test_wasserstein_weights_layers_and_takes_per_image_targets():
    g = torch.Generator().manual_seed(2)
    fa, fb, ta, tb = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(4))
    targets = {**_w2_targets(ta[:1]), **{k.replace("a", "b", 1): v for k, v in _w2_targets(tb[:1]).items()}}
    a = style_loss({"a": fa}, _w2_targets(ta[:1]), {"a": 1.0}, "wasserstein")
    b = style_loss({"a": fb}, _w2_targets(tb[:1]), {"a": 1.0}, "wasserstein")
    both = style_loss({"a": fa, "b": fb}, targets, {"a": 3.0, "b": 1.0}, "wasserstein")
    assert torch.allclose(both, 0.75 * a + 0.25 * b, rtol=1e-5)
    stacked = {k: torch.stack([v, _w2_targets(fa[1:])[k]]) for k, v in _w2_targets(ta[:1]).items()}  # (N, …) targets
    per_image = style_loss({"a": fa}, stacked, {"a": 1.0}, "wasserstein")
    assert per_image[0].item() == pytest.approx(a[0].item(), rel=1e-5) and abs(per_image[1].item()) < 1e-5


def test_wasserstein_gradient_passes_gradcheck():
    """In float64, against finite differences: through the Gram's backward, the mean and tr √A's backward."""
    g = torch.Generator().manual_seed(3)
    targets = _w2_targets(torch.randn(1, 3, 4, 5, generator=g, dtype=torch.float64) + 0.5)
    f = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: style_loss({"a": x}, targets, {"a": 1.0}, "wasserstein"), (f,))


def test_wasserstein_gradient_stays_bounded_for_a_singular_covariance():
    """Fewer positions than channels: the covariance is singular, the gradient stays finite."""
    g = torch.Generator().manual_seed(4)
    targets = _w2_targets(torch.randn(1, 16, 2, 2, generator=g))
    f = torch.randn(1, 16, 2, 2, generator=g, requires_grad=True)
    style_loss({"a": f}, targets, {"a": 1.0}, "wasserstein").sum().backward()
    assert torch.isfinite(f.grad).all() and f.grad.abs().max() < 1e3


def test_an_unknown_style_loss_is_an_error():
    with pytest.raises(ValueError, match="unknown style loss 'l1'"):
        style_loss({"a": torch.ones(1, 1, 2, 2)}, {"a": torch.ones(1, 1)}, {"a": 1.0}, "l1")


def test_the_total_balance_is_neural_styles_gram_error_relative_to_the_targets():
    """balance total: per layer the mean squared error of Grams over C (neural-style's G/(C·H·W)), summed
    over layers and divided by the same sum for zero Grams; balance layer: the mean of the relative errors."""
    from pipeline.core.losses import gram_loss

    grams = {"a": torch.tensor([[[2.0]]]), "b": torch.full((1, 2, 2), 1.0)}
    targets = {"a": torch.tensor([[1.0]]), "b": torch.full((2, 2), 3.0)}
    weights = {"a": 1.0, "b": 1.0}
    # a: ((2 - 1) / 1)² = 1 over a norm of 1; b: every entry ((1 - 3) / 2)² = 1 over (3 / 2)² = 2.25
    assert gram_loss(grams, targets, weights).item() == pytest.approx((1 + 1) / (1 + 2.25))
    assert gram_loss(grams, targets, weights, "layer").item() == pytest.approx((1 / 1 + 16 / 36) / 2)
    scaled = gram_loss({k: 9 * g for k, g in grams.items()}, {k: 9 * t for k, t in targets.items()}, weights)
    assert scaled.item() == pytest.approx((1 + 1) / (1 + 2.25), rel=1e-5)  # free of the activations' scale
    with pytest.raises(ValueError, match="unknown style balance"):
        gram_loss(grams, targets, weights, "even")
