"""Progress display: a rich bar on a TTY, plain timestamped lines otherwise (cron)."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.manifest import Record
from pipeline.optimize import Callback, Progress


@contextmanager
def progress_callback(tty: bool) -> Iterator[Callback | None]:
    """Yield a callback that draws iteration progress per scale on a TTY (None elsewhere)."""
    if not tty:
        yield None
        return
    from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Bar(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4g}"), TimeElapsedColumn(), TimeRemainingColumn(), transient=False,
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


class RunReport:
    """What a batch run shows: timestamped lines on stderr and in `log_file`; on a TTY
    also a live display of overall progress with ETA, the failure count and, per
    worker, the last finished job. Use as a context manager."""

    def __init__(self, log_file: Path, tty: bool) -> None:
        self.log_file = log_file
        self.tty = tty
        self._bar = None
        self._overall = None
        self._workers: dict[str, int] = {}
        self.failed = 0

    def __enter__(self) -> "RunReport":
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Bar(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
            )
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def log(self, message: str) -> None:
        line = timestamped(message)
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)
        with self.log_file.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    def start(self, pending: int) -> None:
        if self._bar is not None and pending:
            self._overall = self._bar.add_task("jobs", total=pending, note="0 failed")

    def finished(self, record: Record) -> None:
        self.failed += record.state == "failed"
        if self._bar is None or self._overall is None:
            return
        self._bar.update(self._overall, advance=1, note=f"{self.failed} failed")
        if record.device is None:  # made by this process, not a worker (a cross-fade, a job that failed early)
            return
        worker = f"{record.device} pid {record.pid}" if record.pid else record.device
        note = f"{record.state} {record.output}" + (f" {record.seconds:.1f}s" if record.seconds else "")
        if worker not in self._workers:
            self._workers[worker] = self._bar.add_task(f"  {worker}", total=None, note=note)
        self._bar.update(self._workers[worker], note=note)
