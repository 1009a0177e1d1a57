"""The fixed quality evaluator: one normalisation, used for every output compared.

Gatys et al. (2016) losses on the bundled VGG-19, independent of any
optimiser's own weighting:

* content: mean squared error of `relu4_2` features against the content image
  resized to the output's shape;
* style: the mean over `relu1_1`..`relu5_1` of E_l = 1/(4 N_l² M_l²) Σ (G_l − A_l)²,
  with unnormalised Grams, against the style image rescaled to the output's area.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.images import read_image
from pipeline.model import VGGFeatures, resolve_weights
from pipeline.optimize import resize, style_area_shape

CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = tuple(f"relu{i}_1" for i in range(1, 6))


@dataclass(frozen=True)
class Scores:
    content: float
    style: float


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
        style_terms = []
        for layer in STYLE_LAYERS:
            a, b = fo[layer][0].flatten(1), fs[layer][0].flatten(1)
            n, m = a.shape
            ga, gb = a @ a.T, b @ b.T
            # A = G of the style at its own M; rescale it to the output's M (areas match to rounding).
            gb = gb * (m / b.shape[1])
            style_terms.append(((ga - gb) ** 2).sum().item() / (4 * n**2 * m**2))
        return Scores(content=content_loss, style=sum(style_terms) / len(style_terms))
