"""A worker's style images and their targets: each image read and hashed once, its targets taken from the
style cache or computed there once per (style blend, area, style loss)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from pipeline.core.losses import target_names
from pipeline.core.optimize import Settings, StyleTargets, style_area, style_targets
from pipeline.core.vgg import VGGFeatures
from pipeline.media.images import image_digest, read_image
from pipeline.render.style_cache import StyleCache


class StyleSource:
    """Style targets for one model and its settings, on `device`, through `cache`."""

    def __init__(self, model: VGGFeatures, settings: Settings, cache: StyleCache, device: torch.device) -> None:
        self.model, self.settings, self.cache, self.device = model, settings, cache, device
        self._images: dict[Path, torch.Tensor] = {}
        self._digests: dict[Path, str] = {}

    def image(self, path: Path) -> torch.Tensor:
        """A style image at its full size, kept on the CPU (each level takes a rescaled copy to the device)."""
        if path not in self._images:
            self._images[path] = read_image(path)
        return self._images[path]

    def digest(self, path: Path) -> str:
        """The style image's digest (for the cache's keys; see `images.image_digest`), hashed once."""
        if path not in self._digests:
            self._digests[path] = image_digest(path)
        return self._digests[path]

    def targets(
        self,
        blend: Sequence[tuple[Path, float]],
        shapes: Sequence[tuple[int, int]],
        tile_side: int = 0,
        style_scale: float = 1.0,
    ) -> list[StyleTargets]:
        """Style targets for each level shape: the style images are rescaled to the level's area times
        `style_scale`² (see `style_area`), in tiles when the style image, rescaled, is over `tile_side`
        (see `style_targets`)."""
        s = self.settings
        layers = list(s.style_layers)
        out = []
        for area in (style_area(shape, style_scale) for shape in shapes):
            key = StyleCache.key(
                styles=[(self.digest(p), wt) for p, wt in blend],
                area=area,
                layers=sorted(layers),
                weights=self.model.identity,
                pooling=self.model.pooling,
                luminance=s.preserve_colors,
                loss=s.style_loss,
            )

            def compute(area: int = area) -> StyleTargets:
                styles = [(self.image(p).to(self.device), wt) for p, wt in blend]
                return style_targets(self.model, styles, area, layers, s.preserve_colors, tile_side, s.style_loss)

            out.append(self.cache.get(key, target_names(layers, s.style_loss), self.device, compute))
        return out

    def counted(
        self, blend: Sequence[tuple[Path, float]], shapes: Sequence[tuple[int, int]], tile_side: int, style_scale: float
    ) -> tuple[list[StyleTargets], int, int, float]:
        """`targets(blend, shapes, tile_side, style_scale)`, with the cache hits and misses it took and its seconds."""
        hits, misses, start = self.cache.hits, self.cache.misses, time.perf_counter()
        targets = self.targets(blend, shapes, tile_side, style_scale)
        return targets, self.cache.hits - hits, self.cache.misses - misses, time.perf_counter() - start
