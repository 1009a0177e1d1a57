"""Inputs (files, folders, globs) to Sources."""

from __future__ import annotations

import glob
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from pipeline.images import IMAGE_SUFFIXES

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm"})
_NUMBERED = re.compile(r"^(?P<prefix>.*?)(?P<number>\d+)(?P<suffix>\.[^.]+)$")


class InputError(ValueError):
    """An input entry names nothing usable; the message is one line."""


@dataclass(frozen=True)
class Source:
    """One content input: `path` is the file (a folder for a sequence), `root` the folder its output mirrors from."""

    path: Path
    root: Path
    kind: str  # "image" | "video" | "sequence"
    frames: tuple[Path, ...] = ()  # a sequence's frame files, in order

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


def _real(path: Path) -> Path:
    """`path` with its symlinks resolved; a symlink loop is left as it is (its job fails with the reason)."""
    return Path(os.path.realpath(path))


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _walk(folder: Path, exclude: Path) -> Iterator[Path]:
    """Files under `folder`, sorted, skipping hidden entries and `exclude`."""
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and not _is_within(_real(here / d), exclude)
        )
        for name in sorted(filenames):
            if not name.startswith("."):
                yield here / name


def _sequence_frames(files: list[Path]) -> tuple[Path, ...] | None:
    """The files in frame order if they form one numbered sequence (one prefix and suffix,
    consecutive numbers, at least two frames), else None."""
    matches = [_NUMBERED.match(f.name) for f in files]
    if len(files) < 2 or not all(matches):
        return None
    if len({(m["prefix"], m["suffix"].lower()) for m in matches}) != 1:
        return None
    numbered = sorted((int(m["number"]), f) for m, f in zip(matches, files))
    numbers = [n for n, _ in numbered]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        return None
    return tuple(f for _, f in numbered)


def _group_sequences(candidates: list[Source]) -> list[Source]:
    """Replace the images of each folder that holds one numbered sequence by one `sequence` Source."""
    by_folder: dict[Path, list[Source]] = defaultdict(list)
    for source in candidates:
        if source.kind == "image":
            by_folder[source.path.parent].append(source)
    sequences = {
        folder: frames
        for folder, members in by_folder.items()
        if (frames := _sequence_frames([m.path for m in members]))
    }
    out: list[Source] = []
    emitted: set[Path] = set()
    for source in candidates:
        folder = source.path.parent
        if source.kind != "image" or folder not in sequences:
            out.append(source)
        elif folder not in emitted:  # first frame seen: the whole sequence goes here
            emitted.add(folder)
            root = source.root if folder != source.root else folder.parent  # keep the folder's name
            out.append(Source(path=folder, root=root, kind="sequence", frames=sequences[folder]))
    return out


def discover(inputs: Iterable[str], exclude: Path) -> list[Source]:
    """Expand inputs into Sources, in input order, each real file once.

    Folders are searched recursively; hidden files and anything inside
    `exclude` (the output dir) are skipped; files of other types inside a
    folder are ignored, but a file named directly must be an image or video.
    A sub-folder whose images are one numbered sequence (`frame_0001.png`, …)
    becomes one `sequence` Source.
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
            if kind is None:
                continue
            real = _real(file)
            if real in seen or _is_within(real, exclude):
                continue
            seen.add(real)
            sources.append(Source(path=file, root=root, kind=kind))
    return _group_sequences(sources)
