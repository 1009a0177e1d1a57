"""Colour management of images: ICC-tagged inputs into sRGB, the display-referred space VGG was trained in,
and sRGB-tagged outputs. LittleCMS converts, through Pillow's ImageCms.

An input without a profile, or with an sRGB one, is taken as it is (no conversion, not a level moved). Any
other embedded profile (Display P3, Adobe RGB, a wide-gamut or a CMYK profile, a grey one) is converted to sRGB
with its rendering intent: LittleCMS's perceptual intent, which matrix profiles take as relative colorimetric.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

from PIL import Image, ImageCms

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
_ICC = SRGB.tobytes()  # its header's creation date (bytes 24-36) is the time of createProfile: fixed below
# Embedded in every 8-bit output that can hold it (PNG, JPEG, WebP, TIFF), dated 2000-01-01 so that the same
# render makes the same bytes in every process.
SRGB_ICC = _ICC[:24] + struct.pack(">6H", 2000, 1, 1, 0, 0, 0) + _ICC[36:]
_INPUT_MODES = frozenset({"RGB", "RGBA", "L", "CMYK"})  # what LittleCMS converts from; others go through RGB


class ColorError(ValueError):
    """An input's embedded ICC profile cannot be read or applied; the message names the file."""


def embedded_profile(im: Image.Image, path: Path) -> ImageCms.ImageCmsProfile | None:
    """The ICC profile embedded in `im` (opened from `path`) unless it is sRGB's; None for none or sRGB."""
    icc = im.info.get("icc_profile")
    if not icc:
        return None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (OSError, ImageCms.PyCMSError) as exc:
        raise ColorError(f"{path}: cannot read its embedded ICC profile ({exc})") from None
    return None if "srgb" in describe(profile).lower() else profile


def describe(profile: ImageCms.ImageCmsProfile) -> str:
    """A profile's own one-line name ("Display P3", "Adobe RGB (1998)"), or 'unnamed ICC profile'."""
    name = (profile.profile.profile_description or "").strip()
    return " ".join(name.split()) or "unnamed ICC profile"


def to_srgb(im: Image.Image, path: Path) -> Image.Image:
    """`im` as RGB in sRGB: converted from its embedded profile (see `embedded_profile`), else `im.convert("RGB")`."""
    profile = embedded_profile(im, path)
    if profile is None:
        return im.convert("RGB")
    if im.mode not in _INPUT_MODES:
        im = im.convert("RGB")
    try:
        return ImageCms.profileToProfile(im, profile, SRGB, outputMode="RGB")
    except ImageCms.PyCMSError as exc:
        raise ColorError(
            f"{path}: cannot convert its {im.mode} pixels from {describe(profile)} to sRGB ({exc})"
        ) from None


def from_srgb(im: Image.Image, icc: bytes) -> Image.Image:
    """An sRGB RGB image converted into the RGB space of ICC profile `icc` (see `source_profile`)."""
    return ImageCms.profileToProfile(im, SRGB, ImageCms.ImageCmsProfile(io.BytesIO(icc)), outputMode="RGB")


def _file_profile(path: Path) -> tuple[ImageCms.ImageCmsProfile, bytes] | None:
    """`path`'s embedded profile (see `embedded_profile`) and its bytes; None for none, sRGB, and files that
    cannot be opened (their jobs fail when they are read, with the reason)."""
    try:
        with Image.open(path) as im:
            profile = embedded_profile(im, path)
            return (profile, im.info["icc_profile"]) if profile is not None else None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def source_profile(path: Path) -> bytes | None:
    """The ICC profile an output of `path` can carry back (`output.color: source`): its embedded profile where
    that is an RGB one other than sRGB; None for untagged, sRGB, grey or CMYK inputs and unreadable files."""
    found = _file_profile(path)
    return found[1] if found is not None and found[0].profile.xcolor_space.strip() == "RGB" else None


def source_space(path: Path) -> str | None:
    """The name of the colour space `path` is converted from, for job keys and the manifest: its embedded
    profile's (see `describe`) where that is not sRGB; None for untagged, sRGB and unreadable files."""
    found = _file_profile(path)
    return describe(found[0]) if found is not None else None
