"""L-BFGS and Adam on problems with known minima."""

import pytest
import torch

from pipeline.core.descent import CHUNKS, History, adam, lbfgs


def _quadratic(seed: int = 0, n: int = 40):
    """An ill-conditioned convex quadratic ½xᵀAx − bᵀx and its minimiser."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.logspace(0, 3, n, dtype=torch.float64)) @ q.T
    b = torch.randn(n, generator=g, dtype=torch.float64)
    return a, b, torch.linalg.solve(a, b)


def _evaluator(x, a, b, calls):
    def evaluate():
        loss = 0.5 * x @ a @ x - b @ x
        loss.backward()
        calls.append(loss.item())
        return loss

    return evaluate


def test_lbfgs_finds_the_minimum_of_an_ill_conditioned_quadratic():
    a, b, solution = _quadratic()
    x = torch.zeros(40, dtype=torch.float64, requires_grad=True)
    calls = []
    lbfgs(x, _evaluator(x, a, b, calls), iterations=150, history=20)
    assert len(calls) == 150  # one evaluation per iteration
    assert torch.allclose(x.detach(), solution, atol=1e-4)  # condition number 1000, from 0.4 away


def test_lbfgs_matches_torch_optim_without_line_search():
    """N evaluations and N updates: torch's LBFGS needs max_eval=N + 1 for N updates."""
    a, b, _ = _quadratic(1)
    ours = torch.zeros(40, dtype=torch.float64, requires_grad=True)
    lbfgs(ours, _evaluator(ours, a, b, []), iterations=25, history=10)
    ref = torch.zeros(40, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [ref], lr=1, max_iter=26, max_eval=26, history_size=10, tolerance_grad=0, tolerance_change=0
    )

    def closure():
        opt.zero_grad()
        return _evaluator(ref, a, b, [])()

    opt.step(closure)
    assert torch.allclose(ours.detach(), ref.detach(), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("lr", [0.05, 0.2])
def test_adam_matches_torch_optim(lr):
    a, b, _ = _quadratic(2)
    ours = torch.zeros(40, dtype=torch.float64, requires_grad=True)
    adam(ours, _evaluator(ours, a, b, []), iterations=30, lr=lr)
    ref = torch.zeros(40, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([ref], lr=lr)
    for _ in range(30):
        opt.zero_grad()
        _evaluator(ref, a, b, [])()
        opt.step()
    assert torch.allclose(ours.detach(), ref.detach(), rtol=1e-10, atol=1e-12)


def _two_loop(grad, pairs, gamma):
    """Nocedal & Wright's Algorithm 7.4, pair by pair: -H·grad from (s, y, ρ) pairs, oldest first."""
    q, alphas = -grad, []
    for s, y, rho in reversed(pairs):
        alphas.append(rho * s.dot(q))
        q = q - alphas[-1] * y
    q = gamma * q
    for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
        q = q + (alpha - rho * y.dot(q)) * s
    return q


@pytest.mark.parametrize("n", [30, CHUNKS, 5 * CHUNKS + 17])  # the pass's pieces: none, one column each, a rest
@pytest.mark.parametrize("with_grad", [False, True])
def test_the_stacked_history_gives_the_two_loop_direction(n, with_grad):
    """Seven pairs through a ring of four (so it wraps), one of them left out by the curvature condition
    (sᵀy < 0): the stacked solve equals the pair-by-pair recursion over the four newest, the gradient's
    products made at the last push or apart."""
    g = torch.Generator().manual_seed(7)
    history = History(4, torch.zeros(n, dtype=torch.float64))
    gamma = torch.tensor(0.7, dtype=torch.float64)
    pairs = []
    for k in range(7):
        s, y = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
        y = -s if k == 5 else y + 3 * s  # mostly positive curvature
        history.rows[0] = s  # the last step, where `direction` leaves it
        pushed = history.rows[2] + y  # the gradient after the step
        ys, yy = history.push(pushed)
        assert torch.allclose(ys, s.dot(y)) and torch.allclose(yy, y.dot(y))
        pairs.append((s, y, torch.where(ys > 1e-10, 1 / ys, 0.0)))
    grad = pushed if with_grad else torch.randn(n, generator=g, dtype=torch.float64)
    step, restart = history.direction(grad, gamma)
    assert not restart and step.data_ptr() == history.rows[0].data_ptr()
    assert torch.allclose(step, _two_loop(grad, pairs[-4:], gamma), rtol=1e-10, atol=1e-12)
    assert torch.equal(history.rows[2], grad)  # the last gradient, for the next pair's y


def test_with_no_pair_kept_the_step_is_the_cautious_one_along_the_gradient():
    grad = torch.tensor([0.5, -2.0, 1.0], dtype=torch.float64)
    step, restart = History(3, grad).direction(grad, torch.tensor(0.7, dtype=torch.float64))
    assert restart and torch.allclose(step, -grad / 3.5)  # -min(1, 1/|g|₁)·g
    small = grad / 10
    step, restart = History(3, grad).direction(small, torch.tensor(0.7, dtype=torch.float64))
    assert restart and torch.allclose(step, -small)


def test_lbfgs_never_reads_a_value_back_from_the_device(monkeypatch):
    """Every decision is a tensor op: no bool(), float(), item() or tolist() on a tensor inside the loop."""
    a, b, solution = _quadratic(3)
    x = torch.zeros(40, dtype=torch.float64, requires_grad=True)

    def evaluate():
        loss = 0.5 * x @ a @ x - b @ x
        loss.backward()
        return loss

    def sync(*_):
        raise AssertionError("host-device sync inside lbfgs")

    for name in ("__bool__", "__float__", "__int__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    lbfgs(x, evaluate, iterations=150, history=20)
    monkeypatch.undo()
    assert torch.allclose(x.detach(), solution, atol=1e-4)


def test_lbfgs_restarts_along_the_gradient_when_the_direction_goes_uphill():
    """A non-convex start (negative curvature) still descends: the loss ends below where it began."""
    x = torch.tensor([0.1, -0.2], dtype=torch.float64, requires_grad=True)
    calls = []

    def evaluate():
        loss = (x[0] ** 2 - 1) ** 2 + 10 * (x[1] - x[0] ** 2) ** 2  # negative curvature near the origin
        loss.backward()
        calls.append(loss.item())
        return loss

    lbfgs(x, evaluate, iterations=200, history=5)
    assert calls[-1] < 1e-8 and calls[-1] < calls[0]


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
def test_stop_ends_the_run_after_the_iteration_that_asks(method):
    a, b, _ = _quadratic(4)
    x = torch.zeros(40, dtype=torch.float64, requires_grad=True)
    calls = []
    run = {
        "lbfgs": lambda **kw: lbfgs(x, _evaluator(x, a, b, calls), iterations=50, **kw),
        "adam": lambda **kw: adam(x, _evaluator(x, a, b, calls), iterations=50, lr=0.1, **kw),
    }[method]
    run(stop=lambda: len(calls) >= 7)
    assert len(calls) == 7
    calls.clear()
    run(stop=lambda: False)
    assert len(calls) == 50
