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
    for k in range(iterations):
        grad = _gradient(x, evaluate).flatten()
        if k:
            ys, yy = pairs.push(grad)
            gamma = torch.where(ys > CURVED, ys / yy, gamma)
        step, restart = pairs.direction(grad, gamma)
        gamma = torch.where(restart, 1.0, gamma)
        x.view(-1).add_(step)
        if stop is not None and stop():
            return


def _gradient(x: torch.Tensor, evaluate: Evaluate) -> torch.Tensor:
    """Evaluate the loss at `x` with grad enabled and return the fresh `x.grad`."""
    x.grad = None
    with torch.enable_grad():
        evaluate()
    return x.grad


CURVED = 1e-10  # a pair is kept where sᵀy exceeds this (the curvature condition keeps H positive definite)
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
    `rows` holds the last step (written by `direction`), its y and the last gradient, stacked for that product.
    """

    def __init__(self, size: int, like: torch.Tensor) -> None:
        self.pairs = like.new_zeros(2 * size, like.numel())  # s₀ … s_{size-1}, then y₀ … y_{size-1}
        self.s, self.y = self.pairs[:size], self.pairs[size:]
        self.rho = like.new_zeros(size)
        self.sy = like.new_zeros(size, size)  # sy[i, j] = sᵢᵀyⱼ, rows and columns in ring order
        self.yy = like.new_zeros(size, size)  # yy[i, j] = yᵢᵀyⱼ
        self.rows = like.new_zeros(3, like.numel())  # the last step s, its y, the last gradient
        self.count = 0  # pairs pushed so far
        self._on_grad: tuple[torch.Tensor, torch.Tensor] | None = None  # the last `push`'s gradient, [Sᵀg; Yᵀg]

    def push(self, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the pair of the last step s and y = `grad` − the last gradient, in place of the oldest once the
        ring is full, with weight 1/sᵀy where sᵀy > CURVED (the curvature condition), else 0; `grad` becomes the
        last gradient, its products with the pairs made in the same pass. Returns (sᵀy, yᵀy) of the pair."""
        size = len(self.rho)
        i = self.count % size
        s, y, last = self.rows
        torch.sub(grad, last, out=y)
        last.copy_(grad)
        self.s[i], self.y[i] = s, y
        products = _products(self.rows, self.pairs)
        ys, yy = products[0, size + i], products[1, size + i]
        self.rho[i] = torch.where(ys > CURVED, ys.reciprocal(), 0.0)
        self.sy[i], self.sy[:, i] = products[0, size:], products[1, :size]  # sᵢᵀyⱼ and sⱼᵀyᵢ for the new pair i
        self.yy[i], self.yy[:, i] = products[1, size:], products[1, size:]
        self._on_grad = (grad, products[2])
        self.count += 1
        return ys, yy

    def direction(self, grad: torch.Tensor, gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the step, whether it restarted): -H·grad for the inverse Hessian approximation H of the pairs kept,
        with initial scale `gamma`; where no pair is kept or that is not a descent direction, all pairs are
        dropped and the step is the cautious one along the gradient that torch.optim.LBFGS takes first,
        -min(1, 1/|g|₁)·g. The step is written into rows[0] (the s of the next `push`); the descent test
        takes gᵀ(-H·g) from the small products, so the step is made in one pass over the pairs."""
        if self._on_grad is not None and self._on_grad[0] is grad:
            on_grad = self._on_grad[1]
        else:  # no `push` made this gradient's products: it becomes the last gradient here
            self.rows[2].copy_(grad)
            on_grad = self.pairs @ grad if self.count else None
        self._on_grad = None
        coefficients = self._coefficients(on_grad, gamma) if on_grad is not None else None
        slope = -gamma * grad.dot(grad)  # gᵀ(-H·g) = -γ gᵀg - cᵀ[Sᵀg; Yᵀg]
        if coefficients is not None:
            slope = slope - coefficients.dot(on_grad)
        restart = self.rho.eq(0).all() | (slope >= 0)
        self.rho.mul_(~restart)
        cautious = torch.linalg.vector_norm(grad, 1).reciprocal().clamp(max=1.0)
        step = torch.mul(grad, -torch.where(restart, cautious, gamma), out=self.rows[0])
        if coefficients is not None:
            step.addmv_(self.pairs.T, coefficients * ~restart, alpha=-1)
        return step, restart

    def _coefficients(self, on_grad: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """c with -H·g = -γ g − [S Y] c, per row of the pairs, from the gradient's products [Sᵀg; Yᵀg]."""
        size = len(self.rho)
        kept = min(self.count, size)
        order = torch.arange(self.count - kept, self.count, device=on_grad.device) % size  # oldest first
        keep = self.rho[order].ne(0).to(on_grad.dtype)  # a pair left out (ρ = 0) is made inert
        both = keep[:, None] * keep[None, :]
        products = self.sy[order][:, order] * both
        upper = products.triu() + torch.diag(1 - keep)  # R, sᵢᵀyⱼ for i ≤ j
        p, q = on_grad[order] * keep, on_grad[size + order] * keep
        v = torch.linalg.solve_triangular(upper, p[:, None], upper=True)  # R⁻¹Sᵀg
        middle = torch.diag(products.diagonal()) + gamma * self.yy[order][:, order] * both  # D + γYᵀY
        u = torch.linalg.solve_triangular(upper.T, middle @ v - gamma * q[:, None], upper=False)[:, 0]
        return torch.cat([self._ring(u, order), self._ring(-gamma * v[:, 0], order)])

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
