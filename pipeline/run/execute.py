"""One batch run: the pending jobs of a plan on an executor (local processes or Dask), each record into
the manifest as its job ends, then the steps after the frames (pipeline.run.finish)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import partial
from pathlib import Path

from pipeline.batch.config import Config
from pipeline.batch.manifest import Manifest
from pipeline.batch.plan import Clip, Job, Plan, Segment, VideoOut, is_done, relative_output
from pipeline.media.images import working_shape
from pipeline.run import local
from pipeline.run.devices import device_slots
from pipeline.run.finish import Outcome, extract_clips, finish_clips
from pipeline.run.tasks import Batch, Live, Records, RunLog, Task

SAVE_EVERY = 1.0  # seconds between manifest writes while jobs finish (and once more at the end)


def _executor(
    config: Config, slots: list[str], report: RunLog, needed: bool, live: Live | None
) -> AbstractContextManager[Records]:
    """What runs the tasks: processes here, or with executor dask the cluster, connected (and its
    workers checked) only when there is work; either sends its workers' Ticks to `live`."""
    if config.executor == "dask" and needed:
        from pipeline.run.cluster import session  # the only path that imports distributed

        return session(config, report, live)
    return nullcontext(partial(local.records, config, slots=slots, live=live))


def _batches(jobs: list[Job], size: int | None, batch: int) -> list[Task]:
    """Jobs whose images have one working shape grouped into batches of up to `batch`; the rest alone."""
    if batch == 1:
        return list(jobs)
    groups: dict[tuple[int, int] | None, list[Job]] = {}
    for job in jobs:
        shape = working_shape(job.content, size) if job.error is None else None
        groups.setdefault(shape, []).append(job)
    tasks: list[Task] = list(groups.pop(None, []))  # unreadable: each fails alone, with its reason
    for group in groups.values():
        for i in range(0, len(group), batch):
            chunk = tuple(group[i : i + batch])
            tasks.append(Batch(chunk) if len(chunk) > 1 else chunk[0])
    return tasks


def _tasks(plan: Plan, pending: list[Job], size: int | None, batch: int = 1) -> list[Task]:
    """Pending single jobs (same-size ones in batches of up to `batch`), and each segment with work
    left, longest first. Jobs that already carry an error (an undecodable video) fail as single jobs."""
    chained = plan.chained()
    waiting = {j.output for j in pending if j.error is None}
    singles = _batches([j for j in pending if j.output not in chained or j.error is not None], size, batch)

    def has_work(segment: Segment) -> bool:
        return any(f.job.output in waiting and (f.own or not f.path.is_file()) for f in segment.frames)

    segments = [s for s in plan.segments if has_work(s)]
    return sorted(segments, key=lambda s: -len(s.frames)) + singles


def _adopt(manifest: Manifest, plan: Plan, out_dir: Path, report: RunLog) -> None:
    """Give outputs made under the naming rule of an earlier version their names now (see Manifest.adopt),
    and remove the folders that this leaves empty."""

    def source(item: Job | Clip | VideoOut) -> str:
        return str((item.clip.source if isinstance(item, VideoOut) else item.source).path)

    moved = manifest.adopt(
        out_dir, [(relative_output(j, out_dir), source(j), j.key) for j in [*plan.jobs, *plan.clips, *plan.videos]]
    )
    if not moved:
        return
    manifest.save()
    for folder in sorted({(out_dir / rel).parent for rel in moved}, key=lambda p: -len(p.parts)):
        while folder != out_dir and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    report.log(
        f"renamed {len(moved)} outputs to the names this version gives them (see 'Output names' in docs/batch.md)"
    )


def execute(config: Config, plan: Plan, report: RunLog, live: Live | None = None) -> list[Outcome]:
    """Run every pending job, skipping done ones, saving the manifest after each; then the steps that need
    finished frames (see `_finish_clips`). With `live`, the workers (local or Dask) send it where they are
    in their current job (see pipeline.ui.progress.Ticker).

    Raises DeviceError before any work when the configured device does not exist (with executor dask,
    when no worker offers a device the config allows; see pipeline.run.cluster for its other errors).
    """
    slots = device_slots(config.devices, config.workers_per_device) if config.executor == "local" else []
    out_dir = config.output.dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.rglob(".*.part*"):  # temporaries of a killed run (we hold the lock)
        stale.unlink(missing_ok=True)
    manifest = Manifest(out_dir)
    _adopt(manifest, plan, out_dir, report)
    done = [is_done(j, manifest, out_dir) for j in plan.jobs]
    pending = [j for j, d in zip(plan.jobs, done) if not d]
    outcomes = [
        Outcome(j, manifest.records[relative_output(j, out_dir)], skipped=True) for j, d in zip(plan.jobs, done) if d
    ]
    if outcomes:
        report.log(f"{len(outcomes)} of {len(plan.jobs)} jobs already done")
    if pending and len(slots) > 1:
        report.log(f"{len(slots)} workers on {', '.join(sorted(set(slots)))}")
    rendered: set[Path] = set()
    with _executor(config, slots, report, bool(pending), live) as records:
        pending = extract_clips(pending, report)
        report.start(len(pending))
        finished = frozenset(j.output for j, d in zip(plan.jobs, done) if d)
        count = 0
        try:
            size = None if config.output.size == "original" else config.optimize.size
            for job, record in records(_tasks(plan, pending, size, config.optimize.batch), finished, out_dir):
                count += 1
                rendered.add(job.output)
                manifest.put(record)
                manifest.save(at_most_every=SAVE_EVERY)
                outcomes.append(Outcome(job, record, skipped=False))
                report.finished(record)
                detail = f"{record.seconds:.1f}s" if record.state == "done" else record.error
                report.log(f"[{count}/{len(pending)}] {record.state} {job.name} -> {record.output} ({detail})")
                if record.warning:
                    report.log(f"warning: {record.warning}", always=True)
        finally:
            manifest.save()

    return outcomes + finish_clips(config, plan, manifest, rendered, report)
