"""Gradient descent on one image tensor: L-BFGS and Adam.

Both minimise `evaluate()`, which computes the loss at `x`, fills `x.grad`
and returns the loss; each iteration is exactly one evaluation. Both end
early when `stop()`, asked after each iteration, says so (the caller's
convergence test, on values it has read back already). They are
written here rather than taken from `torch.optim` because the first
`torch.optim.Optimizer` in a process imports `torch._dynamo`, seconds of
start-up (docs/architecture.md, Why these libraries).

`lbfgs` is the two-loop recursion of Nocedal & Wright (Algorithm 7.4) with
a unit step and no line search, as `torch.optim.LBFGS(lr=1,
line_search_fn=None)` does, plus one safeguard: when the direction stops
being a descent direction the history is dropped and it restarts along the
gradient. Neither reads the device: the only host-device sync per
iteration is the caller's own loss read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch

Evaluate = Callable[[], torch.Tensor]
Stop = Callable[[], bool]


@torch.no_grad()
def lbfgs(x: torch.Tensor, evaluate: Evaluate, iterations: int, history: int = 50, stop: Stop | None = None) -> None:
    """Run `iterations` L-BFGS evaluations on the leaf tensor `x`, in place (fewer when `stop()` turns True).

    No step reads a value back from the device: each decision (keep a pair,
    restart) is a tensor select, so on a GPU the loop queues work without
    waiting. A pair that fails the curvature condition, and every pair at a
    restart, gets weight 1/yᵀs = 0, which removes it from the recursion.
    """
    pairs: deque[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = deque(maxlen=history)  # (s, y, 1/yᵀs or 0)
    gamma = x.new_tensor(1.0)  # initial inverse-Hessian scale sᵀy / yᵀy
    prev_grad: torch.Tensor | None = None
    step: torch.Tensor | None = None
    for _ in range(iterations):
        grad = _gradient(x, evaluate).flatten()
        if step is not None and prev_grad is not None:
            y = grad - prev_grad
            ys = y.dot(step)
            curved = ys > 1e-10  # curvature condition; dropping the pair otherwise keeps H positive definite
            pairs.append((step, y, torch.where(curved, ys.reciprocal(), 0.0)))
            gamma = torch.where(curved, ys / y.dot(y), gamma)
        direction = _two_loop(grad, pairs, gamma)
        fresh = torch.stack([rho for _, _, rho in pairs]).eq(0).all() if pairs else torch.tensor(True, device=x.device)
        # No usable pair, or not a descent direction: restart along the gradient with the cautious
        # first step that torch.optim.LBFGS takes, min(1, 1/|g|₁).
        restart = fresh | (direction.dot(grad) >= 0)
        for _, _, rho in pairs:
            rho.mul_(~restart)
        gamma = torch.where(restart, 1.0, gamma)
        cautious = grad.abs().sum().reciprocal().clamp(max=1.0)
        direction = torch.where(restart, grad * -cautious, direction)
        x.view(-1).add_(direction)
        step, prev_grad = direction, grad  # x.grad is a fresh tensor at every evaluation
        if stop is not None and stop():
            return


def _gradient(x: torch.Tensor, evaluate: Evaluate) -> torch.Tensor:
    """Evaluate the loss at `x` with grad enabled and return the fresh `x.grad`."""
    x.grad = None
    with torch.enable_grad():
        evaluate()
    return x.grad


def _two_loop(grad: torch.Tensor, pairs: deque, gamma: torch.Tensor) -> torch.Tensor:
    """-H·grad for the inverse Hessian approximation H held in `pairs` (no host syncs)."""
    q = grad.neg()
    alphas = []
    for s, y, rho in reversed(pairs):
        alpha = s.dot(q) * rho
        q.addcmul_(y, alpha, value=-1)
        alphas.append(alpha)
    q.mul_(gamma)
    for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
        q.addcmul_(s, alpha - y.dot(q) * rho)
    return q


@torch.no_grad()
def adam(
    x: torch.Tensor,
    evaluate: Evaluate,
    iterations: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    stop: Stop | None = None,
) -> None:
    """Run `iterations` Adam steps (Kingma & Ba, 2015) on the leaf tensor `x`, in place (fewer when `stop()` turns True)."""
    m = torch.zeros_like(x)
    v = torch.zeros_like(x)
    b1, b2 = betas
    for t in range(1, iterations + 1):
        g = _gradient(x, evaluate)
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v / (1 - b2**t)).sqrt_().add_(eps)
        x.addcdiv_(m, denom, value=-lr / (1 - b1**t))
        if stop is not None and stop():
            return
