"""Progress display: a rich bar on a TTY, plain timestamped lines otherwise (cron)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from pipeline.batch.manifest import Record
from pipeline.core.optimize import Callback, Progress
from pipeline.run.ticks import Tick, worker_name


@contextmanager
def progress_callback(tty: bool) -> Iterator[Callback | None]:
    """Yield a callback that draws iteration progress per scale on a TTY (None elsewhere)."""
    if not tty:
        yield None
        return
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    with Bar(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4g}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as bar:
        tasks: dict[int, int] = {}

        def callback(p: Progress) -> None:
            if p.scale not in tasks:
                desc = f"scale {p.scale}/{p.scales} {p.shape[1]}x{p.shape[0]}"
                tasks[p.scale] = bar.add_task(desc, total=p.iterations, loss=p.loss)
            bar.update(tasks[p.scale], completed=p.iteration, loss=p.loss)

        yield callback


def timestamped(message: str) -> str:
    return f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"


class RunDisplay:
    """What a batch run shows: timestamped lines on stderr and in `log_file`; on a TTY
    also a live display of overall progress with ETA, the failure count and, per
    worker, its current job (scale, iteration, loss) or the last it finished. Use as a
    context manager.

    `verbosity` quiet shows on stderr only the lines logged with `always` (failures,
    warnings, the summary) and no live display; verbose also logs each Tick (about one
    line per iteration per worker). `log_file` gets every line either way. Ticks may
    arrive on another thread (Dask's event loop): the methods hold a lock.
    """

    def __init__(self, log_file: Path, tty: bool, verbosity: str = "normal") -> None:
        self.log_file = log_file
        self.quiet, self.verbose = verbosity == "quiet", verbosity == "verbose"
        self.tty = tty and not self.quiet
        self._bar = None
        self._overall = None
        self._workers: dict[str, int] = {}
        self._lock = threading.RLock()
        self.failed = 0

    def __enter__(self) -> RunDisplay:
        if self.tty:
            from rich.console import Console
            from rich.progress import Progress as Bar

            self._bar = Bar(*_columns(), console=Console(stderr=True))
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def log(self, message: str, always: bool = False) -> None:
        """A line for stderr (unless quiet and not `always`) and the log file."""
        line = timestamped(message)
        with self._lock:
            if self._bar is not None:
                self._bar.console.print(line, markup=False, highlight=False)
            elif always or not self.quiet:
                print(line, file=sys.stderr, flush=True)
            with self.log_file.open("a", encoding="utf-8") as f:
                f.write(line + "\n")

    def start(self, pending: int) -> None:
        if self._bar is not None and pending:
            self._overall = self._bar.add_task("jobs", total=pending, note="0 failed", overall=True)

    def progress(self, tick: Tick) -> None:
        """A worker's current job: its display line, and with verbose a log line."""
        if self.verbose:
            self.log(f"{tick.worker}: {tick}")
        note = f"{tick.output} scale {tick.scale}/{tick.scales} loss {tick.loss:.4g}"
        self._worker(tick.worker, note, total=tick.iterations, completed=tick.iteration)

    def finished(self, record: Record) -> None:
        self.failed += record.state == "failed"
        if self._bar is None or self._overall is None:
            return
        with self._lock:
            self._bar.update(self._overall, advance=1, note=f"{self.failed} failed")
        if record.device is None:  # made by this process, not a worker (a cross-fade, a job that failed early)
            return
        note = f"{record.state} {record.output}" + (f" {record.seconds:.1f}s" if record.seconds else "")
        self._worker(worker_name(record.device, record.pid), note, total=1, completed=1)

    def _worker(self, worker: str, note: str, **fields: float) -> None:
        if self._bar is None:
            return
        with self._lock:
            if worker not in self._workers:
                self._workers[worker] = self._bar.add_task(f"  {worker}", note=note, **fields)
            self._bar.update(self._workers[worker], note=note, **fields)


def _columns() -> tuple:
    """The live display's columns: name, bar, count, times and a note. Times show on the overall row only
    (a worker's count is its iterations, which restart with each scale and job); the time left is at the
    run's average pace so far, as parallel workers finish jobs in bursts."""
    from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, Task, TextColumn
    from rich.text import Text

    class Times(ProgressColumn):
        def render(self, task: Task) -> Text:
            if not task.fields.get("overall"):
                return Text("")
            elapsed = task.elapsed or 0.0
            left = _clock(elapsed / task.completed * (task.remaining or 0)) if task.completed else "-:--:--"
            return Text(f"{_clock(elapsed)} eta {left}")

    return (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        Times(),
        TextColumn("{task.fields[note]}"),
    )


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))
