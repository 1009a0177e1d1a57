"""Image files in and out: decoding with EXIF orientation, resizing, colour into the working space (ICC
profiles: `color`; scene-linear plates: `plates` and `scene`), atomic writes."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, TiffImagePlugin, UnidentifiedImageError

from pipeline.core.optimize import fit_longest
from pipeline.media.color import SRGB_ICC, ColorError, from_srgb, source_space, to_srgb
from pipeline.media.digest import file_digest
from pipeline.media.plates import PLATE_SUFFIXES, PlateError, PlateInfo, read_pixels, to_working, write_plate
from pipeline.media.plates import probe as probe_plate
from pipeline.media.scene import SceneColor, SceneError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"} | PLATE_SUFFIXES)
UMASK = os.umask(0o022)  # read once, at import (os.umask can only be read by setting it)
os.umask(UMASK)
_ALPHA_FORMATS = frozenset({"PNG", "WEBP", "TIFF"})
_ICC_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "TIFF"})  # the 8-bit outputs that carry their sRGB profile
_SAVE_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
WRITABLE = frozenset(_SAVE_FORMATS) | PLATE_SUFFIXES  # the suffixes an output image may have (a still GIF: PNG)
DEEP_FORMATS = frozenset({"PNG", "TIFF"})  # the output formats that hold 16 bits per sample


NAME_MAX = 255  # bytes in one file name, on every file system we write to


class ImageError(ValueError):
    """An input image cannot be used; the message names the file."""


_SWAPS_AXES = frozenset({5, 6, 7, 8})  # EXIF orientations that turn the image by 90°
_TRANSPOSE = {  # EXIF orientation: what turns it upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _tiff_tags(path: Path) -> dict[int, object]:
    """The first directory's tags of a TIFF file: Pillow parses them also where it cannot decode the samples."""
    with path.open("rb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a corrupt directory: its reason is that the image is unreadable
        ifd = TiffImagePlugin.ImageFileDirectory_v2(f.read(8))  # SyntaxError: not a TIFF
        f.seek(ifd.next)
        ifd.load(f)
    return dict(ifd)


def _largest(value: object) -> int:
    """A TIFF tag's value, or the largest of a per-sample tuple."""
    return int(max(value)) if isinstance(value, tuple) else int(value)  # type: ignore[arg-type]


def _stored(path: Path) -> tuple[int, int, int | None]:
    """(height, width, EXIF orientation) as stored, from the header: Pillow's, or the tags of a TIFF whose
    samples Pillow cannot decode (float colour), or a plate's. Over MAX_IMAGE_PIXELS raises a DecompressionBomb
    error or warning."""
    if _plate(path):
        info = probe_plate(path)
        return info.height, info.width, None
    try:
        with Image.open(path) as im:
            return im.height, im.width, im.getexif().get(0x0112)
    except UnidentifiedImageError:
        try:
            tags = _tiff_tags(path)
        except (SyntaxError, ValueError):
            raise UnidentifiedImageError(f"cannot identify image file {str(path)!r}") from None
    h, w = _largest(tags.get(257, 0)), _largest(tags.get(256, 0))
    if h * w > Image.MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(
            f"Image size ({h * w} pixels) exceeds limit of {Image.MAX_IMAGE_PIXELS} pixels"
        )
    orientation = tags.get(274)
    return h, w, _largest(orientation) if orientation is not None else None


def working_shape(path: Path, size: int | None) -> tuple[int, int] | None:
    """The (height, width) `read_image(path, size)` gives, from the header alone; None if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            h, w, orientation = _stored(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):  # PlateError is a ValueError
        return None
    if orientation in _SWAPS_AXES:
        h, w = w, h
    return fit_longest((h, w), size) if size is not None else (h, w)


def _plate(path: Path) -> bool:
    """Whether `path` is read and written by `plates` (EXR, DPX)."""
    return path.suffix.lower() in PLATE_SUFFIXES


def _plate_info(path: Path) -> PlateInfo | None:
    """A plate's header; None for other files and unreadable plates."""
    try:
        return probe_plate(path) if _plate(path) else None
    except PlateError:
        return None


def sample_depth(path: Path) -> str | None:
    """'16-bit' or '32-bit float' for a PNG or TIFF with more than 8 bits per sample, a plate's depth ('16-bit
    half', '10-bit'), from its header; None for 8 bits or fewer, other formats and unreadable files."""
    if _plate(path):
        info = _plate_info(path)
        return info.depth if info is not None and info.bits > 8 else None
    try:
        with path.open("rb") as f:
            head = f.read(26)
        if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) == 26:
            return f"{head[24]}-bit" if head[24] > 8 else None  # IHDR's bit depth
        if head[:4] not in (b"II*\0", b"MM\0*"):
            return None
        tags = _tiff_tags(path)
    except (OSError, SyntaxError, ValueError):
        return None
    bits = _largest(tags.get(258, 1))
    return None if bits <= 8 else f"{bits}-bit float" if _largest(tags.get(339, 1)) == 3 else f"{bits}-bit"


