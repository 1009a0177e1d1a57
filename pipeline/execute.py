"""Run Jobs on a worker and record each result in the manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pipeline.cache import StyleCache
from pipeline.config import Config
from pipeline.manifest import Manifest, Record
from pipeline.plan import Job
from pipeline.render import Renderer


@dataclass(frozen=True)
class Outcome:
    job: Job
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


def relative_output(job: Job, out_dir: Path) -> str:
    return job.output.relative_to(out_dir).as_posix()


def split_done(jobs: list[Job], manifest: Manifest, out_dir: Path) -> tuple[list[Job], list[Job]]:
    """(pending, done): a job is done when its output exists and its record has the same key."""
    pending, done = [], []
    for job in jobs:
        is_done = manifest.is_done(relative_output(job, out_dir), job.key, job.output.is_file())
        (done if is_done else pending).append(job)
    return pending, done


def _run_one(renderer: Renderer, job: Job, rel: str) -> Record:
    base = dict(output=rel, source=str(job.source.path), style=job.style.name, key=job.key)
    if job.source.kind != "image":
        return Record(**base, state="failed", error=f"{job.source.path}: {job.source.kind} input is not supported yet")
    try:
        r = renderer.render(job.source.path, job.style.blend, job.output)
    except torch.cuda.OutOfMemoryError:
        return Record(**base, state="failed", error=f"{job.source.path}: out of device memory at size {renderer.settings.size}")
    except Exception as exc:  # one bad job never stops the run
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if str(job.source.path) not in message:
            message = f"{job.source.path}: {message}"
        return Record(**base, state="failed", error=message)
    losses = {"loss": r.loss, "content": r.content, "style": r.style, "tv": r.tv}
    return Record(
        **base, state="done", losses=losses, iterations=r.iterations, device=r.device, seconds=round(r.seconds, 3),
        style_hits=r.style_hits, style_misses=r.style_misses, style_seconds=round(r.style_seconds, 3),
    )


def execute(config: Config, jobs: list[Job], log: Log) -> list[Outcome]:
    """Run every pending job, skipping done ones; save the manifest after each job.

    Raises DeviceError before any work when the configured device does not exist.
    """
    device = pick_device(config.devices)
    out_dir = config.output.dir
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out_dir)
    pending, done = split_done(jobs, manifest, out_dir)
    outcomes = [Outcome(j, manifest.records[relative_output(j, out_dir)], skipped=True) for j in done]
    if done:
        log(f"{len(done)} of {len(jobs)} jobs already done")
    if not pending:
        return outcomes
    renderer = Renderer(
        config.optimize.settings(), device=device, weights=config.model.weights,
        pooling=config.model.pooling, init_path=config.optimize.init_path, cache=StyleCache(config.cache_dir),
    )
    for i, job in enumerate(pending, start=1):
        record = _run_one(renderer, job, relative_output(job, out_dir))
        manifest.put(record)
        manifest.save()
        outcomes.append(Outcome(job, record, skipped=False))
        detail = f"{record.seconds:.1f}s" if record.state == "done" else record.error
        log(f"[{i}/{len(pending)}] {record.state} {job.name} -> {record.output} ({detail})")
    return outcomes
