"""Frame patterns and ranges, as compositing and 3D packages write them, parsed by fileseq.

An input names a numbered sequence by a pattern in its file name:

- `plate.####.exr` or `plate.@@@@.exr`: one digit per sign (`#` alone: 4 digits, fileseq's and Shotgrid's);
- `plate.%04d.exr` (printf) or `plate.$F4.exr` (Houdini);
- with a range: `plate.1001-1100#.exr`, on twos `plate.1001-1100x2#.exr`, or any fileseq frame range
  (`1001-1010,1020-1030`); a config input may also give the range apart (`{path: plate.####.exr, frames: 1001-1100}`).

Without a range the pattern takes every frame on disk that it matches; with one, the frames of the range,
and those missing from the disk are named in a warning (the sequence stays one; its temporal chain restarts
after each gap). Frame numbers, padding and names are kept: `plate.1001.exr` stays `plate.1001.<ext>`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import fileseq

_PRINTF = re.compile(r"%0?\d*d|\$F\d*")


class PatternError(ValueError):
    """A frame pattern or range that cannot be used; the message is one line."""


def is_pattern(entry: str) -> bool:
    """Whether an input entry's file name holds a frame pattern (#, @, %04d or $F4)."""
    name = Path(entry).name
    return "#" in name or "@" in name or bool(_PRINTF.search(name))


@dataclass(frozen=True)
class Frames:
    """The frames a pattern names: (number, file) in order, those of its range missing from disk, and its step."""

    pattern: str  # as given
    name: str  # the sequence's name: the file name before the number (`plate` of plate.####.exr)
    found: tuple[tuple[int, Path], ...]
    missing: tuple[int, ...]
    step: int

    @property
    def gaps(self) -> tuple[int, ...]:
        """Indices into `found` of the frames that follow missing ones."""
        numbers = [n for n, _ in self.found]
        return tuple(i for i in range(1, len(numbers)) if numbers[i] - numbers[i - 1] != self.step)


def frame_range(frames: str) -> fileseq.FrameSet:
    """The frames of a range in fileseq's syntax; raises PatternError for one it does not read."""
    try:
        return fileseq.FrameSet(frames)
    except (fileseq.ParseException, ValueError):
        raise PatternError(f"frames: {frames!r} is not a frame range (1001-1100, 1001-1100x2, …)") from None


def _sequence(entry: str, frames: str | None) -> fileseq.FileSequence:
    """The fileseq sequence of `entry`, with `frames` as its range; several #s are a digit each, one is four."""
    hashes = re.search(r"#+", Path(entry).name)
    style = fileseq.PAD_STYLE_HASH1 if hashes and len(hashes.group()) > 1 else fileseq.PAD_STYLE_HASH4
    try:
        seq = fileseq.FileSequence(entry, pad_style=style)
    except (fileseq.ParseException, ValueError) as exc:
        raise PatternError(f"{entry}: not a frame pattern or range fileseq reads ({exc})") from None
    ranged = frame_range(frames) if frames is not None else None
    if not seq.padding():
        raise PatternError(f"{entry}: no frame number pattern (#, @, %04d or $F4) in the file name")
    if ranged is not None:
        if seq.frameSet() is not None:
            raise PatternError(f"{entry}: has a frame range of its own and frames: {frames}; give one of them")
        seq.setFrameSet(ranged)
    return seq


def _on_disk(seq: fileseq.FileSequence) -> dict[int, Path]:
    """The files in the pattern's folder that it matches, by frame number (at least its padding in digits)."""
    folder = Path(seq.dirname() or ".")
    number = re.compile(rf"^{re.escape(seq.basename())}(-?\d+){re.escape(seq.extension())}$")
    found: dict[int, Path] = {}
    for path in folder.iterdir() if folder.is_dir() else ():
        m = number.match(path.name)
        digits = m.group(1).lstrip("-") if m else ""
        if m and (len(digits) == seq.zfill() or (len(digits) > seq.zfill() and not digits.startswith("0"))):
            found[int(m.group(1))] = path
    return found


def expand(entry: str, frames: str | None = None) -> Frames:
    """The frames `entry` (a pattern, see the module) names, with `frames` as its range when given.

    Raises PatternError when the pattern or range does not parse, or when no frame of it is on disk."""
    seq = _sequence(entry, frames)
    disk = _on_disk(seq)
    wanted = list(seq.frameSet()) if seq.frameSet() is not None else sorted(disk)
    found = tuple((n, disk[n]) for n in wanted if n in disk)
    if not found:
        where = f"frames {seq.frameSet()}" if seq.frameSet() is not None else "any frame"
        raise PatternError(f"{entry}: matches no file ({where} of {seq.format('{basename}{padding}{extension}')})")
    numbers = [n for n, _ in found]
    if seq.frameSet() is not None:
        steps = {b - a for a, b in zip(wanted, wanted[1:])}
        step = steps.pop() if len(steps) == 1 else 1
        expected = wanted
    else:
        step = math.gcd(*(b - a for a, b in zip(numbers, numbers[1:]))) if len(numbers) > 2 else 1
        expected = list(range(numbers[0], numbers[-1] + 1, step))
    name = seq.basename().rstrip("._- ") or Path(seq.dirname() or ".").resolve().name
    return Frames(entry, name, found, tuple(n for n in expected if n not in disk), step)


def ranges(numbers: list[int]) -> str:
    """`5, 9-10` for [5, 9, 10]; at most ten ranges, then a count."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    text = [str(a) if a == b else f"{a}-{b}" for a, b in runs]
    return ", ".join(text[:10]) + (f" and {len(text) - 10} more ranges" if len(text) > 10 else "")