def output_bits(source: Path, output: Path, depth: str | int = "same") -> int | None:
    """Bits per sample of `output` for `source`: None for a plate (EXR, DPX: see `plates.write_plate`); 32 for
    a TIFF where `depth` is float, or `same` and the source is a float TIFF or plate; 16 where `depth` is 16 or
    half, or `same` and the source has more than 8 (see sample_depth), and the output's format holds them
    (PNG, TIFF); else 8."""
    if _plate(output):
        return None
    fmt = _SAVE_FORMATS.get(output.suffix.lower())
    if fmt not in DEEP_FORMATS:
        return 8
    stored = sample_depth(source) if depth == "same" else None
    if fmt == "TIFF" and (depth == "float" or (stored or "").startswith("32-bit")):
        return 32
    return 16 if depth in (16, "half", "float") or stored is not None else 8


def depth_note(path: Path, bits: int | None = 8) -> str | None:
    """The warning a job owes whose input has more bits per sample than its output's `bits` (None: a plate
    output, which keeps them); else None."""
    depth = sample_depth(path)
    if depth is None or bits is None or bits == 32 or (bits == 16 and depth in ("16-bit", "16-bit half")):
        return None
    return f"{path}: {depth} input written as {bits}-bit" + (
        " (its output's format holds 8; PNG and TIFF hold 16)"
        if bits == 8
        else " (PNG holds 16 at most; TIFF and EXR hold float)"
    )


def converted_space(path: Path, scene: SceneColor | None = None) -> str | None:
    """The colour space an input's pixels are converted from into the working space, for job keys and the
    manifest: an EXR's (see `scene.SceneColor.describe`), a DPX's printing density, an ICC-tagged image's
    profile (see `color.source_space`); None where nothing is converted: untagged or sRGB inputs, DPX in video
    code values, and PNG or TIFF of more than 8 bits per sample (see `color_note`)."""
    if _plate(path):
        info = _plate_info(path)
        if info is None or info.pixel_type.startswith("uint"):
            return "Cineon printing density (DPX)" if info is not None and info.log else None
        return (scene or SceneColor()).describe()
    return None if sample_depth(path) is not None else source_space(path)


def image_digest(path: Path, scene: SceneColor | None = None) -> str:
    """The digest of what `read_image` makes of `path`, for keys: its file's digest, and the colour space it is
    converted from where it has one (see `converted_space`), so that the keys of untagged images stay."""
    space = converted_space(path, scene)
    return f"{file_digest(path)}:{space}" if space else file_digest(path)


def color_note(path: Path) -> str | None:
    """The warning a job owes whose input has an ICC profile that is not applied (more than 8 bits per sample)."""
    depth = sample_depth(path)
    space = source_space(path) if depth is not None else None
    return f"{path}: its ICC profile ({space}) is not applied to {depth} samples: read as sRGB" if space else None


def input_note(path: Path, bits: int = 8) -> str | None:
    """The warnings a job owes for its input (see `depth_note` and `color_note`), in one line; None for none."""
    return "; ".join(n for n in (depth_note(path, bits), color_note(path)) if n) or None


@contextmanager
def _one_line(path: Path) -> Iterator[None]:
    """Errors inside become one-line ImageErrors that name `path`; Pillow's warnings of a corrupt file are dropped
    (what matters of them is in that line)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: refused before decoding: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image") from None
    except ImageError:
        raise
    except (ColorError, PlateError) as exc:
        raise ImageError(str(exc)) from None
    except SceneError as exc:
        raise ImageError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ImageError(
            f"{path}: " + (f"cannot read file ({exc.strerror})" if exc.errno else f"cannot decode image ({exc})")
        ) from None
    except (SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: cannot decode image ({exc})") from None


@contextmanager
def _upright(path: Path) -> Iterator[Image.Image]:
    """The image at `path`, turned upright per EXIF, 16-bit greys scaled to 8 bits; errors become one-line ImageErrors.

    A header that claims more than PIL's MAX_IMAGE_PIXELS (a decompression bomb) is refused before decoding.
    """
    with _one_line(path):
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


def _unit_range(array: np.ndarray, path: Path) -> np.ndarray:
    """OpenCV's samples as float32 in [0, 1]: integers over their full range, floats clipped (display-referred)."""
    if array.dtype in (np.uint8, np.uint16):
        return array.astype(np.float32) / np.iinfo(array.dtype).max
    if array.dtype.kind == "f":
        return np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0).clip(0, 1)
    raise ImageError(f"{path}: cannot decode image ({array.dtype} samples are not supported)")


