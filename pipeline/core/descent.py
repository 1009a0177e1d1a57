"""Gradient descent on one image tensor: L-BFGS and Adam.

Both minimise `evaluate()`, which computes the loss at `x`, fills `x.grad`
and returns the loss; each iteration is exactly one evaluation. Both end
early when `stop()`, asked after each iteration, says so (the caller's
convergence test, on values it has read back already). They are
written here rather than taken from `torch.optim` because the first
`torch.optim.Optimizer` in a process imports `torch._dynamo`, seconds of
start-up (docs/architecture.md, Why these libraries).

`lbfgs` is the two-loop recursion of Nocedal & Wright (Algorithm 7.4), on
stacked pairs (see `History`), with a unit step and no line search, as `torch.optim.LBFGS(lr=1,
line_search_fn=None)` does, plus one safeguard: when the direction stops
being a descent direction the history is dropped and it restarts along the
gradient. Neither reads the device: the only host-device sync per
iteration is the caller's own loss read.
"""

from __future__ import annotations

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
    pairs = History(min(history, max(iterations - 1, 1)), x)
    gamma = x.new_tensor(1.0)  # initial inverse-Hessian scale sᵀy / yᵀy
    prev_grad: torch.Tensor | None = None
    step: torch.Tensor | None = None
    for _ in range(iterations):
        grad = _gradient(x, evaluate).flatten()
        if step is not None and prev_grad is not None:
            y = grad - prev_grad
            ys = y.dot(step)
            curved = ys > 1e-10  # curvature condition; dropping the pair otherwise keeps H positive definite
            pairs.push(step, y, torch.where(curved, ys.reciprocal(), 0.0), grad)
            gamma = torch.where(curved, ys / y.dot(y), gamma)
        direction = pairs.direction(grad, gamma)
        # No usable pair, or not a descent direction: restart along the gradient with the cautious
        # first step that torch.optim.LBFGS takes, min(1, 1/|g|₁).
        restart = pairs.rho.eq(0).all() | (direction.dot(grad) >= 0)
        pairs.rho.mul_(~restart)
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


CHUNKS = 64  # the pass of `_products` splits the image-sized axis into this many pieces


def _products(rows: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """rows @ pairs.T for a few image-sized rows: one pass over the pairs, as CHUNKS products of pieces of the
    long axis in one batched matmul, summed (the rest, under CHUNKS columns, in one more). A single matmul of
    two or three rows runs the CPU's GEMM far below the memory's speed; the pieces keep both cores streaming,
    and their sum adds fewer terms in a row. The figures: docs/performance.md."""
    k, n = rows.shape
    piece = n // CHUNKS
    whole = piece * CHUNKS
    products = torch.bmm(
        rows[:, :whole].view(k, CHUNKS, piece).transpose(0, 1),
        pairs[:, :whole].view(len(pairs), CHUNKS, piece).permute(1, 2, 0),
    ).sum(0)
    return products.addmm_(rows[:, whole:], pairs[:, whole:].T)


class History:
    """L-BFGS's last `size` pairs (s, y), stacked as the rows of one tensor in a ring, with their weights
    ρ = 1/yᵀs (0: left out) and the small matrices of their products sᵢᵀyⱼ and yᵢᵀyⱼ.

    `direction` is the compact form of Byrd, Nocedal & Schnabel (1994): the two-loop recursion's result from
    Sᵀg and Yᵀg and small triangular solves. Over the pairs, which at 512 px hold 300 MB, an iteration makes
    two passes: one product of the stacked pairs with (s, y, g) at `push`, one combination in `direction`.
    """

    def __init__(self, size: int, like: torch.Tensor) -> None:
        self.pairs = like.new_zeros(2 * size, like.numel())  # s₀ … s_{size-1}, then y₀ … y_{size-1}
        self.s, self.y = self.pairs[:size], self.pairs[size:]
        self.rho = like.new_zeros(size)
        self.sy = like.new_zeros(size, size)  # sy[i, j] = sᵢᵀyⱼ, rows and columns in ring order
        self.yy = like.new_zeros(size, size)  # yy[i, j] = yᵢᵀyⱼ
        self.count = 0  # pairs pushed so far
        self._grad: tuple[torch.Tensor, torch.Tensor] | None = None  # a gradient and its products [Sᵀg; Yᵀg]

    def push(self, s: torch.Tensor, y: torch.Tensor, rho: torch.Tensor, grad: torch.Tensor | None = None) -> None:
        """Keep the pair (s, y) with weight `rho`, in place of the oldest once the ring is full; with `grad`, the
        products `direction(grad)` needs come from the same pass over the pairs."""
        size = len(self.rho)
        i = self.count % size
        self.s[i], self.y[i], self.rho[i] = s, y, rho
        products = _products(torch.stack([s, y] if grad is None else [s, y, grad]), self.pairs)
        self.sy[i], self.sy[:, i] = products[0, size:], products[1, :size]  # sᵢᵀyⱼ and sⱼᵀyᵢ for the new pair i
        self.yy[i], self.yy[:, i] = products[1, size:], products[1, size:]
        self._grad = (grad, products[2]) if grad is not None else None
        self.count += 1

    def direction(self, grad: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """-H·grad for the inverse Hessian approximation H of the pairs kept, with initial scale `gamma`."""
        size = len(self.rho)
        kept = min(self.count, size)
        if kept == 0:
            return grad * -gamma
        on_grad = self._grad[1] if self._grad is not None and self._grad[0] is grad else self.pairs @ grad
        order = torch.arange(self.count - kept, self.count, device=grad.device) % size  # oldest first
        keep = self.rho[order].ne(0).to(grad.dtype)  # a pair left out (ρ = 0) is made inert
        both = keep[:, None] * keep[None, :]
        products = self.sy[order][:, order] * both
        upper = products.triu() + torch.diag(1 - keep)  # R, sᵢᵀyⱼ for i ≤ j
        p, q = on_grad[order] * keep, on_grad[size + order] * keep
        v = torch.linalg.solve_triangular(upper, p[:, None], upper=True)  # R⁻¹Sᵀg
        middle = torch.diag(products.diagonal()) + gamma * self.yy[order][:, order] * both  # D + γYᵀY
        u = torch.linalg.solve_triangular(upper.T, middle @ v - gamma * q[:, None], upper=False)[:, 0]
        coefficients = torch.cat([self._ring(u, order), self._ring(-gamma * v[:, 0], order)])
        return grad * -gamma - self.pairs.T @ coefficients

    def _ring(self, values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Per-pair `values` (oldest first) placed at their pairs' rows of the ring (0 at rows not kept)."""
        return self.rho.new_zeros(len(self.rho)).index_copy_(0, order, values)


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
