"""Inputs (files, folders, globs) to Sources."""

from __future__ import annotations

import glob
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pipeline.batch.frames import PatternError, expand, is_pattern, ranges
from pipeline.batch.manifest import MANIFEST_NAME, RUN_FILES, Manifest
from pipeline.media.animation import ANIMATION_SUFFIXES, frame_count
from pipeline.media.images import IMAGE_SUFFIXES

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm"})


class Ranged(Protocol):
    """An input that is a frame pattern with its range apart (the config's `{path: ..., frames: ...}`)."""

    path: str
    frames: str


Entry = str | Ranged  # an input: a file, folder, glob or frame pattern; or a pattern and its range
_NUMBERED = re.compile(r"^(?P<prefix>.*?)(?P<number>\d+)(?P<suffix>\.[^.]+)$")


class InputError(ValueError):
    """An input entry names nothing usable; the message is one line."""


@dataclass(frozen=True)
class Source:
    """One content input: `path` is the file (a folder for a sequence), `root` the folder its output mirrors from."""

    path: Path
    root: Path
    kind: str  # "image" | "video" | "sequence" | "animation" (a GIF or WebP of more than one frame)
    frames: tuple[Path, ...] = ()  # a sequence's frame files, in order
    gaps: tuple[int, ...] = ()  # indices into frames of those that follow missing frames

    @property
    def relative(self) -> Path:
        return self.path.relative_to(self.root)


def _kind(path: Path) -> str | None:
    """image, video or animation by the suffix (and, for GIF and WebP, the frame count); None: unsupported."""
    suffix = path.suffix.lower()
    if suffix in ANIMATION_SUFFIXES and frame_count(path) > 1:
        return "animation"
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
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not _is_within(_real(here / d), exclude))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield here / name


def _numbered(files: list[Path]) -> dict[tuple[str, str], list[tuple[int, Path]]]:
    """The numbered files, grouped by (prefix, suffix) and sorted by number."""
    groups: dict[tuple[str, str], list[tuple[int, Path]]] = defaultdict(list)
    for f in files:
        if m := _NUMBERED.match(f.name):
            groups[(m["prefix"], m["suffix"].lower())].append((int(m["number"]), f))
    return {k: sorted(v) for k, v in groups.items()}


def _is_sequence(numbers: list[int]) -> bool:
    """Two or more consecutive numbers, or three or more with fewer numbers missing than present."""
    if len(set(numbers)) != len(numbers) or len(numbers) < 2:
        return False
    step = _step(numbers)
    span = (numbers[-1] - numbers[0]) // step + 1
    return span == len(numbers) if len(numbers) == 2 else span - len(numbers) < len(numbers)


def _step(numbers: list[int]) -> int:
    """The frame step: 2 for 1001, 1003, 1005 (three frames at least), else 1."""
    step = math.gcd(*(b - a for a, b in zip(numbers, numbers[1:])))
    return step if len(numbers) >= 3 and step > 1 else 1


def _sequence(folder: Path, members: list[Path]) -> tuple[tuple[Path, ...], tuple[int, ...], str | None] | None:
    """The folder's sequence: its frames in order, the indices that follow a gap and a warning naming the
    missing numbers; None when no group of numbered files forms one (the largest group wins)."""
    candidates = [g for g in _numbered(members).items() if _is_sequence([n for n, _ in g[1]])]
    if not candidates:
        return None
    (prefix, suffix), numbered = max(candidates, key=lambda g: len(g[1]))
    numbers = [n for n, _ in numbered]
    step = _step(numbers)
    gaps = tuple(i for i in range(1, len(numbers)) if numbers[i] - numbers[i - 1] != step)
    missing = sorted(set(range(numbers[0], numbers[-1] + 1, step)) - set(numbers))
    warning = None
    if missing:
        pattern = f"{prefix}{'#' * len(_NUMBERED.match(numbered[0][1].name)['number'])}{suffix}"
        warning = (
            f"{folder}: frames {ranges(missing)} missing from {pattern}; the temporal chain restarts after each gap"
        )
    return tuple(f for _, f in numbered), gaps, warning


def _group_sequences(candidates: list[Source]) -> tuple[list[Source], list[str]]:
    """Replace the frames of each folder's numbered sequence by one `sequence` Source (the folder's other
    images stay images); returns the sources and a warning for each sequence with missing frames."""
    by_folder: dict[Path, list[Path]] = defaultdict(list)
    for source in candidates:
        if source.kind == "image":
            by_folder[source.path.parent].append(source.path)
    sequences = {folder: found for folder, members in by_folder.items() if (found := _sequence(folder, members))}
    out: list[Source] = []
    for source in candidates:
        folder = source.path.parent
        if source.kind != "image" or folder not in sequences or source.path not in sequences[folder][0]:
            out.append(source)
        elif source.path == sequences[folder][0][0]:  # the first frame: the whole sequence goes here
            frames, gaps, _ = sequences[folder]
            root = source.root if folder != source.root else folder.parent  # keep the folder's name
            out.append(Source(path=folder, root=root, kind="sequence", frames=frames, gaps=gaps))
    return out, [w for _, _, w in sequences.values() if w]