def _rgb(array: np.ndarray) -> np.ndarray:
    """OpenCV's (H, W[, C]) grey, grey+alpha, BGR or BGRA as (H, W, 3 or 4) RGB(A)."""
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[2] <= 2:
        return np.concatenate([array[..., :1]] * 3 + [array[..., 1:2]], axis=2)
    return array[..., [2, 1, 0, 3][: min(4, array.shape[2])]]


def _planes(array: np.ndarray, orientation: int | None, size: int | None) -> np.ndarray:
    """(H, W, C) float32 turned upright per EXIF `orientation` and, with `size`, its longest side resized to it
    (Lanczos, as read_image), one float plane at a time."""
    planes = [Image.fromarray(np.ascontiguousarray(array[..., c])) for c in range(array.shape[2])]
    if orientation in _TRANSPOSE:
        planes = [p.transpose(_TRANSPOSE[orientation]) for p in planes]
    if size is not None:
        h, w = fit_longest((planes[0].height, planes[0].width), size)
        planes = [p.resize((w, h), Image.Resampling.LANCZOS) for p in planes]
    return np.stack([np.asarray(p) for p in planes], axis=2).clip(0, 1)


def _read_deep(path: Path, size: int | None = None) -> np.ndarray:
    """A PNG or TIFF with more than 8 bits per sample (see sample_depth), decoded by OpenCV (Pillow keeps
    8 bits, and reads no float colour TIFF): (H, W, 3 or 4) float32 RGB(A) in [0, 1], upright per EXIF,
    with `size` resized. 16-bit samples are divided by 65535, float ones clipped to 0..1."""
    with _one_line(path):
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            orientation = _stored(path)[2]  # a bomb is refused here, before decoding
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # the reason goes in our one line
        try:
            array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            array = None
        finally:
            cv2.utils.logging.setLogLevel(level)
        if array is None:
            raise ImageError(f"{path}: cannot decode image (its {sample_depth(path)} samples: OpenCV cannot read them)")
        return _planes(_rgb(_unit_range(array, path)), orientation, size)


def _read_plate(path: Path, size: int | None, scene: SceneColor | None) -> np.ndarray:
    """A plate's colour channels in the working space (see `plates.to_working`), (H, W, 3) float32, with `size`
    resized as read_image; its alpha (None for none) as a fourth channel."""
    with _one_line(path):
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file")
        pixels, info = read_pixels(path)
        array = to_working(pixels, info, scene or SceneColor())  # in [0, 1]
        if info.alpha is not None:
            array = np.concatenate([array, pixels[..., info.alpha : info.alpha + 1].clip(0, 1)], axis=2)
        return _planes(array, None, size) if size is not None else array


def read_image(path: Path, size: int | None = None, scene: SceneColor | None = None) -> torch.Tensor:
    """Decode an image file to (1, 3, H, W) float RGB in [0, 1], upright per EXIF, in sRGB (an embedded ICC
    profile is applied: see `color`) or, for EXR and DPX, the working space `scene` gives (see `scene`).

    With `size`, the longest side is resized to it (Lanczos). PNG and TIFF with more than 8 bits per sample
    keep their precision (see `_read_deep`); their ICC profiles are not applied (see `color_note`).
    """
    if _plate(path) or sample_depth(path) is not None:
        array = (_read_plate(path, size, scene) if _plate(path) else _read_deep(path, size))[..., :3]
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0).contiguous()
    with _upright(path) as im:
        im = to_srgb(im, path)
        if size is not None:
            h, w = fit_longest((im.height, im.width), size)
            im = im.resize((w, h), Image.Resampling.LANCZOS)
        array = np.array(im, dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).float().div_(255.0).contiguous()


