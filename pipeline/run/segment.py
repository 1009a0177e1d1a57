"""One Segment of a clip, frame after frame, each from the one before (Ruder et al. 2016).

A frame after the first of a shot starts from the previous stylised frame
warped by the optical flow of the content frames, runs one scale with
`video.after_first` iterations, and adds the temporal loss towards the
warped earlier frames where the flow is reliable. A scene cut, or a frame
that failed, starts a new shot: a full coarse-to-fine render from scratch.

Flow is computed on a background thread (OpenCV releases the GIL) a few
frames ahead of the optimiser, and cached on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from pipeline.batch.config import VideoConfig
from pipeline.batch.manifest import reason
from pipeline.batch.plan import ChainFrame, Segment
from pipeline.core.temporal import flow_tensor, is_cut, long_term_masks, reliability, warp
from pipeline.media.flow import FlowCache
from pipeline.media.images import read_image
from pipeline.render.renderer import Follow, Rendered, Renderer

LOOKAHEAD = 3  # frames whose flow is computed ahead of the optimiser


@dataclass(frozen=True)
class FrameResult:
    """A frame this segment rendered (or failed); `error` is a one-line reason."""

    frame: ChainFrame
    rendered: Rendered | None
    error: str | None = None


class _Flows:
    """Back/forward flows between frames of the segment at the working shape, fetched ahead on a thread."""

    def __init__(
        self, segment: Segment, cache: FlowCache, method: str, offsets: tuple[int, ...], pool: ThreadPoolExecutor
    ) -> None:
        self.frames = segment.frames
        self.cache, self.method, self.offsets, self.pool = cache, method, offsets, pool
        self.futures: dict[tuple[int, int], Future] = {}
        self.shape: tuple[int, int] | None = None

    def prefetch(self, index: int) -> None:
        """Queue the flows frame `index` (and the next LOOKAHEAD frames) will need."""
        for i in range(index, min(len(self.frames), index + LOOKAHEAD + 1)):
            for j in self.offsets:
                if i - j >= 0 and (i, j) not in self.futures:
                    a, b = self.frames[i - j].job.content, self.frames[i].job.content
                    self.futures[(i, j)] = self.pool.submit(self.cache.get, a, b, self.shape, self.method)

    def forget(self, index: int) -> None:
        """Drop flows up to frame `index` that were fetched but not used (shot starts)."""
        for key in [k for k in self.futures if k[0] <= index]:
            del self.futures[key]

    def get(self, index: int, offset: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(back, fwd) between frame index - offset and frame index, as tensors on `device`."""
        self.prefetch(index)
        back, fwd = self.futures.pop((index, offset)).result()
        return flow_tensor(back).to(device), flow_tensor(fwd).to(device)


def run_segment(
    renderer: Renderer, segment: Segment, video: VideoConfig, flows: FlowCache, done: Callable[[ChainFrame], bool]
) -> Iterator[FrameResult]:
    """Render the segment's frames that are not `done`, in order; done frames are read back when a later one needs them."""
    frames = segment.frames
    offsets = (1, *sorted(set(video.long_term)))
    needed = [any(not done(f) for f in frames[i + 1 : i + 1 + offsets[-1]]) for i in range(len(frames))]
    stylised: dict[int, torch.Tensor] = {}
    previous_content: torch.Tensor | None = None
    shot = 0  # index where the current shot began
    iterations = video.after_first(renderer.settings.iterations)
    with ThreadPoolExecutor(1, thread_name_prefix="flow") as pool:
        fetch = _Flows(segment, flows, video.flow, offsets, pool)
        for i, frame in enumerate(frames):
            is_done = done(frame)
            if is_done and not needed[i]:
                previous_content = None
                continue
            try:
                content = renderer.read_content(frame.job.content)
                if fetch.shape is None:
                    fetch.shape = tuple(content.shape[-2:])
                    fetch.prefetch(i + 1)
                cut = False
                if i > shot and i - 1 in stylised:
                    back, fwd = fetch.get(i, 1, content.device)
                    mask = reliability(back, fwd)
                    if previous_content is None:
                        previous_content = renderer.read_content(frames[i - 1].job.content)
                    cut = is_cut(previous_content, content, back, mask)
                if cut or i - 1 not in stylised:
                    shot = i
                if is_done:
                    stylised[i] = read_image(frame.path, renderer.read_size, renderer.scene.of_outputs()).to(
                        content.device
                    )
                else:
                    held = (back, mask) if i > shot else None
                    follow = held and _follow(
                        fetch, stylised, i, shot, offsets, held, iterations, video.temporal_weight
                    )
                    rendered = _render_frame(renderer, frame, follow, content)
                    stylised[i] = rendered.image
                    yield FrameResult(frame, rendered)
            except Exception as exc:  # this frame fails; the next one starts a new shot
                stylised.pop(i, None)
                previous_content = None
                if not is_done:
                    yield FrameResult(frame, None, error=reason(exc, frame.job.content, renderer.settings.size))
                continue
            previous_content = content
            fetch.forget(i)
            for old in [k for k in stylised if k <= i - offsets[-1]]:
                del stylised[old]


def _render_frame(renderer: Renderer, frame: ChainFrame, follow: Follow | None, content: torch.Tensor) -> Rendered:
    """One frame of the chain, following the frames before it when `follow` is given."""
    job = frame.job
    return renderer.render(
        job.content, job.style.blend, frame.path, follow=follow, content=content, style_scale=job.style.scale
    )


def _follow(
    fetch: _Flows,
    stylised: dict[int, torch.Tensor],
    i: int,
    shot: int,
    offsets: tuple[int, ...],
    nearest: tuple[torch.Tensor, torch.Tensor],
    iterations: int,
    weight: float,
) -> Follow:
    """Warped init and held frames for frame i: t-1 always, longer offsets within the shot."""
    back, mask = nearest
    warped = [warp(stylised[i - 1], back, "bicubic").clamp_(0, 1)]
    masks = [mask]
    for j in offsets[1:]:
        if i - j >= shot and i - j in stylised:
            back_j, fwd_j = fetch.get(i, j, back.device)
            warped.append(warp(stylised[i - j], back_j, "bicubic").clamp_(0, 1))
            masks.append(reliability(back_j, fwd_j))
    held = list(zip(warped, long_term_masks(masks)))
    return Follow(init=warped[0], held=held, iterations=iterations, temporal_weight=weight)
