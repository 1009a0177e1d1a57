"""What a worker runs, wherever it runs (this process, a local pool or a Dask worker): the tasks, the
renderer a worker keeps, and each job's record. Both executors build on these."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pipeline.batch.config import Config
from pipeline.batch.manifest import Record, reason
from pipeline.batch.plan import ChainFrame, Job, Segment, relative_output
from pipeline.media.flow import FlowCache
from pipeline.render.renderer import Rendered, Renderer, device_fault, release_memory
from pipeline.render.style_cache import StyleCache
from pipeline.run.segment import run_segment
from pipeline.run.ticks import Tick


@dataclass(frozen=True)
class Batch:
    """Same-size single jobs that a worker optimises together (Adam, `optimize.batch`)."""

    jobs: tuple[Job, ...]


Task = Job | Segment | Batch  # what a worker runs: one job, a segment's frames in order, or a batch
Records = Callable[
    [list[Task], frozenset[Path], Path], Iterator[tuple[Job, Record]]
]  # (tasks, done, out dir) -> records as jobs finish
Live = Callable[[Tick], None]  # where workers' live progress goes


class RunLog(Protocol):
    """Where a run tells what it does (see pipeline.ui.progress.RunDisplay)."""

    def log(self, message: str, always: bool = False) -> None: ...

    def start(self, pending: int) -> None: ...

    def finished(self, record: Record) -> None: ...


def record_fields(job: Job, rel: str, key: str | None = None) -> dict:
    """The fields every record of `job`'s source and style shares (`key`: the record's own, if not the job's)."""
    return dict(output=rel, source=str(job.source.path), style=job.style.name, key=key or job.key)


def done_record(job: Job, rel: str, r: Rendered) -> Record:
    losses = {"loss": r.loss, "content": r.content, "style": r.style, "tv": r.tv}
    if r.temporal:
        losses["temporal"] = r.temporal
    trace = (
        [list(row) for row in r.trace] if job.source.kind == "image" else None
    )  # a clip's frames: a curve across frames
    return Record(
        **record_fields(job, rel),
        state="done",
        losses=losses,
        iterations=r.iterations,
        device=r.device,
        pid=os.getpid(),
        seconds=round(r.seconds, 3),
        style_hits=r.style_hits,
        style_misses=r.style_misses,
        style_seconds=round(r.style_seconds, 3),
        trace=trace,
        tile=r.tile_side or None,
        precision=r.precision,
        color=r.color,
        warning=r.note,
    )


class DeviceFault(Exception):
    """A device error other than running out of memory (an illegal address, ECC, a lost GPU): the device
    would fail every later job in milliseconds, so its worker ends and the others take the rest."""

    def __init__(self, job: Job, record: Record) -> None:
        super().__init__(record.error)
        self.job, self.record = job, record


def run_job(renderer: Renderer, job: Job, rel: str) -> Record:
    """Run one job; its failure is its record, except a device fault, which is raised (see DeviceFault)."""
    if job.error is not None:
        return Record(**record_fields(job, rel), state="failed", error=job.error)
    try:
        r = renderer.render(job.content, job.style.blend, job.output, style_scale=job.style.scale)
    except Exception as exc:  # one bad job never stops the run
        error = reason(exc, job.content, renderer.settings.size)
        if not device_fault(exc):
            return Record(**record_fields(job, rel), state="failed", error=error)
        fault = Record(
            **record_fields(job, rel),
            state="failed",
            device=str(renderer.device),
            error=f"{error} (device {renderer.device} failed: its worker ended, the other jobs run elsewhere)",
        )
        raise DeviceFault(job, fault) from None
    return done_record(job, rel, r)


def segment_records(
    renderer: Renderer, config: Config, segment: Segment, done: frozenset[Path], out_dir: Path
) -> Iterator[tuple[Job, Record]]:
    """Run a segment; a record for each of its own frames it rendered (cross-faded versions get none)."""

    def is_rendered(frame: ChainFrame) -> bool:
        return frame.path in done if frame.own else frame.path.is_file()

    flows = FlowCache(config.cache_dir / "flow")
    for result in run_segment(renderer, segment, config.video, flows, is_rendered):
        job = result.frame.job
        rel = relative_output(job, out_dir)
        if not result.frame.own and result.rendered is not None:
            continue  # a version to cross-fade; the frame's record comes with the cross-fade
        if result.rendered is None:
            yield job, Record(**record_fields(job, rel), state="failed", error=result.error)
        else:
            yield job, done_record(job, rel, result.rendered)


def batch_records(renderer: Renderer, jobs: list[Job], out_dir: Path) -> Iterator[tuple[Job, Record]]:
    """Run jobs as one batch; if the batch fails (a bad file, out of memory), each job alone, so it fails alone."""
    rels = [relative_output(j, out_dir) for j in jobs]
    try:
        rendered = renderer.render_batch(
            [j.content for j in jobs],
            [j.style.blend for j in jobs],
            [j.output for j in jobs],
            [j.style.scale for j in jobs],
        )
    except Exception:  # noqa: BLE001 - retried one by one below, where each job gets its own reason
        rendered = None
    if rendered is None:  # out of the handler: the failed batch's tensors are freed before the retries
        release_memory(renderer.device)
        for job, rel in zip(jobs, rels):
            yield job, run_job(renderer, job, rel)
        return
    for job, rel, r in zip(jobs, rels, rendered):
        yield job, done_record(job, rel, r)


def task_records(
    renderer: Renderer, config: Config, task: Task, done: frozenset[Path], out_dir: Path
) -> Iterator[tuple[Job, Record]]:
    if isinstance(task, Segment):
        yield from segment_records(renderer, config, task, done, out_dir)
    elif isinstance(task, Batch):
        yield from batch_records(renderer, [j for j in task.jobs if j.output not in done], out_dir)
    elif task.output not in done:  # (a task run again after its pool broke skips the jobs it finished)
        yield task, run_job(renderer, task, relative_output(task, out_dir))


def make_renderer(config: Config, device: str) -> Renderer:
    return Renderer(
        config.optimize.settings(),
        device=device,
        weights=config.model.weights,
        pooling=config.model.pooling,
        arch=config.model.arch,
        init_path=config.optimize.init_path,
        cache=StyleCache(config.cache_dir),
        keep_alpha=config.output.alpha == "keep",
        depth=config.output.depth,
        color=config.output.color,
        scene=config.color.scene(),
        full_size=config.output.size == "original",
        tiling=config.optimize.tile,
        precision=config.optimize.precision,
        memory_share=1 / config.workers_per_device,
    )


@dataclass
class WorkerState:
    """What a worker process keeps between its tasks: the renderer (the model loaded once, style targets
    warm) of the run it serves, and the device slot it holds, if any."""

    run: str  # a run id (local pool) or the config's digest (Dask)
    renderer: Renderer
    slot: int | None = None


_HELD: dict[str, WorkerState] = {}  # this process's WorkerState, under "state"


def worker_state(run: str, make: Callable[[], WorkerState]) -> WorkerState:
    """This process's WorkerState for `run`, made by `make` on its first task of the run."""
    held = _HELD.get("state")
    if held is None or held.run != run:
        _HELD["state"] = held = make()
    return held


def task_jobs(task: Task, done: frozenset[Path] = frozenset()) -> list[Job]:
    """The jobs whose records a task sends: a single job, a batch's, or a segment's own frames not in `done`."""
    if isinstance(task, Segment):
        return [f.job for f in task.frames if f.own and f.path not in done]
    return [task] if isinstance(task, Job) else list(task.jobs)
