"""The fixed quality evaluator: one normalisation, used for every output compared, whatever made it.

Three figures on the bundled VGG-19, independent of any optimiser's own weighting:

* content: mean squared error of `relu4_2` features against the content image resized to the output's shape;
* gram: the mean over `relu1_1`..`relu5_1` of the mean squared error of Gram matrices divided by C·H·W
  (neural-style's normalisation), against the style image rescaled to the output's area;
* swd: the mean over the same layers of a sliced Wasserstein distance: the features (C × H·W) projected on
  128 fixed random unit directions per layer, each projection sorted, and the sorted values compared by
  mean squared error (the style's, resampled to the output's count where the areas differ by rounding).

Two style figures, so that no single normalisation decides what "better" means: the Gram figure sees
second moments only, the sliced distance sees each direction's whole distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.core.optimize import resize, style_area_shape
from pipeline.core.vgg import VGGFeatures
from pipeline.media.images import read_image
from pipeline.media.weights import resolve_weights

CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = tuple(f"relu{i}_1" for i in range(1, 6))
PROJECTIONS = 128


@dataclass(frozen=True)
class Scores:
    content: float
    gram: float
    swd: float

    def dominates(self, other: Scores, slack: float = 0.0) -> bool:
        """True when this is no worse than `other` on all three figures (within `slack`, a fraction)."""
        return all(
            mine <= theirs * (1 + slack)
            for mine, theirs in ((self.content, other.content), (self.gram, other.gram), (self.swd, other.swd))
        )


def _directions(channels: int, layer: int) -> torch.Tensor:
    """PROJECTIONS fixed random unit vectors of `channels` dimensions, the same on every run and machine."""
    g = torch.Generator().manual_seed(1000 + layer)
    d = torch.randn(PROJECTIONS, channels, generator=g, dtype=torch.float64)
    return (d / d.norm(dim=1, keepdim=True)).float()


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: torch.Tensor) -> float:
    """Mean squared difference of the sorted projections of (C, M) features `a` and (C, K) features `b`."""
    pa = (directions @ a).sort(dim=1).values
    pb = (directions @ b).sort(dim=1).values
    if pb.shape[1] != pa.shape[1]:  # quantiles of the style resampled to the output's count
        pb = F.interpolate(pb[None], size=pa.shape[1], mode="linear", align_corners=True)[0]
    return (pa - pb).pow(2).mean().item()


def gram_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error of the Grams of (C, M) features `a` and (C, K) features `b`, each divided by C·M."""
    ga = a @ a.T / a.numel()
    gb = b @ b.T / b.numel()
    return (ga - gb).pow(2).mean().item()


class Evaluator:
    def __init__(self) -> None:
        self.model = VGGFeatures(resolve_weights("bundled"), (CONTENT_LAYER, *STYLE_LAYERS))

    def score(self, output: Path, content: Path, style: Path) -> Scores:
        """Scores of the image file `output`."""
        return self.score_image(read_image(output), read_image(content), read_image(style))

    @torch.inference_mode()
    def score_image(self, out: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> Scores:
        """Scores of a (1, 3, H, W) RGB [0, 1] image against full-size content and style images."""
        shape = tuple(out.shape[-2:])
        content_img = resize(content, shape)
        style_img = resize(style, style_area_shape(style, shape[0] * shape[1]))
        fo, fc, fs = self.model(out), self.model(content_img), self.model(style_img)
        content_loss = torch.mean((fo[CONTENT_LAYER] - fc[CONTENT_LAYER]) ** 2).item()
        grams, swds = [], []
        for i, layer in enumerate(STYLE_LAYERS):
            a, b = fo[layer][0].flatten(1), fs[layer][0].flatten(1)
            grams.append(gram_error(a, b))
            swds.append(sliced_wasserstein(a, b, _directions(a.shape[0], i)))
        return Scores(content=content_loss, gram=sum(grams) / len(grams), swd=sum(swds) / len(swds))
