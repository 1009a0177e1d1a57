"""The local executor: tasks on a pool of worker processes (joblib's loky), one per device slot, or in this
process when there is one slot. Workers pull tasks as they free up; a worker that dies breaks its pool, and
the tasks it had not ended run again on a fresh one."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing import Manager
from multiprocessing.managers import SyncManager
from pathlib import Path
from queue import Queue

import torch
from joblib import Parallel, delayed

from pipeline.batch.config import Config
from pipeline.batch.manifest import Record
from pipeline.batch.plan import Job, relative_output
from pipeline.run import tasks as worker
from pipeline.run.devices import worker_threads
from pipeline.run.tasks import Live, Task
from pipeline.run.ticks import Tick, Ticker

_END = ("end", None)  # what the pool's driver thread sends after the last record


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
    """A worker's word that its device slot failed (see pipeline.run.tasks.DeviceFault): later pools go without it."""

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

    def claim() -> worker.WorkerState:
        slot, device, threads = slots.claim()
        torch.set_num_threads(threads)
        renderer = worker.make_renderer(config, device)
        if live:
            renderer.on_progress = Ticker(results.put, device, out_dir)
        return worker.WorkerState(run_id, renderer, slot)

    held = worker.worker_state(run_id, claim)
    try:
        for item in worker.task_records(held.renderer, config, task, done, out_dir):
            results.put(item)
    except worker.DeviceFault as fault:
        results.put((fault.job, fault.record))
        results.put(_Fault(held.slot))
        os._exit(70)  # this breaks the pool: its tasks that had not ended run on a fresh one, without this slot
    results.put(_Mark(index, ended=True))


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


def records(
    config: Config, tasks: list[Task], done: frozenset[Path], out_dir: Path, slots: list[str], live: Live | None = None
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
    todo: dict[int, Task], strikes: dict[int, int], ended: dict[int, bool], finished: set[Path], out_dir: Path
) -> Iterator[tuple[Job, Record]]:
    """After a pool broke: a strike for each task it was running; those that ended, or were running when a
    pool broke twice, leave `todo` (the latter's unfinished jobs fail)."""
    for index, over in ended.items():
        strikes[index] += not over
        if over or strikes[index] == 2:
            task = todo.pop(index)
            for job in worker.task_jobs(task) if not over else ():
                if job.output not in finished:
                    error = (
                        f"{job.content}: worker process died while running it, twice (killed, crashed or out of memory)"
                    )
                    yield (
                        job,
                        Record(**worker.record_fields(job, relative_output(job, out_dir)), state="failed", error=error),
                    )


def _in_process(
    config: Config, tasks: list[Task], done: frozenset[Path], out_dir: Path, device: str, live: Live | None
) -> Iterator[tuple[Job, Record]]:
    """The tasks run here, on the one device; after a device fault the rest fail without running."""
    renderer = worker.make_renderer(config, device)
    if live is not None:
        renderer.on_progress = Ticker(live, device, out_dir)
    for i, task in enumerate(tasks):
        try:
            yield from worker.task_records(renderer, config, task, done, out_dir)
        except worker.DeviceFault as fault:
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
        for job in worker.task_jobs(task):
            if job.output not in done:
                error = f"{job.content}: not run: {why}"
                yield (
                    job,
                    Record(**worker.record_fields(job, relative_output(job, out_dir)), state="failed", error=error),
                )
