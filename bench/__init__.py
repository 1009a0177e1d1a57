"""Benchmarks: `make bench*` (see bench/__main__.py and bench/quality.py)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def machine() -> str:
    """The CPU's model name and the instruction set torch dispatches to, for the tables' headers."""
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    cpu = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")), platform.processor())
    return f"{cpu}, {torch.backends.cpu.get_cpu_capability()}"
