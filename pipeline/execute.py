"""Run Jobs on a worker, record each result in the manifest, then reassemble finished videos."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import torch

from pipeline.cache import StyleCache
from pipeline.config import Config
from pipeline.manifest import Manifest, Record
from pipeline.plan import Job, Plan, VideoOut
from pipeline.render import Renderer
from pipeline.video import VideoError, assemble, extract_frames


@dataclass(frozen=True)
class Outcome:
    job: Union[Job, VideoOut]
    record: Record
    skipped: bool  # done by an earlier run with the same key


Log = Callable[[str], None]


class DeviceError(ValueError):
    """A requested device does not exist here."""


def pick_device(devices: str | list[str]) -> str:
    """The device to run on: the first listed, or for auto the first GPU, else the CPU."""
    if devices == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    device = devices[0] if isinstance(devices, list) else devices
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {device}: CUDA is not available on this machine")
    return device


def relative_output(job: Union[Job, VideoOut], out_dir: Path) -> str:
    return job.output.relative_to(out_dir).as_posix()


def is_done(job: Union[Job, VideoOut], manifest: Manifest, out_dir: Path) -> bool:
    """Done when the output exists and its manifest record has the same key."""
    return manifest.is_done(relative_output(job, out_dir), job.key, job.output.is_file())


def _failure(exc: BaseException, path: Path) -> str:
    """A one-line reason that names the file."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return message if str(path) in message else f"{path}: {message}"


def _run_one(renderer: Renderer, job: Job, rel: str) -> Record:
    base = dict(output=rel, source=str(job.source.path), style=job.style.name, key=job.key)
    if job.error is not None:
        return Record(**base, state="failed", error=job.error)
    try:
        if job.source.kind == "video" and not job.content.is_file():
            extract_frames(job.source.path, job.content.parent)  # once per video; later calls are no-ops
        r = renderer.render(job.content, job.style.blend, job.output)
    except torch.cuda.OutOfMemoryError:
        return Record(**base, state="failed", error=f"{job.content}: out of device memory at size {renderer.settings.size}")
    except Exception as exc:  # one bad job never stops the run
        return Record(**base, state="failed", error=_failure(exc, job.content))
    losses = {"loss": r.loss, "content": r.content, "style": r.style, "tv": r.tv}
    return Record(
        **base, state="done", losses=losses, iterations=r.iterations, device=r.device, seconds=round(r.seconds, 3),
        style_hits=r.style_hits, style_misses=r.style_misses, style_seconds=round(r.style_seconds, 3),
    )


def _reassemble(video: VideoOut, rel: str) -> Record:
    base = dict(output=rel, source=str(video.source.path), style=video.frames[0].style.name, key=video.key)
    start = time.perf_counter()
    try:
        assemble([j.output for j in video.frames], video.output, video.fps, audio_from=video.source.path)
    except VideoError as exc:
        return Record(**base, state="failed", error=str(exc))
    return Record(**base, state="done", iterations=len(video.frames), seconds=round(time.perf_counter() - start, 3))


def execute(config: Config, plan: Plan, log: Log) -> list[Outcome]:
    """Run every pending job, skipping done ones, saving the manifest after each; then
    reassemble each video whose frames are all done (also frames done by earlier runs).

    Raises DeviceError before any work when the configured device does not exist.
    """
    device = pick_device(config.devices)
    out_dir = config.output.dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.rglob(".*.part*"):  # temporaries of a killed run (we hold the lock)
        stale.unlink(missing_ok=True)
    manifest = Manifest(out_dir)
    done = [is_done(j, manifest, out_dir) for j in plan.jobs]
    pending = [j for j, d in zip(plan.jobs, done) if not d]
    outcomes = [Outcome(j, manifest.records[relative_output(j, out_dir)], skipped=True) for j, d in zip(plan.jobs, done) if d]
    if outcomes:
        log(f"{len(outcomes)} of {len(plan.jobs)} jobs already done")
    renderer = None
    for i, job in enumerate(pending, start=1):
        if renderer is None:
            renderer = Renderer(
                config.optimize.settings(), device=device, weights=config.model.weights,
                pooling=config.model.pooling, init_path=config.optimize.init_path, cache=StyleCache(config.cache_dir),
            )
        record = _run_one(renderer, job, relative_output(job, out_dir))
        manifest.put(record)
        manifest.save()
        outcomes.append(Outcome(job, record, skipped=False))
        detail = f"{record.seconds:.1f}s" if record.state == "done" else record.error
        log(f"[{i}/{len(pending)}] {record.state} {job.name} -> {record.output} ({detail})")
    for video in plan.videos:
        rel = relative_output(video, out_dir)
        if is_done(video, manifest, out_dir):
            outcomes.append(Outcome(video, manifest.records[rel], skipped=True))
        elif all(is_done(j, manifest, out_dir) for j in video.frames):
            record = _reassemble(video, rel)
            manifest.put(record)
            manifest.save()
            outcomes.append(Outcome(video, record, skipped=False))
            log(f"{record.state} {video.name} -> {rel} ({record.error or f'{len(video.frames)} frames at {video.fps} fps'})")
    return outcomes
