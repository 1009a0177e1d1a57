"""Live progress from workers: where each is in its current job, sent at a bounded rate."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.optimize import Progress

TICK_EVERY = 0.1  # seconds: a worker sends at most this often a Tick of the job it runs


def worker_name(device: str, pid: int | None) -> str:
    """How the display names a worker: its device and process."""
    return f"{device} pid {pid}" if pid else device


@dataclass(frozen=True)
class Tick:
    """Where a worker is in its current job."""

    worker: str  # see worker_name
    output: str  # the job's output, relative to the output dir
    scale: int
    scales: int
    iteration: int
    iterations: int
    loss: float

    def __str__(self) -> str:
        return f"{self.output} scale {self.scale}/{self.scales} iteration {self.iteration}/{self.iterations} loss {self.loss:.4g}"


class Ticker:
    """A Renderer's `on_progress` in a worker: Ticks to `send`, each job's first and then at most one
    per TICK_EVERY seconds, so a parent process is not flooded."""

    def __init__(self, send: Callable[[Tick], None], device: str, out_dir: Path) -> None:
        self.send, self.out_dir = send, out_dir
        self.worker = worker_name(device, os.getpid())
        self._output: Path | None = None
        self._sent = -math.inf

    def __call__(self, output: Path, p: Progress) -> None:
        now = time.monotonic()
        if output == self._output and now - self._sent < TICK_EVERY:
            return
        self._output, self._sent = output, now
        rel = output.relative_to(self.out_dir).as_posix() if output.is_relative_to(self.out_dir) else output.name
        self.send(Tick(self.worker, rel, p.scale, p.scales, p.iteration, p.iterations, p.loss))
