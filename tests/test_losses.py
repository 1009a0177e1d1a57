"""Each loss against a hand computation on tiny tensors."""

import pytest
import torch

from pipeline.losses import content_loss, gram, relative_error, style_loss, tv_loss


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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gram_stays_float32_under_autocast(dtype):
    f = torch.randn(2, 8, 6, 5)
    with torch.autocast("cpu", dtype=dtype):
        g = gram(f)
    assert g.dtype == torch.float32
    assert torch.allclose(g, gram(f), rtol=1e-6, atol=1e-7)
