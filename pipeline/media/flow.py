"""Optical flow between video frames (NumPy + OpenCV, CPU), with an on-disk cache.

Conventions (shared with `pipeline.core.temporal`):

* images are RGB uint8 arrays of shape (H, W, 3);
* a flow is a float32 array of shape (H, W, 2), x then y, in pixels;
* ``estimate(a, b)`` is the *backward* flow F of b: ``b(p) ≈ a(p + F(p))``, i.e. for
  each pixel of b, where it was in a. Warping a by F gives a as seen from b.

OpenCV's convention is ``prev(p) ≈ next(p + flow(p))``, so F is OpenCV's flow
with prev = b and next = a.
"""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import cv2
import numpy as np

from pipeline.media.digest import file_digest, value_digest
from pipeline.media.images import atomic_path

METHODS = ("dis", "farneback")

_local = threading.local()  # one DIS object per thread: creating one has a cost, sharing one is not thread safe


def _dis() -> cv2.DISOpticalFlow:
    if not hasattr(_local, "dis"):
        _local.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return _local.dis


def estimate(a: np.ndarray, b: np.ndarray, method: str = "dis") -> np.ndarray:
    """Backward flow of b, (H, W, 2) float32: ``b(p) ≈ a(p + F(p))``.

    `method` is "dis" (DIS, medium preset) or "farneback"; both work on grayscale.
    """
    if method not in METHODS:
        raise ValueError(f"unknown optical flow method {method!r}; valid: {', '.join(METHODS)}")
    if a.shape != b.shape:
        raise ValueError(f"frames differ in shape: {a.shape} and {b.shape}")
    prev = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    nxt = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
    if method == "dis":
        flow = _dis().calc(prev, nxt, None)
    else:
        flow = cv2.calcOpticalFlowFarneback(
            prev, nxt, None, pyr_scale=0.5, levels=4, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0
        )
    return flow.astype(np.float32, copy=False)


def pair(a: np.ndarray, b: np.ndarray, method: str = "dis") -> tuple[np.ndarray, np.ndarray]:
    """(back, fwd): back locates b's pixels in a, fwd locates a's pixels in b."""
    return estimate(a, b, method), estimate(b, a, method)


def read_rgb(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3), resized (area) to `shape` = (H, W)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: cannot read image")
    h, w = shape
    if image.shape[:2] != (h, w):
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class FlowCache:
    """`pair()` of two image files, cached on disk as ``root/<key>.npz`` (no disk cache when root is None).

    The key hashes both files' bytes, the shape and the method, so an edited
    frame or another size never reads a stale flow. Flows are stored as
    float16 to halve the files (rounding error at most 2⁻¹¹ of the value:
    under 0.02 px below 64 px of motion) and returned as float32; a cache miss returns the same
    rounded values a later hit will, so results do not depend on the cache.
    A cache file that cannot be read is recomputed and rewritten.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def get(self, a_path: Path, b_path: Path, shape: tuple[int, int], method: str) -> tuple[np.ndarray, np.ndarray]:
        """(back, fwd) flows of the two files resized to `shape` = (H, W); see `pair`."""
        if self.root is None:
            return pair(read_rgb(a_path, shape), read_rgb(b_path, shape), method)
        key = value_digest([file_digest(a_path), file_digest(b_path), list(shape), method])
        path = self.root / f"{key}.npz"
        cached = _load(path, shape)
        if cached is not None:
            return cached
        back, fwd = (f.astype(np.float16) for f in pair(read_rgb(a_path, shape), read_rgb(b_path, shape), method))
        with atomic_path(path) as tmp, tmp.open("wb") as out:
            np.savez(out, back=back, fwd=fwd)  # a file object: np.savez would append ".npz" to a path
        return back.astype(np.float32), fwd.astype(np.float32)


def _load(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached (back, fwd) as float32, or None when missing, unreadable or of the wrong shape."""
    try:
        with np.load(path, allow_pickle=False) as data:
            back, fwd = data["back"], data["fwd"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if back.shape != (*shape, 2) or fwd.shape != back.shape:
        return None
    return back.astype(np.float32), fwd.astype(np.float32)