def read_alpha(path: Path) -> Image.Image | None:
    """The image's alpha channel (8-bit, upright per EXIF), or None when it has no transparency."""
    if _plate(path) or sample_depth(path) is not None:
        array = _read_plate(path, None, None) if _plate(path) else _read_deep(path)
        return Image.fromarray((array[..., 3] * 255).round().astype(np.uint8), "L") if array.shape[2] == 4 else None
    with _upright(path) as im:
        if "A" not in im.getbands() and "transparency" not in im.info:
            return None
        return im.convert("RGBA").getchannel("A")


def read_preview(path: Path, size: int, scene: SceneColor | None = None) -> Image.Image:
    """An 8-bit RGB picture of any image file read here, its longest side `size`: for EXR and DPX, the
    working view the optimiser sees (see `scene`), so that linear plates do not look dark and flat."""
    return to_pil(read_image(path, size, scene))


def to_pil(image: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) RGB [0, 1] tensor to an 8-bit PIL image."""
    array = image.detach()[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def probe_writable(folder: Path, prefix: str = ".write-probe.") -> None:
    """Create and remove a file in `folder`; raises OSError where that fails (a read-only mount, say)."""
    fd, probe = tempfile.mkstemp(prefix=prefix, dir=folder)
    os.close(fd)
    os.unlink(probe)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a hidden temporary path beside `path` (same suffix last: encoders go by it); on success
    rename it over `path`, with the permissions a new file gets (mode 666 less the umask).

    A crash or error leaves no file at `path` (nor a stray temporary).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = f".part{path.suffix}"
    room = NAME_MAX - len(f"..XXXXXXXX{suffix}".encode())  # whenever the name fits, its temporary does too
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name.encode()[:room].decode(errors='ignore')}.", suffix=suffix, dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~UMASK)  # mkstemp made it 600: others on the farm could not read it
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _write_deep(image: torch.Tensor, path: Path, alpha: Image.Image | None, bits: int) -> None:
    """Write a (1, 3, H, W) RGB [0, 1] tensor as a 16-bit PNG or TIFF, or a 32-bit float TIFF (OpenCV's
    encoders), atomically."""
    array = image.detach()[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    planes = [array[..., ::-1]]  # OpenCV's order: BGR(A)
    if alpha is not None:
        size = (array.shape[1], array.shape[0])
        planes.append(np.asarray(alpha.resize(size, Image.Resampling.LANCZOS), dtype=np.float32)[..., None] / 255)
    samples = np.ascontiguousarray(np.concatenate(planes, axis=2), dtype=np.float32)
    if bits == 16:
        samples = (samples * 65535).round().astype(np.uint16)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), samples):
            raise ImageError(f"{path}: cannot write a {bits}-bit {path.suffix} image")


def write_plate_image(
    image: torch.Tensor, path: Path, source: Path | None, depth: str | int = "same", scene: SceneColor | None = None
) -> str:
    """Write a (1, 3, H, W) working-space [0, 1] tensor as an EXR or DPX, atomically, with its `source`'s
    header and other channels where the source is one of the same format (see `plates.write_plate`); returns
    the pixel type written."""
    working = image.detach()[0].permute(1, 2, 0).cpu().numpy()
    with _one_line(path), atomic_path(path) as tmp:
        return write_plate(working, tmp, source, depth, scene or SceneColor())


def write_image(
    image: torch.Tensor, path: Path, alpha: Image.Image | None = None, bits: int = 8, icc: bytes | None = None
) -> None:
    """Write a (1, 3, H, W) sRGB [0, 1] tensor atomically, with `bits` (8; 16 for PNG and TIFF; 32, float, for
    TIFF) per sample; the format follows the suffix (EXR and DPX: see `write_plate_image`). 8-bit PNG, JPEG, WebP and TIFF outputs carry an sRGB ICC profile, or, with
    `icc` (an RGB profile: see `color.source_profile`), are converted into that space and carry it.

    `alpha` (see read_alpha), resized to the image, is attached where the format holds one (PNG, WebP, TIFF).
    """
    fmt = _SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"{path}: unsupported output format {path.suffix!r}")
    if bits in (16, 32) and fmt in DEEP_FORMATS:
        _write_deep(image, path, alpha, bits)
        return
    options: dict[str, object] = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    pil = to_pil(image)
    if fmt in _ICC_FORMATS:
        pil = from_srgb(pil, icc) if icc is not None else pil
        options["icc_profile"] = icc or SRGB_ICC
    if alpha is not None and fmt in _ALPHA_FORMATS:
        pil.putalpha(alpha.resize(pil.size, Image.Resampling.LANCZOS))
    with atomic_path(path) as tmp:
        pil.save(tmp, format=fmt, **options)
