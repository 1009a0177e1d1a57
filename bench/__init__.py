"""Benchmarks: `make bench*` (see bench/__main__.py and bench/quality.py)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def machine() -> str:
    """The CPU's model name and the instruction set torch dispatches to, for the tables' headers."""
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    caps = torch.cpu.get_capabilities()
    bf16 = "AMX" if caps.get("amx_bf16") else "AVX-512 BF16" if caps.get("avx512_bf16") else "no BF16"
    return f"{cpu}, {torch.backends.cpu.get_cpu_capability()}, {bf16}"
