"""Tiles: the losses and gradients of images larger than the device holds, one piece at a time.

Pure tensor code, like `optimize`: it knows shapes, never files or devices.

The image is cut into pieces on a grid of multiples of ALIGN px. Each piece is
encoded in a crop that reaches a halo past it, so that the zero padding at the
crop's edges does not reach the piece's own feature positions, and only those
positions count. Sums over positions (Gram matrices, means, squared feature errors)
then add up over the pieces to the whole image's, to float tolerance, and so do
the gradients: see `optimize.TiledObjective`, which also moves the grid at
every evaluation, so that what error the halo leaves never stays on one line.
`seam_ratio` measures how much tile cuts show in a result.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from pipeline.core.losses import MEAN, layer_of

ALIGN = 16  # relu5_x sees 1/16 of the input: crops that start on multiples of 16 keep every layer's grid in step
HALO = 64  # px of context around a piece: features of relu5_1 at its edge then match the whole image's to ~1e-5
Span = tuple[int, int]


def stride(layer: str) -> int:
    """How many input pixels one position of `layer` spans: 2 per pool before it (relu3_1: 4)."""
    block = int(re.search(r"(\d+)", layer).group(1))  # type: ignore[union-attr]
    return 2 ** (block - 1 + layer.startswith("pool"))


def positions(shape: tuple[int, int], layer: str) -> int:
    """How many positions `layer` has for an input of `shape`."""
    s = stride(layer)
    return (shape[0] // s) * (shape[1] // s)


@dataclass(frozen=True)
class Tile:
    """One piece of an image and the crop it is encoded in (the piece and its halo, within the image)."""

    rows: Span
    cols: Span
    crop_rows: Span
    crop_cols: Span
    shape: tuple[int, int]  # the whole image's (height, width)

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        """This tile's crop of (…, H, W) `image` (a view)."""
        return image[..., self.crop_rows[0] : self.crop_rows[1], self.crop_cols[0] : self.crop_cols[1]]

    def placed(self, layer: str) -> tuple[slice, slice]:
        """Where this tile's piece lies in the whole image's features of `layer` (rows, columns)."""
        s = stride(layer)
        bottom = self.shape[0] // s if self.rows[1] == self.shape[0] else self.rows[1] // s
        right = self.shape[1] // s if self.cols[1] == self.shape[1] else self.cols[1] // s
        return slice(self.rows[0] // s, bottom), slice(self.cols[0] // s, right)

    def window(self, features: torch.Tensor, layer: str) -> torch.Tensor:
        """The positions of this tile's piece in `features` of `layer` computed on its crop."""
        s = stride(layer)
        top, left = self.crop_rows[0], self.crop_cols[0]
        bottom = features.shape[-2] if self.rows[1] == self.shape[0] else (self.rows[1] - top) // s
        right = features.shape[-1] if self.cols[1] == self.shape[1] else (self.cols[1] - left) // s
        return features[..., (self.rows[0] - top) // s : bottom, (self.cols[0] - left) // s : right]

    def sums(self, features: Mapping[str, torch.Tensor], names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Sums over the positions of this tile's piece, float32, from the features of its crop: per style
        statistic name (see `losses.statistic_names`), Σ F Fᵀ (N, C, C) for a layer, Σ F (N, C) for `layer.mean`."""
        out = {}
        for name in names:
            part = self.window(features[layer_of(name)], layer_of(name)).float().flatten(2)
            out[name] = part.sum(2) if name.endswith(MEAN) else part @ part.transpose(1, 2)
        return out


def halo_for(tile: int) -> int:
    """The halo inside crops of at most `tile` px: HALO, or a quarter of small tiles (then only approximate)."""
    return max(ALIGN, min(HALO, tile // 4 // ALIGN * ALIGN))


def grid(shape: tuple[int, int], tile: int, phase: float = 0.0) -> list[Tile]:
    """The tiles whose crops, at most `tile` × `tile` px, cover `shape` (pieces on multiples of ALIGN).

    `phase` in [0, 1) moves the cuts by that fraction of a piece (the first piece is then shorter).
    """
    h, w = shape
    halo = halo_for(tile)
    longest = max(ALIGN, (tile - 2 * halo) // ALIGN * ALIGN)
    shift = int(phase * longest) // ALIGN * ALIGN

    def spans(length: int) -> list[Span]:
        edges = sorted({0, *range(shift or longest, length, longest), length})
        return list(zip(edges, edges[1:]))

    def crop(span: Span, length: int) -> Span:
        return max(0, span[0] - halo), min(length, span[1] + halo)

    return [Tile(rows, cols, crop(rows, h), crop(cols, w), shape) for rows in spans(h) for cols in spans(w)]


def tiled_statistics(
    features: Callable[[torch.Tensor], Mapping[str, torch.Tensor]],
    image: torch.Tensor,
    names: Sequence[str],
    tiles: Sequence[Tile],
) -> dict[str, torch.Tensor]:
    """The style statistics `names` of (N, 3, H, W) `image` (Grams F Fᵀ / positions, means; see
    `losses.style_statistics`), from the crops of `tiles` (a `grid`): the whole image's to float tolerance
    (for tiles of 256 px and more), in the memory of one tile."""
    shape = tuple(image.shape[-2:])
    total: dict[str, torch.Tensor] = {}
    for t in tiles:
        for name, part in t.sums(features(t.crop(image)), names).items():
            total[name] = total[name] + part if name in total else part
    return {name: total[name] / positions(shape, layer_of(name)) for name in names}


def border_mask(tiles: Sequence[Tile], width: int = 1) -> torch.Tensor:
    """(H, W) bool: the pixels within `width` of a cut between two pieces (where seams would show)."""
    shape = tiles[0].shape
    mask = torch.zeros(shape, dtype=torch.bool)
    for t in tiles:
        for cut in {*t.rows} - {0, shape[0]}:
            mask[max(0, cut - width) : cut + width, t.cols[0] : t.cols[1]] = True
        for cut in {*t.cols} - {0, shape[1]}:
            mask[t.rows[0] : t.rows[1], max(0, cut - width) : cut + width] = True
    return mask


def seam_ratio(image: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean gradient energy of (1, 3, H, W) `image` on the `mask` pixels over its mean elsewhere (1.0: no seams)."""
    x = image[0].float()
    energy = torch.zeros_like(x[0])
    energy[:-1] += (x[:, 1:] - x[:, :-1]).pow(2).sum(0)
    energy[:, :-1] += (x[:, :, 1:] - x[:, :, :-1]).pow(2).sum(0)
    return float(energy[mask].mean() / energy[~mask].mean())
