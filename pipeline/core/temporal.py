"""Temporal consistency for video stylisation, after Ruder, Dosovitskiy & Brox 2016.

Pure tensor code on any device; files and flow estimation live in `pipeline.media.flow`.

Conventions:

* images are (N, C, H, W) float in [0, 1];
* flows are (N, 2, H, W) float in pixels, channel 0 = x, channel 1 = y;
* a *back* flow of frame b locates b's pixels in the earlier frame a:
  ``b(p) ≈ a(p + back(p))``, so ``warp(a, back)`` is a as seen from b; the
  *fwd* flow locates a's pixels in b;
* masks are (N, 1, H, W) float in {0, 1} (or [0, 1] weights), 1 where a warped
  pixel can be trusted; they broadcast over channels.

Losses return per-batch-element tensors of shape (N,); metrics return floats.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def flow_tensor(flow: np.ndarray) -> torch.Tensor:
    """An (H, W, 2) flow array as a (1, 2, H, W) float32 tensor."""
    return torch.as_tensor(flow, dtype=torch.float32).permute(2, 0, 1).unsqueeze(0).contiguous()


def _positions(flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y of p + flow(p), each (N, H, W), in pixels."""
    _, _, h, w = flow.shape
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype)
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype)
    return flow[:, 0] + xs, flow[:, 1] + ys[:, None]


def warp(image: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """`image` sampled at p + flow(p), borders repeated. A flow batch of 1 serves any image batch.

    `mode` "bicubic" keeps detail that bilinear sampling would blur away when a
    video chain warps frame after frame (clamp the result: it can overshoot).
    """
    n, _, h, w = image.shape
    x, y = _positions(flow.float())
    grid = torch.stack((2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1), dim=-1)  # align_corners=True
    grid = grid.to(image.dtype).expand(n, -1, -1, -1)
    return F.grid_sample(image, grid, mode=mode, padding_mode="border", align_corners=True)


def _forward_gradient_sq(u: torch.Tensor) -> torch.Tensor:
    """|∇u|² of (N, 1, H, W) u by forward differences, zero at the last row and column."""
    dx = F.pad(u[..., :, 1:] - u[..., :, :-1], (0, 1))
    dy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
    return dx.pow(2) + dy.pow(2)


def reliability(back: torch.Tensor, fwd: torch.Tensor) -> torch.Tensor:
    """Ruder et al.'s mask for frame b, (N, 1, H, W) in {0, 1}: 0 where back(p) cannot be trusted.

    With ŵ = back(p) and w̃ = fwd(p + ŵ), a pixel is dropped when
    * disoccluded: |w̃ + ŵ|² > 0.01 (|w̃|² + |ŵ|²) + 0.5 (the flows do not undo each other);
    * on a motion boundary: |∇ŵ_x|² + |∇ŵ_y|² > 0.01 |ŵ|² + 0.002;
    * out of frame: p + ŵ lies outside [0, W-1] x [0, H-1].
    """
    back, fwd = back.float(), fwd.float()
    _, _, h, w = back.shape
    back_sq = back.pow(2).sum(1, keepdim=True)
    fwd_at = warp(fwd, back)
    fwd_sq = fwd_at.pow(2).sum(1, keepdim=True)
    disoccluded = (fwd_at + back).pow(2).sum(1, keepdim=True) > 0.01 * (fwd_sq + back_sq) + 0.5
    boundary = _forward_gradient_sq(back[:, :1]) + _forward_gradient_sq(back[:, 1:]) > 0.01 * back_sq + 0.002
    x, y = _positions(back)
    outside = ((x < 0) | (x > w - 1) | (y < 0) | (y > h - 1)).unsqueeze(1)
    return (~(disoccluded | boundary | outside)).float()


def long_term_masks(masks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Ruder et al.'s eq. 8: masks ordered nearest frame first (t-1, t-2, t-4, …) become
    max(c_j - Σ nearer c_k, 0), so each pixel is held by the nearest frame that sees it."""
    out, nearer = [], 0
    for mask in masks:
        out.append((mask - nearer).clamp(min=0))
        nearer = nearer + mask
    return out


def temporal_loss(image: torch.Tensor, held: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Σ over (warped previous, mask) pairs of the mean over C, H, W of mask · (image − warped)²; shape (N,)."""
    image = image.float()
    total = image.new_zeros(image.shape[0])
    for warped, mask in held:
        total = total + (mask.float() * (image - warped.float()).pow(2)).flatten(1).mean(1)
    return total


def _masked_error(previous: torch.Tensor, current: torch.Tensor, back: torch.Tensor, mask: torch.Tensor) -> float:
    """Σ mask · (current − warp(previous, back))² / (C · Σ mask); 0.0 for an empty mask."""
    mask = mask.float()
    held = mask.sum().item()
    if held == 0:
        return 0.0
    diff = current.float() - warp(previous.float(), back)
    return (mask * diff.pow(2)).sum().item() / (current.shape[1] * held)


def warp_errors(
    frames: Sequence[torch.Tensor], backs: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]
) -> list[float]:
    """Warp error of each consecutive pair: the masked mean squared RGB difference between
    frames[i+1] and frames[i] warped by backs[i] (frame i+1 located in frame i)."""
    return [_masked_error(frames[i], frames[i + 1], backs[i], masks[i]) for i in range(len(frames) - 1)]


def is_cut(
    previous: torch.Tensor,
    current: torch.Tensor,
    back: torch.Tensor,
    mask: torch.Tensor,
    min_reliable: float = 0.2,
    max_error: float = 0.01,
) -> bool:
    """Whether two *content* frames straddle a scene cut: too few pixels have a reliable flow
    (fraction of `mask` below `min_reliable`), or the reliable ones do not match after warping
    (masked warp error, as in `warp_errors`, above `max_error`).

    The defaults are set on DIS flow (`pipeline.media.flow`); how they separate real footage from cuts
    was measured: docs/video.md, Scene cuts.
    """
    if mask.float().mean().item() < min_reliable:
        return True
    return _masked_error(previous, current, back, mask) > max_error
