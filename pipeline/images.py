"""Image files in and out: decoding with EXIF orientation, resizing, atomic writes."""

from __future__ import annotations

import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
_UMASK = os.umask(0o022)  # read once, at import (os.umask can only be read by setting it)
os.umask(_UMASK)
_ALPHA_FORMATS = frozenset({"PNG", "WEBP", "TIFF"})
_SAVE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}


class ImageError(ValueError):
    """An input image cannot be used; the message names the file."""


def fit_longest(shape: tuple[int, int], size: int) -> tuple[int, int]:
    """(height, width) scaled so that the longest side is `size`, aspect kept."""
    h, w = shape
    ratio = size / max(h, w)
    return max(1, round(h * ratio)), max(1, round(w * ratio))


_SWAPS_AXES = frozenset({5, 6, 7, 8})  # EXIF orientations that turn the image by 90°


def working_shape(path: Path, size: int | None) -> tuple[int, int] | None:
    """The (height, width) `read_image(path, size)` gives, from the header alone; None if unreadable."""
    try:
        with Image.open(path) as im:
            h, w = (im.width, im.height) if im.getexif().get(0x0112) in _SWAPS_AXES else (im.height, im.width)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return fit_longest((h, w), size) if size is not None else (h, w)


@contextmanager
def _upright(path: Path) -> Iterator[Image.Image]:
    """The image at `path`, turned upright per EXIF, 16-bit greys scaled to 8 bits; errors become one-line ImageErrors.

    A header that claims more than PIL's MAX_IMAGE_PIXELS (a decompression bomb) is refused before decoding.
    """
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I"):  # 16-bit greyscale PNG or TIFF: keep the high byte
                im = Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8))
            yield im
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: refused before decoding: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image") from None
    except ImageError:
        raise
    except OSError as exc:
        raise ImageError(f"{path}: " + (f"cannot read file ({exc.strerror})" if exc.errno else f"cannot decode image ({exc})")) from None
    except (SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: cannot decode image ({exc})") from None


def read_image(path: Path, size: int | None = None) -> torch.Tensor:
    """Decode an image file to (1, 3, H, W) float RGB in [0, 1], upright per EXIF.

    With `size`, the longest side is resized to it (Lanczos).
    """
    with _upright(path) as im:
        im = im.convert("RGB")
        if size is not None:
            h, w = fit_longest((im.height, im.width), size)
            im = im.resize((w, h), Image.Resampling.LANCZOS)
        array = np.array(im, dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).float().div_(255.0).contiguous()


def read_alpha(path: Path) -> Image.Image | None:
    """The image's alpha channel (8-bit, upright per EXIF), or None when it has no transparency."""
    with _upright(path) as im:
        if "A" not in im.getbands() and "transparency" not in im.info:
            return None
        return im.convert("RGBA").getchannel("A")


def to_pil(image: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) RGB [0, 1] tensor to an 8-bit PIL image."""
    array = image.detach()[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a hidden temporary path beside `path` (same suffix last: encoders go by it); on success
    rename it over `path`, with the permissions a new file gets (mode 666 less the umask).

    A crash or error leaves no file at `path` (nor a stray temporary).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp made it 600: others on the farm could not read it
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_image(image: torch.Tensor, path: Path, alpha: Image.Image | None = None) -> None:
    """Write a (1, 3, H, W) RGB [0, 1] tensor atomically; the format follows the suffix.

    `alpha` (see read_alpha), resized to the image, is attached where the format holds one (PNG, WebP, TIFF).
    """
    fmt = _SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"{path}: unsupported output format {path.suffix!r}")
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    pil = to_pil(image)
    if alpha is not None and fmt in _ALPHA_FORMATS:
        pil.putalpha(alpha.resize(pil.size, Image.Resampling.LANCZOS))
    with atomic_path(path) as tmp:
        pil.save(tmp, format=fmt, **options)