@dataclass(frozen=True)
class Discovery:
    """What the inputs hold: the Sources, and what was passed over, for the run's warnings."""

    sources: list[Source]
    skipped: dict[str, int] = field(default_factory=dict)  # files of unsupported types, per extension
    earlier: int = 0  # files that an earlier run's manifest lists as its outputs (or its report files)
    warnings: tuple[str, ...] = ()  # sequences with missing frames

    def notes(self) -> list[str]:
        """One warning line per kind of file passed over, then the sequences' warnings."""
        lines = list(self.warnings)
        if self.skipped:
            counts = ", ".join(f"{n} {ext}" for ext, n in sorted(self.skipped.items()))
            lines.append(f"skipped {sum(self.skipped.values())} files of unsupported types: {counts}")
        if self.earlier:
            lines.append(f"skipped {self.earlier} files that an earlier stylize run wrote (its manifest lists them)")
        return lines


class _RunFiles:
    """The outputs and report files of the stylize runs whose manifests lie in a folder or above it."""

    def __init__(self) -> None:
        self.memo: dict[Path, frozenset[Path]] = {}

    def __call__(self, folder: Path) -> frozenset[Path]:
        if folder not in self.memo:
            here: frozenset[Path] = frozenset()
            if (folder / MANIFEST_NAME).is_file() and (records := Manifest(folder).records):
                here = frozenset({folder / rel for rel in records} | {folder / name for name in RUN_FILES})
            self.memo[folder] = here | (self(folder.parent) if folder.parent != folder else frozenset())
        return self.memo[folder]


def _candidates(i: int, entry: str, exclude: Path) -> list[tuple[Path, Path]]:
    """(file, root) pairs for one input entry; raises InputError when it names nothing usable."""
    path = Path(entry)
    if glob.has_magic(entry):
        matches = [Path(m) for m in sorted(glob.glob(entry, recursive=True))]
        candidates = [(m, m.parent) for m in matches if m.is_file() and not m.name.startswith(".")]
    elif path.is_dir():
        if _is_within(exclude, _real(path)):
            raise InputError(
                f"inputs[{i}]: {path}: the output dir {exclude} is this folder or lies inside it; "
                "write the outputs somewhere else"
            )
        candidates = [(f, path) for f in _walk(path, exclude)]
    elif path.is_file():
        if _kind(path) is None:
            raise InputError(f"inputs[{i}]: {path}: not an image or video file")
        return [(path, path.parent)]
    else:
        raise InputError(f"inputs[{i}]: {path}: no such file or folder")
    if not candidates:
        raise InputError(f"inputs[{i}]: {entry}: matches no files")
    return candidates


def _pattern(i: int, entry: str, frames: str | None, seen: set[Path]) -> tuple[Source | None, str | None]:
    """The sequence a frame pattern names (see `frames`), less frames already seen, and the warning that names
    its missing frames; raises InputError where the pattern or range does not parse or matches no file."""
    try:
        found = expand(entry, frames)
    except PatternError as exc:
        raise InputError(f"inputs[{i}]: {exc}") from None
    first = found.found[0][1]
    if _kind(first) != "image":
        raise InputError(f"inputs[{i}]: {entry}: {first.suffix or 'extensionless'} frames are not images stylize reads")
    files = tuple(f for _, f in found.found if _real(f) not in seen)
    seen.update(_real(f) for f in files)
    warning = None
    if found.missing:
        warning = f"{entry}: frames {ranges(list(found.missing))} missing; the temporal chain restarts after each gap"
    if not files:
        return None, warning
    folder = first.parent
    gaps = found.gaps if len(files) == len(found.found) else ()
    return Source(path=folder / found.name, root=folder, kind="sequence", frames=files, gaps=gaps), warning


def discover(inputs: Iterable[Entry], exclude: Path) -> Discovery:
    """Expand inputs into Sources, in input order, each real file once.

    Folders are searched recursively; hidden files, anything inside `exclude`
    (the output dir, which must not be an input folder or lie inside one) and
    what an earlier run's manifest lists as its outputs are skipped; files of
    other types inside a folder are counted and passed over, but a file named
    directly must be an image or video. A GIF or WebP of more than one frame is
    an `animation`, stylised as a clip. A folder's numbered images
    (`frame_0001.png`, …) become one `sequence` Source, also with frames
    missing; so does a frame pattern (`plate.####.png`, `plate.1001-1100#.png`,
    or a (pattern, range) pair: see `frames`). Raises InputError when the
    inputs hold files but none to stylise.
    """
    exclude = _real(exclude)
    seen: set[Path] = set()
    sources: list[Source] = []
    skipped: Counter[str] = Counter()
    earlier = 0
    run_files = _RunFiles()
    warned: list[str] = []
    for i, item in enumerate(inputs):
        entry, frames = (item, None) if isinstance(item, str) else (item.path, item.frames)
        if frames is not None or (is_pattern(entry) and not Path(entry).exists()):
            source, warning = _pattern(i, entry, frames, seen)
            sources += [source] if source is not None else []
            warned += [warning] if warning else []
            continue
        named = Path(entry).is_file() and not glob.has_magic(entry)
        for file, root in _candidates(i, entry, exclude):
            real = _real(file)
            if real in seen or _is_within(real, exclude):
                continue
            if not named and file.absolute() in run_files(file.parent.absolute()):
                earlier += 1
                continue
            seen.add(real)
            if (kind := _kind(file)) is None:
                skipped[file.suffix.lower() or "(no extension)"] += 1
            else:
                sources.append(Source(path=file, root=root, kind=kind))
    found = Discovery([], dict(skipped), earlier)
    if not sources and (skipped or earlier):
        raise InputError(f"the inputs hold no image or video to stylise: {found.notes()[-1]}")
    sources, warnings = _group_sequences(sources)
    return Discovery(sources, dict(skipped), earlier, tuple(warned + warnings))
