"""The steps after the frames: cross-fade the seams between segments, measure each clip's warp error, and
reassemble each video and animated image whose frames are all done (also by earlier runs)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from pipeline.batch.config import Config
from pipeline.batch.manifest import Manifest, Record, reason
from pipeline.batch.plan import AnimationOut, Clip, Job, Plan, Seam, VideoOut, is_done, relative_output
from pipeline.media import animation
from pipeline.media.flow import FlowCache
from pipeline.media.images import output_bits, read_image, write_image, write_plate_image
from pipeline.media.plates import PLATE_SUFFIXES
from pipeline.media.video import VideoError, VideoWarning, assemble, extract_frames
from pipeline.render.warp_error import measure
from pipeline.run.tasks import RunLog, record_fields


@dataclass(frozen=True)
class Outcome:
    job: Job | VideoOut | Clip
    record: Record
    skipped: bool  # done by an earlier run with the same key


def _timed(
    fields: dict,
    step: Callable[[], dict],
    failure: Callable[[Exception], str],
    errors: tuple[type[Exception], ...] = (Exception,),
) -> Record:
    """Run `step` and record it: done with its fields and seconds, or failed with `failure(exc)`."""
    start = time.perf_counter()
    try:
        extra = step()
    except errors as exc:
        return Record(**fields, state="failed", error=failure(exc))
    return Record(**fields, state="done", seconds=round(time.perf_counter() - start, 3), **extra)


def _stitch(seam: Seam, rel: str, config: Config) -> Record:
    """Cross-fade a frame's two segment versions into its output (plates in the view the optimiser saw)."""

    def step() -> dict:
        scene = config.color.scene()
        earlier, later = (read_image(p, scene=scene.of_outputs()) for p in (seam.earlier, seam.later))
        blend, output = torch.lerp(earlier, later, seam.weight), seam.job.output
        if output.suffix.lower() in PLATE_SUFFIXES:
            write_plate_image(blend, output, seam.job.content, config.output.depth, scene)
        else:
            write_image(blend, output, bits=output_bits(seam.earlier, output))  # the segments' own depth
        return {"iterations": 0}

    return _timed(
        record_fields(seam.job, rel),
        step,
        lambda exc: f"{seam.job.output}: cannot cross-fade its segments ({reason(exc, seam.earlier)})",
    )


def _measure(clip: Clip, config: Config, rel: str, seams: list[int]) -> Record:
    """The clip's warp error (see pipeline.render.warp_error) as its record's metrics."""

    def step() -> dict:
        flows = FlowCache(config.cache_dir / "flow")
        frames = clip.frames
        return {
            "metrics": measure([j.content for j in frames], [j.output for j in frames], flows, config.video.flow, seams)
        }

    return _timed(
        record_fields(clip.frames[0], rel, clip.key),
        step,
        lambda exc: f"{clip.output}: cannot measure the warp error ({exc})",
    )


_EXTRACT = {"video": extract_frames, "animation": animation.extract_frames}  # by Source.kind


def extract_clips(pending: list[Job], report: RunLog) -> list[Job]:
    """Decode each video and animated image with pending frames once, here, before any worker needs them.

    One that cannot be decoded fails its pending frame jobs with the reason.
    """
    failed: dict[Path, str] = {}
    frame_dirs = {j.source: j.content.parent for j in pending if j.source.kind in _EXTRACT and j.error is None}
    for source, frames_dir in frame_dirs.items():
        try:
            info = _EXTRACT[source.kind](source.path, frames_dir)  # a no-op when already complete
        except (VideoError, animation.AnimationError) as exc:
            failed[source.path] = str(exc)
            continue
        report.log(f"{source.relative}: {info.frames} frames at {info.fps} fps")
    return [replace(j, error=failed[j.source.path]) if j.source.path in failed else j for j in pending]


def _reassemble(video: VideoOut, rel: str) -> Record:
    """Write the video (or animated image) of a clip whose frames are all done."""
    frames = [j.output for j in video.clip.frames]

    def step() -> dict:
        with warnings.catch_warnings(record=True) as caught:  # a stream left out, timestamps that do not fit
            warnings.simplefilter("always", VideoWarning)
            if isinstance(video, AnimationOut):
                animation.assemble(frames, video.output, video.durations, video.loop)
            else:
                assemble(frames, video.output, video.fps, source=video.clip.source.path)
        warning = "; ".join(str(w.message) for w in caught if issubclass(w.category, VideoWarning)) or None
        return {"iterations": len(frames), "warning": warning}

    return _timed(
        record_fields(video.clip.frames[0], rel, video.key), step, str, (VideoError, animation.AnimationError)
    )


def _finish(
    item: Seam | Clip | VideoOut, manifest: Manifest, out_dir: Path, rerun: bool, make: Callable[[str], Record]
) -> Outcome:
    """Run a step that needs finished frames (cross-fade, measurement, reassembly) unless done already."""
    job = item.job if isinstance(item, Seam) else item
    rel = relative_output(job, out_dir)
    if not rerun and is_done(job, manifest, out_dir):
        return Outcome(job, manifest.records[rel], skipped=True)
    record = make(rel)
    manifest.put(record)
    manifest.save()
    return Outcome(job, record, skipped=False)


def finish_clips(config: Config, plan: Plan, manifest: Manifest, rendered: set[Path], report: RunLog) -> list[Outcome]:
    """The steps that need finished frames: cross-fade the seams, measure each clip's warp error and
    reassemble each video and animated image whose frames are all done (also by earlier runs)."""
    out_dir, outcomes = config.output.dir, []

    def frames_done(jobs) -> bool:
        return all(is_done(j, manifest, out_dir) for j in jobs)

    for seam in plan.seams:
        if seam.earlier.is_file() and seam.later.is_file():
            outcome = _finish(
                seam, manifest, out_dir, seam.job.output in rendered, lambda rel, s=seam: _stitch(s, rel, config)
            )
            outcomes.append(outcome)
            if not outcome.skipped:
                report.finished(outcome.record)
                rendered.add(seam.job.output)
    seam_frames = {s.job.output for s in plan.seams}
    for clip in plan.clips:
        if frames_done(clip.frames):
            seams = [i for i, j in enumerate(clip.frames) if j.output in seam_frames]
            outcome = _finish(
                clip,
                manifest,
                out_dir,
                bool(rendered & {j.output for j in clip.frames}),
                lambda rel, c=clip, s=seams: _measure(c, config, rel, s),
            )
            outcomes.append(outcome)
            if not outcome.skipped:
                report.log(_metrics_line(clip, outcome.record))
    for video in plan.videos:
        if frames_done(video.clip.frames):
            outcome = _finish(video, manifest, out_dir, False, lambda rel, v=video: _reassemble(v, rel))
            outcomes.append(outcome)
            if not outcome.skipped:
                r = outcome.record
                report.log(
                    f"{r.state} {video.name} -> {r.output} ({r.error or f'{len(video.clip.frames)} frames at {video.fps} fps'})"
                )
                if r.warning:
                    report.log(f"warning: {r.warning}", always=True)
    return outcomes


def _metrics_line(clip: Clip, record: Record) -> str:
    if record.state != "done" or not record.metrics:
        return f"{record.state} {clip.name}: {record.error}"
    m = record.metrics
    seams = (
        f", at seams {m['warp_error_seams']:.3g} (inside {m['warp_error_inside']:.3g})"
        if "warp_error_seams" in m
        else ""
    )
    cuts = f", {int(m['cuts'])} cuts" if m["cuts"] else ""
    return f"{clip.name}: warp error {m['warp_error']:.3g} (content {m['warp_error_content']:.3g}){seams}{cuts}"
