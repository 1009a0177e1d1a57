"""Allocator settings for the processes that render, set before the process starts its work.

glibc returns freed blocks of a few MB to the kernel at once, so every
optimiser iteration page-faults its activations back in: about a quarter of
an iteration's time on the CPU. Keeping freed memory in the heap needs
GLIBC_TUNABLES set before the process starts, so the command re-executes
itself once with it set, and Dask workers get it in their environment (a value
the user set is left alone).
"""

from __future__ import annotations

import os
import sys

TUNABLES = "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"


def keep_freed_memory(module: str) -> None:
    """Re-execute `python -m module argv…` with GLIBC_TUNABLES set, unless it is set already (Linux only)."""
    if sys.platform.startswith("linux") and "GLIBC_TUNABLES" not in os.environ:
        os.environ["GLIBC_TUNABLES"] = TUNABLES
        os.execv(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]])


def grow_cuda_segments() -> None:
    """CUDA: the allocator grows its segments instead of keeping one per odd shape (tiles, original sizes),
    so freed blocks of one shape serve the next; workers inherit it. A value the user set is left alone."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
