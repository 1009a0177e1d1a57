"""Benchmarks: `make bench*` (see bench/__main__.py and bench/quality.py)."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import torch

BIN = Path(sys.executable).parent  # this environment's commands


def image_command(content: Path, style: Path, out: Path, size: int, iterations: int, *extra: str) -> list[str]:
    """`stylize image` from this environment, with the arguments every benchmark gives it."""
    files = [str(content), str(style), "-o", str(out)]
    return [str(BIN / "stylize"), "image", *files, "--size", str(size), "--iterations", str(iterations), *extra]


def machine() -> str:
    """The CPU's model name and the instruction set torch dispatches to, for the tables' headers."""
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    caps = torch.cpu.get_capabilities()
    bf16 = "AMX" if caps.get("amx_bf16") else "AVX-512 BF16" if caps.get("avx512_bf16") else "no BF16"
    return f"{cpu}, {torch.backends.cpu.get_cpu_capability()}, {bf16}"
