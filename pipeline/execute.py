"""Run Jobs on a worker, record each result in the manifest, then reassemble finished videos."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, replace
from multiprocessing import Manager
from pathlib import Path
from queue import Queue
from typing import Iterator, Protocol, Union

import torch
from joblib import Parallel, delayed

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


class Report(Protocol):
    """Where a run tells what it does (see pipeline.progress.RunReport)."""

    def log(self, message: str) -> None: ...

    def start(self, pending: int) -> None: ...

    def finished(self, record: Record) -> None: ...


class DeviceError(ValueError):
    """A requested device does not exist here."""


def resolve_devices(devices: str | list[str]) -> list[str]:
    """The devices to use: auto means every CUDA GPU, else the CPU; listed devices must exist."""
    if devices == "auto":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]
    listed = devices if isinstance(devices, list) else [devices]
    for device in listed:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise DeviceError(f"device {device}: CUDA is not available on this machine")
        if device.startswith("cuda:") and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise DeviceError(f"device {device}: this machine has {torch.cuda.device_count()} GPUs")
    return listed


def pick_device(devices: str | list[str]) -> str:
    """The first device of `resolve_devices`."""
    return resolve_devices(devices)[0]


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
        r = renderer.render(job.content, job.style.blend, job.output)
    except torch.cuda.OutOfMemoryError:
        return Record(**base, state="failed", error=f"{job.content}: out of device memory at size {renderer.settings.size}")
    except Exception as exc:  # one bad job never stops the run
        return Record(**base, state="failed", error=_failure(exc, job.content))
    losses = {"loss": r.loss, "content": r.content, "style": r.style, "tv": r.tv}
    return Record(
        **base, state="done", losses=losses, iterations=r.iterations, device=r.device, pid=os.getpid(),
        seconds=round(r.seconds, 3),
        style_hits=r.style_hits, style_misses=r.style_misses, style_seconds=round(r.style_seconds, 3),
    )


def _renderer(config: Config, device: str) -> Renderer:
    return Renderer(
        config.optimize.settings(), device=device, weights=config.model.weights,
        pooling=config.model.pooling, init_path=config.optimize.init_path, cache=StyleCache(config.cache_dir),
    )


# Per worker process: (run id, Renderer). A process loads the model once per run and keeps its style targets warm.
_WORKER: dict[str, tuple[str, Renderer]] = {}


def _worker_job(run_id: str, config: Config, slots: Queue, index: int, job: Job, rel: str) -> tuple[int, Record]:
    """Run one job in a pool process, claiming a device slot for life on its first job of a run."""
    held = _WORKER.get("state")
    if held is None or held[0] != run_id:
        device, threads = slots.get()
        torch.set_num_threads(threads)
        _WORKER["state"] = held = (run_id, _renderer(config, device))
    return index, _run_one(held[1], job, rel)


def _records(config: Config, pending: list[Job], out_dir: Path, slots: list[str]) -> Iterator[tuple[Job, Record]]:
    """(job, record) as each job finishes: in this process for one slot, else on a pool of processes
    that pull jobs as they free up, so a slow job never leaves another worker idle."""
    if not pending:
        return
    if len(slots) == 1:
        renderer = _renderer(config, slots[0])
        for job in pending:
            yield job, _run_one(renderer, job, relative_output(job, out_dir))
        return
    cpu_slots = slots.count("cpu")
    threads = max(1, torch.get_num_threads() // max(1, cpu_slots))
    with Manager() as manager:
        queue = manager.Queue()
        for device in slots:
            queue.put((device, threads if device == "cpu" else torch.get_num_threads()))
        run_id = uuid.uuid4().hex
        pool = Parallel(n_jobs=len(slots), backend="loky", return_as="generator_unordered", batch_size=1)
        tasks = (delayed(_worker_job)(run_id, config, queue, i, job, relative_output(job, out_dir))
                 for i, job in enumerate(pending))
        for index, record in pool(tasks):
            yield pending[index], record


def _extract_videos(pending: list[Job], report: Report) -> list[Job]:
    """Decode each video with pending frames once, here, before any worker needs them.

    A video that cannot be decoded fails its pending frame jobs with the reason.
    """
    failed: dict[Path, str] = {}
    frame_dirs = {j.source: j.content.parent for j in pending if j.source.kind == "video" and j.error is None}
    for source, frames_dir in frame_dirs.items():
        try:
            info = extract_frames(source.path, frames_dir)  # a no-op when already complete
        except VideoError as exc:
            failed[source.path] = str(exc)
            continue
        report.log(f"{source.relative}: {info.frames} frames at {info.fps} fps")
    return [replace(j, error=failed[j.source.path]) if j.source.path in failed else j for j in pending]


def _reassemble(video: VideoOut, rel: str) -> Record:
    base = dict(output=rel, source=str(video.source.path), style=video.frames[0].style.name, key=video.key)
    start = time.perf_counter()
    try:
        assemble([j.output for j in video.frames], video.output, video.fps, audio_from=video.source.path)
    except VideoError as exc:
        return Record(**base, state="failed", error=str(exc))
    return Record(**base, state="done", iterations=len(video.frames), seconds=round(time.perf_counter() - start, 3))


def execute(config: Config, plan: Plan, report: Report) -> list[Outcome]:
    """Run every pending job, skipping done ones, saving the manifest after each; then
    reassemble each video whose frames are all done (also frames done by earlier runs).

    Raises DeviceError before any work when the configured device does not exist.
    """
    slots = [d for d in resolve_devices(config.devices) for _ in range(config.workers_per_device)]
    out_dir = config.output.dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.rglob(".*.part*"):  # temporaries of a killed run (we hold the lock)
        stale.unlink(missing_ok=True)
    manifest = Manifest(out_dir)
    done = [is_done(j, manifest, out_dir) for j in plan.jobs]
    pending = [j for j, d in zip(plan.jobs, done) if not d]
    outcomes = [Outcome(j, manifest.records[relative_output(j, out_dir)], skipped=True) for j, d in zip(plan.jobs, done) if d]
    if outcomes:
        report.log(f"{len(outcomes)} of {len(plan.jobs)} jobs already done")
    if pending and len(slots) > 1:
        report.log(f"{len(slots)} workers on {', '.join(sorted(set(slots)))}")
    pending = _extract_videos(pending, report)
    report.start(len(pending))
    for i, (job, record) in enumerate(_records(config, pending, out_dir, slots), start=1):
        manifest.put(record)
        manifest.save()
        outcomes.append(Outcome(job, record, skipped=False))
        report.finished(record)
        detail = f"{record.seconds:.1f}s" if record.state == "done" else record.error
        report.log(f"[{i}/{len(pending)}] {record.state} {job.name} -> {record.output} ({detail})")
    for video in plan.videos:
        rel = relative_output(video, out_dir)
        if is_done(video, manifest, out_dir):
            outcomes.append(Outcome(video, manifest.records[rel], skipped=True))
        elif all(is_done(j, manifest, out_dir) for j in video.frames):
            record = _reassemble(video, rel)
            manifest.put(record)
            manifest.save()
            outcomes.append(Outcome(video, record, skipped=False))
            report.log(f"{record.state} {video.name} -> {rel} ({record.error or f'{len(video.frames)} frames at {video.fps} fps'})")
    return outcomes
