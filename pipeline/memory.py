"""Will a CPU job fit in RAM? Checked before it starts, so that an image too large for the
machine fails as its own job, with the size named, instead of the kernel's OOM killer
ending the whole run. (On a GPU, PyTorch raises a clean out-of-memory error by itself.)

The figures come from `python -m bench --memory` (peak resident memory of one-scale runs at
512, 1024 and 2048 px): 3.78 GiB more per megapixel of the finest scale, for activations,
their gradients and the Winograd scratch buffers; L-BFGS adds its history of 50 pairs of
image-sized float32 vectors.
"""

from __future__ import annotations

from os import sysconf
from pathlib import Path

GIB = 2**30
PER_PIXEL = 4100  # bytes per pixel of the finest scale (3.78 GiB per megapixel, measured)
BASE = int(1.5 * GIB)  # what a worker holds for itself: torch, the model (not reusable for images)
HISTORY_PER_PIXEL = 2 * 50 * 3 * 4  # L-BFGS: 50 (s, y) pairs of 3-channel float32 images


def needed_bytes(shape: tuple[int, int], optimizer: str, images: int = 1) -> int:
    """Estimated peak memory of optimising `images` images of `shape` (height, width) on the CPU."""
    per_pixel = PER_PIXEL + (HISTORY_PER_PIXEL if optimizer == "lbfgs" else 0)
    return shape[0] * shape[1] * images * per_pixel


def available_bytes() -> int | None:
    """Memory this process can still use: the kernel's MemAvailable plus what it holds itself (its freed
    memory stays in its heap, see pipeline.launch). None where /proc is missing (not Linux)."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    fields = dict(line.split(":", 1) for line in meminfo.splitlines() if ":" in line)
    try:
        available_kib = int(fields["MemAvailable"].split()[0])
    except (KeyError, ValueError):
        return None
    return available_kib * 1024 + max(0, resident_pages * sysconf("SC_PAGE_SIZE") - BASE)


def check_fits(shape: tuple[int, int], optimizer: str, images: int = 1) -> None:
    """Raise MemoryError naming the size when the job would not fit in this machine's RAM."""
    available = available_bytes()
    need = needed_bytes(shape, optimizer, images)
    if available is not None and need > available:
        batch = f" x {images} images" if images > 1 else ""
        raise MemoryError(f"{shape[1]}x{shape[0]} px{batch} needs about {need / GIB:.1f} GiB on the CPU, "
                          f"{available / GIB:.1f} GiB available (use a smaller optimize.size)")
