"""Run Jobs on a worker, record each result in the manifest, then reassemble finished videos and animations."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, replace
from functools import partial
from multiprocessing import Manager
from multiprocessing.managers import SyncManager
from pathlib import Path
from queue import Queue
from typing import Protocol

import torch
from joblib import Parallel, delayed

from pipeline import animation
from pipeline.cache import StyleCache
from pipeline.chain import run_segment
from pipeline.config import Config
from pipeline.consistency import measure
from pipeline.flow import FlowCache
from pipeline.images import read_image, working_shape, write_image
from pipeline.manifest import Manifest, Record, reason
from pipeline.plan import AnimationOut, ChainFrame, Clip, Job, Plan, Seam, Segment, VideoOut
from pipeline.progress import Tick, Ticker
from pipeline.render import Rendered, Renderer, device_fault, release_memory
from pipeline.video import VideoError, VideoWarning, assemble, extract_frames


@dataclass(frozen=True)
class Batch:
    """Same-size single jobs that a worker optimises together (Adam, `optimize.batch`)."""

    jobs: tuple[Job, ...]


Task = Job | Segment | Batch  # what a worker runs: one job, a segment's frames in order, or a batch
Records = Callable[
    [list[Task], frozenset[Path], Path], Iterator[tuple[Job, Record]]
]  # (tasks, done, out dir) -> records as jobs finish
Live = Callable[[Tick], None]  # where workers' live progress goes


@dataclass(frozen=True)
class Outcome:
    job: Job | VideoOut | Clip
    record: Record
    skipped: bool  # done by an earlier run with the same key


class Report(Protocol):
    """Where a run tells what it does (see pipeline.progress.RunReport)."""

    def log(self, message: str, always: bool = False) -> None: ...

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


def relative_output(job: Job | VideoOut | Clip, out_dir: Path) -> str:
    return job.output.relative_to(out_dir).as_posix()


def is_done(job: Job | VideoOut | Clip, manifest: Manifest, out_dir: Path) -> bool:
    """Done when the output exists and its manifest record has the same key."""
    return manifest.is_done(relative_output(job, out_dir), job.key, job.output.exists())


def _base(job: Job, rel: str, key: str | None = None) -> dict:
    """The fields every record of `job`'s source and style shares (`key`: the record's own, if not the job's)."""
    return dict(output=rel, source=str(job.source.path), style=job.style.name, key=key or job.key)


def _record(job: Job, rel: str, r: Rendered) -> Record:
    losses = {"loss": r.loss, "content": r.content, "style": r.style, "tv": r.tv}
    if r.temporal:
        losses["temporal"] = r.temporal
    trace = (
        [list(row) for row in r.trace] if job.source.kind == "image" else None
    )  # a clip's frames: a curve across frames
    return Record(
        **_base(job, rel),
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
        tile=r.tile or None,
        precision=r.precision,
        warning=r.note,
    )


class DeviceFault(Exception):
    """A device error other than running out of memory (an illegal address, ECC, a lost GPU): the device
    would fail every later job in milliseconds, so its worker ends and the others take the rest."""

    def __init__(self, job: Job, record: Record) -> None:
        super().__init__(record.error)
        self.job, self.record = job, record


def _run_one(renderer: Renderer, job: Job, rel: str) -> Record:
    """Run one job; its failure is its record, except a device fault, which is raised (see DeviceFault)."""
    if job.error is not None:
        return Record(**_base(job, rel), state="failed", error=job.error)
    try:
        r = renderer.render(job.content, job.style.blend, job.output, style_scale=job.style.scale)
    except Exception as exc:  # one bad job never stops the run
        error = reason(exc, job.content, renderer.settings.size)
        if not device_fault(exc):
            return Record(**_base(job, rel), state="failed", error=error)
        fault = Record(
            **_base(job, rel),
            state="failed",
            device=str(renderer.device),
            error=f"{error} (device {renderer.device} failed: its worker ended, the other jobs run elsewhere)",
        )
        raise DeviceFault(job, fault) from None
    return _record(job, rel, r)


