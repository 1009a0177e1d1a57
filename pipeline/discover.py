"""Inputs (files, folders, globs) to Sources."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from pipeline.images import IMAGE_SUFFIXES

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm"})


class InputError(ValueError):
    """An input entry names nothing usable; the message is one line."""


@dataclass(frozen=True)
class Source:
    """One content input: `path` is the file, `root` the folder its output mirrors from."""

    path: Path
    root: Path
    kind: str  # "image" | "video"

    @property
    def relative(self) -> Path:
        return self.path.relative_to(self.root)


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _walk(folder: Path, exclude: Path) -> Iterator[Path]:
    """Files under `folder`, sorted, skipping hidden entries and `exclude`."""
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and not _is_within((here / d).resolve(), exclude)
        )
        for name in sorted(filenames):
            if not name.startswith("."):
                yield here / name


def discover(inputs: Iterable[str], exclude: Path) -> list[Source]:
    """Expand inputs into Sources, in input order, each real file once.

    Folders are searched recursively; hidden files and anything inside
    `exclude` (the output dir) are skipped; files of other types inside a
    folder are ignored, but a file named directly must be an image or video.
    """
    exclude = exclude.resolve()
    seen: set[Path] = set()
    sources: list[Source] = []
    for i, entry in enumerate(inputs):
        path = Path(entry)
        if glob.has_magic(entry):
            matches = [Path(m) for m in sorted(glob.glob(entry, recursive=True))]
            candidates = [(m, m.parent) for m in matches if m.is_file() and not m.name.startswith(".")]
        elif path.is_dir():
            candidates = [(f, path) for f in _walk(path, exclude)]
        elif path.is_file():
            if _kind(path) is None:
                raise InputError(f"inputs[{i}]: {path}: not an image or video file")
            candidates = [(path, path.parent)]
        else:
            raise InputError(f"inputs[{i}]: {path}: no such file or folder")
        if not candidates:
            raise InputError(f"inputs[{i}]: {entry}: matches no files")
        for file, root in candidates:
            kind = _kind(file)
            real = file.resolve()
            if kind is None or real in seen or _is_within(real, exclude):
                continue
            seen.add(real)
            sources.append(Source(path=file, root=root, kind=kind))
    return sources
