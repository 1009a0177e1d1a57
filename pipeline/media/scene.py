"""Scene-linear colour: plates into the working space VGG sees and back, through OpenColorIO.

One line of transforms, each exactly invertible on the values a plate holds:

    plate (color.input) --OCIO--> linear Rec.709 --view--> working [0, 1] --view⁻¹--> linear Rec.709
        --OCIO--> output (color.output)

The view is the sRGB transfer scaled so that diffuse white (1.0) sits at WHITE, with a logarithmic shoulder
above it that reaches 1.0 at HEADROOM: highlights up to HEADROOM times white survive a round trip, where a
display transform would clip them at 1.0. Values below 0 (outside Rec.709's gamut) and above HEADROOM clip.
A DPX in printing density goes through the Cineon log transfer (`cineon_to_linear`) instead of OCIO.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import PyOpenColorIO as ocio
import torch

BUILTIN = "cg-config-v2.2.0_aces-v1.3_ocio-v2.4"  # OCIO's built-in CG config, pinned: a newer one moves values
LINEAR = "Linear Rec.709 (sRGB)"  # the builtin config's name for the space the view starts from
WHITE = 0.8  # the working value of scene-linear 1.0
HEADROOM = 64.0  # the scene-linear value the shoulder reaches 1.0 at: six stops above white
_SRGB_SLOPE = WHITE * 1.055 / 2.4  # d(view)/dx at x = 1, where the shoulder takes over


class SceneError(ValueError):
    """An OCIO config or colour space that cannot be used; the message says which."""


def _shoulder_rate() -> float:
    """The shoulder's `a` in WHITE + (1 - WHITE)·ln(1 + a(x - 1)) / ln(1 + a(HEADROOM - 1)): the one whose slope
    at x = 1 is the sRGB part's, so that the view has no kink at white (bisection; the slope falls with a)."""
    lo, hi = 1e-6, 1e6
    for _ in range(200):
        a = math.sqrt(lo * hi)
        slope = (1 - WHITE) * a / math.log1p(a * (HEADROOM - 1))
        lo, hi = (a, hi) if slope < _SRGB_SLOPE else (lo, a)
    return math.sqrt(lo * hi)


_RATE = _shoulder_rate()
_SPAN = math.log1p(_RATE * (HEADROOM - 1))


def view(linear: np.ndarray) -> np.ndarray:
    """Scene-linear Rec.709 to working values in [0, 1] (see the module's docstring)."""
    x = torch.from_numpy(np.ascontiguousarray(linear, dtype=np.float32)).clamp(0.0, HEADROOM)
    out = x.clamp(max=1.0).pow_(1 / 2.4).mul_(1.055 * WHITE).sub_(0.055 * WHITE)  # sRGB's curve, then its ends:
    toe, high = x <= 0.0031308, x > 1.0
    out[toe] = x[toe] * (12.92 * WHITE)
    out[high] = WHITE + (1 - WHITE) / _SPAN * torch.log1p(_RATE * (x[high] - 1.0))
    return out.numpy()


def unview(working: np.ndarray) -> np.ndarray:
    """The inverse of `view`: working values in [0, 1] back to scene-linear Rec.709."""
    y = torch.from_numpy(np.ascontiguousarray(working, dtype=np.float32)).clamp(0.0, 1.0)
    out = (y.clamp(max=WHITE) * (1 / (1.055 * WHITE))).add_(0.055 / 1.055).pow_(2.4)
    toe, high = y <= 0.04045 * WHITE, y > WHITE
    out[toe] = y[toe] * (1 / (12.92 * WHITE))
    out[high] = 1.0 + torch.expm1((y[high] - WHITE) * (_SPAN / (1 - WHITE))) / _RATE
    return out.numpy()


# Kodak's Cineon conversion: code values 95 (black) and 685 (white) of 1023, 0.002 density a code, gamma 0.6.
_BLACK = 10 ** ((95 - 685) * 0.002 / 0.6)


def cineon_to_linear(code: np.ndarray) -> np.ndarray:
    """A DPX's printing-density code values (0..1 of 1023) to scene-linear, 1.0 at code 685."""
    return ((np.power(10.0, (code * 1023 - 685) * 0.002 / 0.6) - _BLACK) / (1 - _BLACK)).astype(np.float32)


def linear_to_cineon(linear: np.ndarray) -> np.ndarray:
    """The inverse of `cineon_to_linear` (values below black clip to code 95)."""
    x = np.maximum(linear * (1 - _BLACK) + _BLACK, _BLACK)
    return ((np.log10(x) * 0.6 / 0.002 + 685) / 1023).astype(np.float32)


@dataclass(frozen=True)
class SceneColor:
    """Where scene-linear plates come from and go to: an OCIO config (a file, an `ocio://` URI or a built-in
    name; empty: $OCIO, else BUILTIN) and colour spaces or roles in it (output empty: the input's)."""

    config: str = ""
    input: str = "scene_linear"
    output: str = ""

    @property
    def source(self) -> str:
        """The config used: `config`, else $OCIO, else the built-in CG config."""
        return self.config or os.environ.get("OCIO", "") or BUILTIN

    @property
    def written(self) -> str:
        """The colour space outputs are written in."""
        return self.output or self.input

    def of_outputs(self) -> SceneColor:
        """The colour of the outputs this one writes, for reading them back (a segment's frames, its seams)."""
        return SceneColor(self.config, self.written, self.written)

    def describe(self) -> str:
        """For job keys and the manifest: the spaces and the config, in one line."""
        return f"{self.input} -> {self.written} ({self.source})"

    def to_working(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) float32 in `input` to working values (see `view`)."""
        return view(_apply(self.source, self.input, LINEAR, rgb))

    def from_working(self, working: np.ndarray) -> np.ndarray:
        """(H, W, 3) working values to float32 in `written` (see `unview`)."""
        return _apply(self.source, LINEAR, self.written, unview(working))

    def check(self) -> None:
        """Raise SceneError unless the config loads and knows both spaces (and the view's start)."""
        _processor(self.source, self.input, LINEAR)
        _processor(self.source, LINEAR, self.written)


@lru_cache(maxsize=4)
def _config(source: str) -> ocio.Config:
    try:
        if source in {name for name, *_ in ocio.BuiltinConfigRegistry().getBuiltinConfigs()}:
            return ocio.Config.CreateFromBuiltinConfig(source)
        return ocio.Config.CreateFromFile(source)
    except ocio.Exception as exc:
        raise SceneError(f"OCIO config {source}: {exc}") from None


@lru_cache(maxsize=16)
def _processor(source: str, src: str, dst: str) -> ocio.CPUProcessor:
    try:
        return _config(source).getProcessor(src, dst).getDefaultCPUProcessor()
    except ocio.Exception as exc:
        raise SceneError(f"OCIO config {source}: {src} -> {dst}: {exc}") from None


def _apply(source: str, src: str, dst: str, rgb: np.ndarray) -> np.ndarray:
    """`rgb` converted from `src` to `dst` (a new float32 array; OCIO works in place)."""
    out = np.ascontiguousarray(rgb, dtype=np.float32).copy()
    _processor(source, src, dst).applyRGB(out)
    return out
