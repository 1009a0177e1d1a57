"""Gradient descent on one image tensor: L-BFGS and Adam.

Both minimise `evaluate()`, which computes the loss at `x`, fills `x.grad`
and returns the loss; each iteration is exactly one evaluation. They are
written here rather than taken from `torch.optim` because the first
`torch.optim.Optimizer` in a process imports `torch._dynamo`, which costs
about 2 s of start-up on a 2-core CPU: a tenth of a whole 256 px job.

`lbfgs` is the two-loop recursion of Nocedal & Wright (Algorithm 7.4) with
a unit step and no line search, as `torch.optim.LBFGS(lr=1,
line_search_fn=None)` does, plus one safeguard: when the direction stops
being a descent direction the history is dropped and it restarts along the
gradient.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import torch

Evaluate = Callable[[], torch.Tensor]


@torch.no_grad()
def lbfgs(x: torch.Tensor, evaluate: Evaluate, iterations: int, history: int = 50) -> None:
    """Run `iterations` L-BFGS evaluations on the leaf tensor `x`, in place."""
    pairs: deque[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = deque(maxlen=history)  # (s, y, 1 / yᵀs)
    gamma = x.new_tensor(1.0)  # initial inverse-Hessian scale sᵀy / yᵀy
    prev_grad: torch.Tensor | None = None
    step: torch.Tensor | None = None
    for _ in range(iterations):
        grad = _gradient(x, evaluate).flatten()
        if step is not None and prev_grad is not None:
            y = grad - prev_grad
            ys = y.dot(step)
            if ys > 1e-10:  # curvature condition; skipping the pair keeps H positive definite
                pairs.append((step, y, 1 / ys))
                gamma = ys / y.dot(y)
        direction = _two_loop(grad, pairs, gamma)
        if pairs and direction.dot(grad) >= 0:  # not a descent direction: restart along the gradient
            pairs.clear()
            direction = grad.neg()
        if not pairs:  # cautious first step, as torch.optim.LBFGS takes
            direction.mul_(min(1.0, 1.0 / float(grad.abs().sum())))
        x.view(-1).add_(direction)
        step, prev_grad = direction, grad  # x.grad is a fresh tensor at every evaluation


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
    x: torch.Tensor, evaluate: Evaluate, iterations: int, lr: float,
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
) -> None:
    """Run `iterations` Adam steps (Kingma & Ba, 2015) on the leaf tensor `x`, in place."""
    m = torch.zeros_like(x)
    v = torch.zeros_like(x)
    b1, b2 = betas
    for t in range(1, iterations + 1):
        g = _gradient(x, evaluate)
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v / (1 - b2**t)).sqrt_().add_(eps)
        x.addcdiv_(m, denom, value=-lr / (1 - b1**t))
