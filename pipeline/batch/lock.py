"""One run per output dir: an advisory file lock that dies with its process."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".stylize.lock"


class LockHeld(RuntimeError):
    """Another live run holds the output dir."""


@contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """Hold `<out_dir>/.stylize.lock` for the duration, or raise LockHeld at once.

    The kernel drops a flock when its process dies, so a lock left by a
    killed run never blocks the next one.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise LockHeld(f"{out_dir}: another stylize run (pid {holder}) holds {path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
