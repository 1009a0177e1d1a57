"""The warp error of a stylised clip: how much it flickers.

Flow is computed on the *content* frames (DIS, at the stylised frames' size)
and occlusions are masked by the forward-backward check. For each pair of
consecutive frames the error is the mean squared difference, in [0, 1] RGB,
between stylised frame t+1 and stylised frame t warped onto it, over the
reliable pixels. The same figure for the content frames is the floor: what
real motion, lighting and flow error leave even without any flicker. Pairs
across a scene cut are left out.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from pipeline.core.optimize import resize
from pipeline.core.temporal import flow_tensor, is_cut, reliability, warp_errors
from pipeline.media.flow import FlowCache
from pipeline.media.images import read_image


def measure(
    contents: Sequence[Path], outputs: Sequence[Path], flows: FlowCache, method: str = "dis", seams: Sequence[int] = ()
) -> dict[str, float]:
    """Warp errors of a clip given its content frames and stylised frames, in order.

    `seams` are indices of frames that two segments cross-faded: pairs that
    touch them, or the frame just after them, count as seam pairs.
    Returns warp_error, warp_error_content, pairs and cuts, and, when there
    are seams, warp_error_seams and warp_error_inside.
    """
    seam_pairs = {p for s in seams for p in (s - 1, s)} if seams else set()
    styled, floor, at_seam = [], [], []
    cuts = 0
    previous: tuple[torch.Tensor, torch.Tensor] | None = None
    for i, (content_path, output_path) in enumerate(zip(contents, outputs)):
        out = read_image(output_path)
        content = resize(read_image(content_path), tuple(out.shape[-2:]))
        if previous is not None:
            back, fwd = (
                flow_tensor(f) for f in flows.get(contents[i - 1], content_path, tuple(out.shape[-2:]), method)
            )
            mask = reliability(back, fwd)
            if is_cut(previous[0], content, back, mask):
                cuts += 1
            else:
                styled += warp_errors([previous[1], out], [back], [mask])
                floor += warp_errors([previous[0], content], [back], [mask])
                at_seam.append(i - 1 in seam_pairs)
        previous = (content, out)
    metrics = {
        "warp_error": _mean(styled),
        "warp_error_content": _mean(floor),
        "pairs": float(len(styled)),
        "cuts": float(cuts),
    }
    if seam_pairs:
        metrics["warp_error_seams"] = _mean([e for e, s in zip(styled, at_seam) if s])
        metrics["warp_error_inside"] = _mean([e for e, s in zip(styled, at_seam) if not s])
    return metrics


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0
