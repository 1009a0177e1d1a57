"""Progress display for one image: a rich bar on a TTY, nothing otherwise."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

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
