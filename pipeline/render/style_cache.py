"""Style targets, cached in memory and on disk so no style is encoded twice.

Entries are keyed by everything that changes them: the style images' bytes
and blend weights, the pixel area, the layers, the style loss, the model
weights and pooling, and luminance-only mode. Disk entries are written atomically and checked
before they are trusted; a corrupt entry is recomputed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline.core.losses import MEAN, layer_of
from pipeline.core.optimize import StyleTargets
from pipeline.media.digest import value_digest
from pipeline.media.images import atomic_path

_FORMAT = (
    2  # bump when the Gram computation or normalisation or the file layout changes (2: bf16 Grams of bf16 features)
)
_ZIP = b"PK\x03\x04"  # how every torch.save file starts
_SMALLEST = 512  # bytes: torch.save's zip of even one small tensor is larger


class StyleCache:
    """Memory first (the `MEMORY` most recently used target sets, on the device), then `cache_dir` (when
    given), then compute. The bound keeps a worker that meets many sizes (`output.size: original`, mixed
    aspect ratios) from filling its GPU with targets it will not use again."""

    MEMORY = 48  # target sets: a video or a folder at one size uses one per level and style

    def __init__(self, cache_dir: Path | None) -> None:
        self.dir = cache_dir
        self.memory: OrderedDict[str, StyleTargets] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(**parts: object) -> str:
        return value_digest({"format": _FORMAT, **parts})

    def _path(self, key: str) -> Path | None:
        return None if self.dir is None else self.dir / "styles" / f"{key}.pt"

    def _read(self, path: Path, names: list[str], device: torch.device) -> StyleTargets | None:
        try:
            with path.open("rb") as f:
                if f.read(len(_ZIP)) != _ZIP or path.stat().st_size < _SMALLEST:
                    return None  # empty, truncated or not torch.save's zip at all: never handed to torch.load
            data = torch.load(path, map_location=device, weights_only=True)
        except Exception:  # torch raises many types for a truncated or foreign file: a miss
            return None
        return data if _valid(data, names) else None

    def get(
        self, key: str, names: list[str], device: torch.device, compute: Callable[[], StyleTargets]
    ) -> StyleTargets:
        """The targets for `key`, named `names` (see `losses.target_names`), computing (and storing) them only
        when no valid copy exists."""
        if key in self.memory:
            self.hits += 1
            self.memory.move_to_end(key)
            return self.memory[key]
        path = self._path(key)
        targets = self._read(path, names, device) if path is not None and path.is_file() else None
        if targets is None:
            self.misses += 1
            targets = compute()
            if path is not None:
                with atomic_path(path) as tmp:
                    torch.save({k: v.detach().cpu() for k, v in targets.items()}, tmp)
        else:
            self.hits += 1
        self.memory[key] = targets
        while len(self.memory) > self.MEMORY:
            self.memory.popitem(last=False)
        return targets


def _valid(data: object, names: list[str]) -> bool:
    """Finite tensors named `names`, each sized by its layer's Gram (C, C): a mean (C,), a square root (C, C)."""
    if not isinstance(data, dict) or sorted(data) != sorted(names):
        return False
    if not all(isinstance(t, torch.Tensor) and torch.isfinite(t).all() for t in data.values()):
        return False
    channels = {k: t.shape[0] for k, t in data.items() if t.dim() == 2 and t.shape[0] == t.shape[1]}
    return all(
        layer_of(k) in channels and t.shape == (channels[layer_of(k)],) * (1 if k.endswith(MEAN) else 2)
        for k, t in data.items()
    )
