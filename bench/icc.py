"""ICC test charts: matrix/TRC ICC v2 profiles built byte by byte from published primaries, a patch chart, and
the colorimetric conversion into sRGB worked out by hand (numpy), not by LittleCMS. For tests/test_color.py
and `make bench-plates`."""

from __future__ import annotations

import struct

import numpy as np

D50 = (0.9642, 1.0, 0.8249)
# Colorants adapted to D50 (Bradford), columns r, g, b: the matrices of the published profiles.
ADOBE_RGB = np.array([[0.60974, 0.20528, 0.14919], [0.31111, 0.62567, 0.06322], [0.01947, 0.06087, 0.74457]])
WIDE_GAMUT = np.array([[0.71637, 0.10099, 0.14689], [0.25870, 0.72467, 0.01664], [0.00000, 0.05121, 0.77324]])
ADOBE_RGB_GAMMA, WIDE_GAMUT_GAMMA = 563 / 256, 2.2  # the published tone curves
SRGB_D50 = np.array([[0.43607, 0.38515, 0.14307], [0.22249, 0.71687, 0.06061], [0.01392, 0.09708, 0.71410]])


def _s15(values) -> bytes:
    return b"".join(struct.pack(">i", round(v * 65536)) for v in values)


def _desc(text: str) -> bytes:
    ascii_ = text.encode() + b"\0"
    return b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + b"\0" * 8 + b"\0\0\0" + b"\0" * 67


def icc_profile(name: str, colorants: np.ndarray, gamma: float) -> bytes:
    """A display RGB ICC v2 profile: D50 white, `colorants` (XYZ columns r, g, b), one gamma curve per channel."""
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    xyz = [b"XYZ \0\0\0\0" + _s15(colorants[:, i]) for i in range(3)]
    tags = [
        (b"desc", _desc(name)),
        (b"wtpt", b"XYZ \0\0\0\0" + _s15(D50)),
        (b"cprt", b"text\0\0\0\0public domain\0\0\0"),
        *zip((b"rXYZ", b"gXYZ", b"bXYZ"), xyz),
        *((sig, curve) for sig in (b"rTRC", b"gTRC", b"bTRC")),
    ]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = struct.pack(">I4sI4s4s4s", size, b"\0\0\0\0", 0x02100000, b"mntr", b"RGB ", b"XYZ ")
    header += b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + _s15(D50) + b"\0" * 48
    return header + struct.pack(">I", len(tags)) + table + data


def expected_srgb(rgb8: np.ndarray, colorants: np.ndarray, gamma: float) -> np.ndarray:
    """The colorimetric conversion by hand: decode, to XYZ (D50), to linear sRGB, clip, sRGB's curve. `gamma` is
    taken as `icc_profile` stores it (in 1/256ths)."""
    linear = (rgb8 / 255.0) ** (round(gamma * 256) / 256)
    srgb = (linear @ colorants.T) @ np.linalg.inv(SRGB_D50).T
    srgb = srgb.clip(0, 1)
    return np.where(srgb <= 0.0031308, 12.92 * srgb, 1.055 * srgb ** (1 / 2.4) - 0.055)


def chart(seed: int = 0) -> np.ndarray:
    """A 24 × 32 patch chart: random colours, the primaries and greys."""
    rng = np.random.default_rng(seed)
    patches = rng.integers(0, 256, (6, 8, 3))
    patches[0, :3] = np.eye(3, dtype=int) * 255
    patches[0, 3:6] = [[0, 0, 0], [128, 128, 128], [255, 255, 255]]
    return patches.repeat(4, 0).repeat(4, 1).astype(np.uint8)
