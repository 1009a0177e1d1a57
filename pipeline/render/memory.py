"""Will a job fit in memory, and how large may its tiles be? Decided before it starts, from
the memory measured free at that moment, so that an image too large for the machine is
optimised in tiles (or, with tiling off, fails as its own job with the size named) instead
of the kernel's OOM killer ending the whole run.

The figures come from `python -m bench --memory` (peak resident memory of one-scale runs at
512, 1024 and 2048 px): 3.78 GiB more per megapixel of the finest scale in float32, for
activations, their gradients and the Winograd scratch buffers, and 1.83 GiB in bf16 (half-size
activations, no Winograd); L-BFGS adds its history: optimize.history pairs of image-sized float32 vectors.
"""

from __future__ import annotations

import math
from os import sysconf
from pathlib import Path

import torch

from pipeline.core.optimize import Settings

GIB = 2**30
PER_PIXEL = {
    "fp32": 4100,
    "bf16": 2000,
    "fp16": 2000,
}  # bytes per pixel of the finest scale by the layers' precision (fp32, bf16 measured; fp16 is bf16's size)
BASE = int(1.5 * GIB)  # what a worker holds for itself: torch, the model (not reusable for images)
HISTORY = Settings.history  # L-BFGS (s, y) pairs kept by default
PAIR_PER_PIXEL = 2 * 3 * 4  # one pair of 3-channel float32 images
MIN_HISTORY = 5
WHOLE_PER_PIXEL = 256  # a tiled level's whole-image tensors: image, gradient, L-BFGS vectors, content and its features
HEADROOM = 0.8  # of the free memory, what a tiled job plans on
MIN_TILE = 256  # smaller tiles leave too little halo for an exact gradient (see pipeline.core.tiles)
# On CUDA the CPU figures above are kept and the free memory divided by this margin: cuDNN's workspaces and
# the caching allocator's fragmentation are not in them (the Winograd scratch they count is not used there).
# A conservative guess until a GPU measures its own figures (bench/gpu_check.py).
CUDA_FACTOR = 1.5


def needed_bytes(
    shape: tuple[int, int], optimizer: str, images: int = 1, precision: str = "fp32", history: int = HISTORY
) -> int:
    """Estimated peak memory of optimising `images` images of `shape` (height, width) on the CPU,
    with VGG layers in `precision` (fp32 | bf16 | fp16) and `history` L-BFGS pairs."""
    per_pixel = PER_PIXEL[precision] + (history * PAIR_PER_PIXEL if optimizer == "lbfgs" else 0)
    return shape[0] * shape[1] * images * per_pixel


def available_bytes() -> int | None:
    """Memory this process can still use: the kernel's MemAvailable plus what it holds itself (its freed
    memory stays in its heap, see pipeline.ui.launch). None where /proc is missing (not Linux)."""
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


def free_bytes(device: torch.device, share: float = 1.0) -> int | None:
    """Memory a job may plan on now: `share` of the device's free memory (CUDA's free memory plus what its
    allocator holds unused, less CUDA_FACTOR's margin; the host's on the CPU), None where unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        held = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int((free + held) / CUDA_FACTOR * share)
    free = available_bytes()
    return None if free is None else int(free * share)


def check_fits(
    shape: tuple[int, int], optimizer: str, images: int = 1, precision: str = "fp32", history: int = HISTORY
) -> None:
    """Raise MemoryError naming the size when the job would not fit in this machine's RAM."""
    available = available_bytes()
    need = needed_bytes(shape, optimizer, images, precision, history)
    if available is not None and need > available:
        batch = f" x {images} images" if images > 1 else ""
        raise MemoryError(
            f"{shape[1]}x{shape[0]} px{batch} needs about {need / GIB:.1f} GiB on the CPU, "
            f"{available / GIB:.1f} GiB available (use a smaller optimize.size)"
        )


def tile_plan(
    free: int | None,
    shape: tuple[int, int],
    optimizer: str,
    images: int = 1,
    tile: int | None = None,
    precision: str = "fp32",
    history: int = HISTORY,
) -> tuple[int, int]:
    """(tile side, L-BFGS history pairs) for optimising `images` images of `shape` in `free` bytes,
    with VGG layers in `precision`, keeping up to `history` L-BFGS pairs.

    The tile is 0 when the whole image fits (or nothing is known of the memory), else the largest multiple
    of 16 px whose crops fit beside the whole-image tensors, at least MIN_TILE; `tile` forces a side. A
    tiled image keeps fewer history pairs when `history` of them would take over a quarter of the memory.
    """
    if free is None:
        return tile or 0, history
    budget = free * HEADROOM
    pixels = shape[0] * shape[1] * images
    if tile is None and needed_bytes(shape, optimizer, images, precision, history) <= budget:
        return 0, history
    pairs = max(min(MIN_HISTORY, history), min(history, int(budget / 4 / (PAIR_PER_PIXEL * pixels))))
    if tile is None:
        room = budget - pixels * (WHOLE_PER_PIXEL + (pairs * PAIR_PER_PIXEL if optimizer == "lbfgs" else 0))
        tile = max(MIN_TILE, int(math.sqrt(max(0.0, room) / (PER_PIXEL[precision] * images))) // 16 * 16)
    return tile, pairs
