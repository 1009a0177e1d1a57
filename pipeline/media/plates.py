"""Production plates: OpenEXR and DPX files, read and written with OpenImageIO.

A plate is read as float32 (H, W, C) with its header (`PlateInfo`); its colour channels go to the working
space through `scene` (EXR: OCIO from `color.input`; DPX in printing density: the Cineon log transfer; other
DPX: display-referred code values as they are). A plate written back keeps its source's header: the channel
names and the other channels (alpha, depth, AOVs) carried through, the compression and the attributes, and
the pixel type unless `output.depth` names another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import OpenImageIO as oiio

from pipeline.media.scene import SceneColor, cineon_to_linear, linear_to_cineon, unview, view

PLATE_SUFFIXES = frozenset({".exr", ".dpx"})
_LOG_TRANSFERS = frozenset({"printing density", "logarithmic"})  # DPX transfers that are Cineon log
_FLOAT = oiio.TypeDesc("float")


class PlateError(ValueError):
    """A plate that cannot be read or written; the message names the file and what is wrong."""


@dataclass(frozen=True)
class PlateInfo:
    """A plate's header, as far as the pipeline needs it."""

    height: int
    width: int
    channels: tuple[str, ...]
    pixel_type: str  # OIIO's name: half, float, uint16, uint8 ...
    bits: int  # bits per sample as stored (a DPX's 10)
    log: bool  # a DPX in printing density (Cineon log)

    @property
    def alpha(self) -> int | None:
        """The alpha channel's index (named A, or `layer.A`), or None."""
        names = [c.split(".")[-1].upper() for c in self.channels]
        return names.index("A") if "A" in names else None

    @property
    def depth(self) -> str:
        """'16-bit half', '32-bit float', '10-bit' ...: for warnings and the manifest."""
        kind = " half" if self.pixel_type == "half" else " float" if self.pixel_type in ("float", "double") else ""
        return f"{self.bits}-bit{kind}"


def _spec(path: Path) -> oiio.ImageSpec:
    inp = oiio.ImageInput.open(str(path))
    if inp is None:
        raise PlateError(f"{path}: cannot decode image ({_reason()})")
    try:
        return oiio.ImageSpec(inp.spec())
    finally:
        inp.close()


def _reason() -> str:
    """OpenImageIO's last error, in one line."""
    return " ".join(oiio.geterror().split()) or "unreadable"


def probe(path: Path) -> PlateInfo:
    """The plate's header; raises PlateError where it cannot be opened."""
    spec = _spec(path)
    transfer = str(spec.getattribute("dpx:Transfer") or "").lower()
    bits = spec.get_int_attribute("oiio:BitsPerSample", 0) or spec.format.size() * 8
    return PlateInfo(
        spec.height, spec.width, tuple(spec.channelnames), str(spec.format), bits, transfer in _LOG_TRANSFERS
    )


def _colour_channels(channels: tuple[str, ...]) -> list[int]:
    """Indices of R, G and B (by name, any case, last name part: `beauty.R`), else the first three; a single
    channel three times (grey)."""
    names = [c.split(".")[-1].upper() for c in channels]
    if all(c in names for c in "RGB"):
        return [names.index(c) for c in "RGB"]
    return [0, 1, 2] if len(channels) >= 3 else [0, 0, 0]


def read_pixels(path: Path) -> tuple[np.ndarray, PlateInfo]:
    """All the plate's channels as float32 (H, W, C) (NaN as 0, infinities at half's largest), and its header."""
    info = probe(path)
    inp = oiio.ImageInput.open(str(path))
    try:
        pixels = inp.read_image(0, 0, 0, len(info.channels), _FLOAT) if inp is not None else None
    finally:
        if inp is not None:
            inp.close()
    if pixels is None:
        raise PlateError(f"{path}: cannot decode image ({_reason()})")
    pixels = np.asarray(pixels, dtype=np.float32).reshape(info.height, info.width, len(info.channels))
    return np.nan_to_num(pixels, nan=0.0, posinf=65504.0, neginf=-65504.0), info


def to_working(pixels: np.ndarray, info: PlateInfo, color: SceneColor) -> np.ndarray:
    """The plate's colour channels as (H, W, 3) working values in [0, 1] (see `scene`)."""
    rgb = pixels[..., _colour_channels(info.channels)]
    if info.pixel_type.startswith("uint"):  # DPX: printing density, or display code values taken as they are
        return view(cineon_to_linear(rgb)) if info.log else np.clip(rgb, 0, 1)
    return color.to_working(rgb)


def _template(
    source: Path | None, path: Path, shape: tuple[int, int]
) -> tuple[np.ndarray | None, PlateInfo | None, oiio.ImageSpec]:
    """What an output at `path` of `shape` takes from its `source` (a plate of the same format): its pixels,
    resized to `shape` (the other channels are carried), its header and its spec; else Nones and a new RGB spec."""
    if source is None or source.suffix.lower() != path.suffix.lower():
        return None, None, oiio.ImageSpec(shape[1], shape[0], 3, "half")
    pixels, info = read_pixels(source)
    if pixels.shape[:2] != shape:
        pixels = cv2.resize(pixels, (shape[1], shape[0]), interpolation=cv2.INTER_AREA).reshape(*shape, -1)
    spec = _spec(source)
    spec.width, spec.height, spec.full_width, spec.full_height = shape[1], shape[0], shape[1], shape[0]
    return pixels, info, spec


def write_plate(working: np.ndarray, path: Path, source: Path | None, depth: str | int, color: SceneColor) -> str:
    """Write (H, W, 3) working values to `path` (EXR or DPX by its suffix) and return the pixel type written.

    With a `source` plate of the same format, its header goes with it and its other channels are carried (see
    the module's docstring); otherwise a new RGB one. `depth`: same (the source's pixel type; half for an EXR
    without one, 10-bit printing density for a DPX), or half, float, 8 or 16 where the format holds it (EXR:
    half, float; DPX: 8, 16)."""
    exr = path.suffix.lower() == ".exr"
    pixels, info, spec = _template(source, path, working.shape[:2])
    pixel_type = _pixel_type(exr, depth, info)
    spec.set_format(oiio.TypeDesc(pixel_type))
    spec.attribute("Software", "stylize")
    if exr:
        rgb = color.from_working(working)
    else:
        log = info.log if info is not None else True
        bits = 10 if depth == "same" and (info is None or info.bits == 10) else spec.format.size() * 8
        spec.attribute("oiio:BitsPerSample", bits)
        spec.attribute("dpx:Transfer", "Printing density" if log else "User defined")
        rgb = linear_to_cineon(unview(working)) if log else np.clip(working, 0, 1)
    out = rgb if pixels is None else pixels
    if pixels is not None:
        out[..., _colour_channels(info.channels)] = rgb
    target = oiio.ImageOutput.create(str(path))
    if target is None or not target.open(str(path), spec) or not target.write_image(np.ascontiguousarray(out)):
        raise PlateError(f"{path}: cannot write a {pixel_type} {path.suffix} image ({_reason()})")
    target.close()
    return pixel_type


def _pixel_type(exr: bool, depth: str | int, info: PlateInfo | None) -> str:
    """The pixel type an output gets for `depth` (see `write_plate`): the nearest the format holds, so that one
    output.depth serves a folder of mixed formats (an EXR asked for 16 gets half; a DPX asked for float, 16)."""
    if depth == "same" and info is not None and (info.pixel_type in ("half", "float")) == exr:
        return info.pixel_type
    if exr:
        return "float" if depth == "float" else "half"
    return "uint8" if depth == 8 else "uint16"