def _segment_records(
    renderer: Renderer,
    config: Config,
    segment: Segment,
    done: frozenset[Path],
    out_dir: Path,
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
            yield job, Record(**_base(job, rel), state="failed", error=result.error)
        else:
            yield job, _record(job, rel, result.rendered)


def _batch_records(renderer: Renderer, jobs: list[Job], out_dir: Path) -> Iterator[tuple[Job, Record]]:
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
            yield job, _run_one(renderer, job, rel)
        return
    for job, rel, r in zip(jobs, rels, rendered):
        yield job, _record(job, rel, r)


def _run_task(
    renderer: Renderer, config: Config, task: Task, done: frozenset[Path], out_dir: Path
) -> Iterator[tuple[Job, Record]]:
    if isinstance(task, Segment):
        yield from _segment_records(renderer, config, task, done, out_dir)
    elif isinstance(task, Batch):
        yield from _batch_records(renderer, [j for j in task.jobs if j.output not in done], out_dir)
    elif task.output not in done:  # (a task run again after its pool broke skips the jobs it finished)
        yield task, _run_one(renderer, task, relative_output(task, out_dir))


def _renderer(config: Config, device: str) -> Renderer:
    return Renderer(
        config.optimize.settings(),
        device=device,
        weights=config.model.weights,
        pooling=config.model.pooling,
        arch=config.model.arch,
        init_path=config.optimize.init_path,
        cache=StyleCache(config.cache_dir),
        keep_alpha=config.output.alpha == "keep",
        full_size=config.output.size == "original",
        tile=config.optimize.tile,
        precision=config.optimize.precision,
        memory_share=1 / config.workers_per_device,
    )


def worker_threads(slots: list[str], device: str) -> int:
    """torch threads for a worker on `device` among `slots`: the CPU workers split the cores; a GPU worker,
    which needs them only to read, write and feed its device, takes an equal share of them."""
    cores = torch.get_num_threads()
    return max(1, cores // max(1, slots.count("cpu") if device == "cpu" else len(slots)))


SAVE_EVERY = 1.0  # seconds between manifest writes while jobs finish (and once more at the end)
_END = ("end", None)  # what the pool's driver thread sends after the last record

# Per worker process: (run id, Renderer). A process loads the model once per run and keeps its style targets warm.
_WORKER: dict[str, tuple[str, Renderer, int]] = {}  # this pool process's run, renderer and slot


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Slots:
    """The pool's device slots, each held by one worker process for life. loky replaces a worker whose
    memory grew (and one that exits for any other reason); its replacement takes over the dead one's slot."""

    WAIT = 120.0  # seconds a new worker waits for its predecessor to exit

    def __init__(self, slots: list[tuple[str, int]], manager: SyncManager) -> None:
        self.slots = slots  # (device, torch threads)
        self.holders = manager.dict()  # slot index -> pid
        self.lock = manager.Lock()

    def claim(self) -> tuple[int, str, int]:
        """(index, device, threads) of a slot no live worker holds, now or as soon as one exits."""
        deadline = time.monotonic() + self.WAIT
        while True:
            with self.lock:
                for i, slot in enumerate(self.slots):
                    holder = self.holders.get(i)
                    if holder is None or not _alive(holder):
                        self.holders[i] = os.getpid()
                        return (i, *slot)
            if time.monotonic() > deadline:
                raise RuntimeError(f"no device slot came free in {self.WAIT:.0f} s (held by {dict(self.holders)})")
            time.sleep(0.05)


@dataclass(frozen=True)
class _Fault:
    """A worker's word that its device slot failed (see DeviceFault): later pools go without it."""

    slot: int


@dataclass(frozen=True)
class _Mark:
    """A worker's word that it started or ended task `index` of its pool (what a dead worker leaves unended)."""

    index: int
    ended: bool


def _worker_task(
    run_id: str,
    config: Config,
    slots: Slots,
    results: Queue,
    index: int,
    task: Task,
    done: frozenset[Path],
    out_dir: Path,
    live: bool,
) -> None:
    """Run one task in a pool process, claiming a device slot for life on its first task of a run.

    Each record goes to `results` as soon as its job ends, so a long segment's frames reach the
    manifest one by one; with `live`, Ticks of the job running go there too.
    """
    results.put(_Mark(index, ended=False))
    held = _WORKER.get("state")
    if held is None or held[0] != run_id:
        slot, device, threads = slots.claim()
        torch.set_num_threads(threads)
        _WORKER["state"] = held = (run_id, _renderer(config, device), slot)
        if live:
            held[1].on_progress = Ticker(results.put, device, out_dir)
    try:
        for item in _run_task(held[1], config, task, done, out_dir):
            results.put(item)
    except DeviceFault as fault:
        results.put((fault.job, fault.record))
        results.put(_Fault(held[2]))
        os._exit(70)  # this breaks the pool: its tasks that had not ended run on a fresh one, without this slot
    results.put(_Mark(index, ended=True))


def task_jobs(task: Task, done: frozenset[Path] = frozenset()) -> list[Job]:
    """The jobs whose records a task sends: a single job, a batch's, or a segment's own frames not in `done`."""
    if isinstance(task, Segment):
        return [f.job for f in task.frames if f.own and f.path not in done]
    return [task] if isinstance(task, Job) else list(task.jobs)


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Ctrl-C held back in this thread while inside (and in the processes it starts): a Ctrl-C is this
    process's to handle, which then ends its helpers; it arrives on the way out."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _pool(
    config: Config,
    tasks: dict[int, Task],
    done: set[Path],
    out_dir: Path,
    slots: list[str],
    manager: SyncManager,
    live: Live | None,
    ended: dict[int, bool],
    faulted: set[int],
) -> Iterator[tuple[Job, Record]]:
    """One pool of processes over `tasks`, skipping the jobs in `done`: records as jobs finish (their
    outputs added to `done`), workers' Ticks to `live`, and in `ended` each task a worker started (True
    once it ended). Returns the error that broke the pool, if one did."""
    slot_table = Slots([(d, worker_threads(slots, d)) for d in slots], manager)
    results = manager.Queue()
    run_id = uuid.uuid4().hex  # workers of an earlier, broken pool claim a slot anew
    pool = Parallel(
        n_jobs=len(slots), backend="loky", return_as="generator_unordered", batch_size=1, max_nbytes=None
    )  # tasks are small: nothing to memory-map
    skip = frozenset(done)
    with _sigint_blocked():  # the pool's helper processes start here
        calls = pool(
            delayed(_worker_task)(run_id, config, slot_table, results, i, t, skip, out_dir, live is not None)
            for i, t in tasks.items()
        )
    failure: list[BaseException] = []

    def drive() -> None:  # runs the pool; a worker's crash is returned below, from this thread
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # the processes started here leave Ctrl-C to us
        try:
            for _ in calls:
                pass
        except BaseException as exc:  # noqa: BLE001
            failure.append(exc)
        finally:
            with suppress(OSError, EOFError):  # the manager is gone when Ctrl-C reached it too
                results.put(_END)

    runner = threading.Thread(target=drive, name="pool", daemon=True)
    runner.start()
    while (item := results.get()) != _END:
        if isinstance(item, Tick):
            live(item)
        elif isinstance(item, _Mark):
            ended[item.index] = item.ended
        elif isinstance(item, _Fault):
            faulted.add(item.slot)
        else:
            done.add(item[0].output)
            yield item
    runner.join()
    return failure[0] if failure else None


def _records(
    config: Config,
    tasks: list[Task],
    done: frozenset[Path],
    out_dir: Path,
    slots: list[str],
    live: Live | None = None,
) -> Iterator[tuple[Job, Record]]:
    """(job, record) as jobs finish: in this process for one slot, else on a pool of processes
    that pull tasks as they free up, so a slow task never leaves another worker idle. Workers'
    Ticks go to `live`.

    A worker process that dies breaks its pool: the tasks that had not ended run again on a fresh
    pool (skipping the jobs they finished), and a task that was running when a pool broke twice fails."""
    if not tasks:
        return
    if len(slots) == 1:
        yield from _in_process(config, tasks, done, out_dir, slots[0], live)
        return
    todo, strikes, finished = dict(enumerate(tasks)), dict.fromkeys(range(len(tasks)), 0), set(done)
    with _sigint_blocked():
        manager = Manager()  # its process leaves Ctrl-C to this one, which shuts it down
    with manager:
        while todo:
            ended: dict[int, bool] = {}
            faulted: set[int] = set()
            broken = yield from _pool(config, todo, finished, out_dir, slots, manager, live, ended, faulted)
            if broken is None:
                return
            if not isinstance(broken, BrokenProcessPool) or not ended:  # not a worker's death, or none to blame
                raise broken
            yield from _strike_out(todo, strikes, ended, finished, out_dir)
            slots = [d for i, d in enumerate(slots) if i not in faulted]
            if len(slots) < 2 and todo:  # joblib would run one slot's "pool" in this very process
                rest = list(todo.values())
                yield from (
                    _in_process(config, rest, frozenset(finished), out_dir, slots[0], live)
                    if slots
                    else _not_run(rest, finished, out_dir, "every device of this run failed")
                )
                return


def _strike_out(
    todo: dict[int, Task],
    strikes: dict[int, int],
    ended: dict[int, bool],
    finished: set[Path],
    out_dir: Path,
) -> Iterator[tuple[Job, Record]]:
    """After a pool broke: a strike for each task it was running; those that ended, or were running when a
    pool broke twice, leave `todo` (the latter's unfinished jobs fail)."""
    for index, over in ended.items():
        strikes[index] += not over
        if over or strikes[index] == 2:
            task = todo.pop(index)
            for job in task_jobs(task) if not over else ():
                if job.output not in finished:
                    error = (
                        f"{job.content}: worker process died while running it, twice (killed, crashed or out of memory)"
                    )
                    yield job, Record(**_base(job, relative_output(job, out_dir)), state="failed", error=error)


def _in_process(
    config: Config,
    tasks: list[Task],
    done: frozenset[Path],
    out_dir: Path,
    device: str,
    live: Live | None,
) -> Iterator[tuple[Job, Record]]:
    """The tasks run here, on the one device; after a device fault the rest fail without running."""
    renderer = _renderer(config, device)
    if live is not None:
        renderer.on_progress = Ticker(live, device, out_dir)
    for i, task in enumerate(tasks):
        try:
            yield from _run_task(renderer, config, task, done, out_dir)
        except DeviceFault as fault:
            yield fault.job, fault.record
            yield from _not_run(
                tasks[i:], done | {fault.job.output}, out_dir, f"device {device} failed on {fault.job.content}"
            )
            return


def _not_run(
    tasks: list[Task], done: frozenset[Path] | set[Path], out_dir: Path, why: str
) -> Iterator[tuple[Job, Record]]:
    """A failed record, saying `why`, for each job of `tasks` not in `done`."""
    for task in tasks:
        for job in task_jobs(task):
            if job.output not in done:
                error = f"{job.content}: not run: {why}"
                yield job, Record(**_base(job, relative_output(job, out_dir)), state="failed", error=error)


def _executor(
    config: Config,
    slots: list[str],
    report: Report,
    needed: bool,
    live: Live | None,
) -> AbstractContextManager[Records]:
    """What runs the tasks: processes here, or with executor dask the cluster, connected (and its
    workers checked) only when there is work; either sends its workers' Ticks to `live`."""
    if config.executor == "dask" and needed:
        from pipeline.cluster import session  # the only path that imports distributed

        return session(config, report, live)
    return nullcontext(partial(_records, config, slots=slots, live=live))


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


def _stitch(seam: Seam, rel: str) -> Record:
    """Cross-fade a frame's two segment versions into its output."""
    base = _base(seam.job, rel)
    start = time.perf_counter()
    try:
        earlier, later = read_image(seam.earlier), read_image(seam.later)
        write_image(torch.lerp(earlier, later, seam.weight), seam.job.output)
    except Exception as exc:
        return Record(
            **base,
            state="failed",
            error=f"{seam.job.output}: cannot cross-fade its segments ({reason(exc, seam.earlier)})",
        )
    return Record(**base, state="done", iterations=0, seconds=round(time.perf_counter() - start, 3))


def _measure(clip: Clip, config: Config, rel: str, seams: list[int]) -> Record:
    base = _base(clip.frames[0], rel, clip.key)
    start = time.perf_counter()
    try:
        metrics = measure(
            [j.content for j in clip.frames],
            [j.output for j in clip.frames],
            FlowCache(config.cache_dir / "flow"),
            config.video.flow,
            seams,
        )
    except Exception as exc:
        return Record(**base, state="failed", error=f"{clip.output}: cannot measure the warp error ({exc})")
    return Record(**base, state="done", metrics=metrics, seconds=round(time.perf_counter() - start, 3))


_EXTRACT = {"video": extract_frames, "animation": animation.extract_frames}  # by Source.kind


def _extract_clips(pending: list[Job], report: Report) -> list[Job]:
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
    base = _base(video.clip.frames[0], rel, video.key)
    start = time.perf_counter()
    frames = [j.output for j in video.clip.frames]
    try:
        with warnings.catch_warnings(record=True) as caught:  # a stream left out, timestamps that do not fit
            warnings.simplefilter("always", VideoWarning)
            if isinstance(video, AnimationOut):
                animation.assemble(frames, video.output, video.durations, video.loop)
            else:
                assemble(frames, video.output, video.fps, source=video.clip.source.path)
    except (VideoError, animation.AnimationError) as exc:
        return Record(**base, state="failed", error=str(exc))
    warning = "; ".join(str(w.message) for w in caught if issubclass(w.category, VideoWarning)) or None
    return Record(
        **base,
        state="done",
        iterations=len(video.clip.frames),
        seconds=round(time.perf_counter() - start, 3),
        warning=warning,
    )


def _finish(
    item: Seam | Clip | VideoOut,
    manifest: Manifest,
    out_dir: Path,
    rerun: bool,
    make: Callable[[str], Record],
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


def _adopt(manifest: Manifest, plan: Plan, out_dir: Path, report: Report) -> None:
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


def execute(config: Config, plan: Plan, report: Report, live: Live | None = None) -> list[Outcome]:
    """Run every pending job, skipping done ones, saving the manifest after each; then the steps that need
    finished frames (see `_finish_clips`). With `live`, the workers (local or Dask) send it where they are
    in their current job (see pipeline.progress.Ticker).

    Raises DeviceError before any work when the configured device does not exist (with executor dask,
    when no worker offers a device the config allows; see pipeline.cluster for its other errors).
    """
    slots = (
        [d for d in resolve_devices(config.devices) for _ in range(config.workers_per_device)]
        if config.executor == "local"
        else []
    )
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
        pending = _extract_clips(pending, report)
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

    return outcomes + _finish_clips(config, plan, manifest, rendered, report)


def _finish_clips(config: Config, plan: Plan, manifest: Manifest, rendered: set[Path], report: Report) -> list[Outcome]:
    """The steps that need finished frames: cross-fade the seams, measure each clip's warp error and
    reassemble each video and animated image whose frames are all done (also by earlier runs)."""
    out_dir, outcomes = config.output.dir, []

    def frames_done(jobs) -> bool:
        return all(is_done(j, manifest, out_dir) for j in jobs)

    for seam in plan.seams:
        if seam.earlier.is_file() and seam.later.is_file():
            outcome = _finish(seam, manifest, out_dir, seam.job.output in rendered, lambda rel, s=seam: _stitch(s, rel))
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
