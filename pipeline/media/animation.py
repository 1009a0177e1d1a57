"""Animated GIF and WebP files in and out (Pillow): probing, frames to PNG, frames back to an animated file.

Part of the shell: files only, no tensors. Every file is written atomically (a hidden temporary beside it,
then a rename). A GIF's frames are read composited per its disposal, as a viewer shows them. A GIF written
here has no transparency (transparent areas keep the colour stylised under them) and up to 256 adaptive
colours per frame; a WebP keeps the frames' alpha. Consecutive identical frames are merged into one, with
their durations summed, by the encoders.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from PIL import Image

from pipeline.media.images import atomic_path

ANIMATION_SUFFIXES = frozenset({".gif", ".webp"})
_FORMATS = {".gif": "GIF", ".webp": "WEBP"}
_STILL_FPS = Fraction(10)  # the pace viewers give frames that claim no duration


class AnimationError(ValueError):
    """An animated image cannot be read or written; the message is one line that names the file."""


@dataclass(frozen=True)
class AnimationInfo:
    """What the pipeline needs to know about an animated image."""

    durations: tuple[int, ...]  # milliseconds, per frame
    loop: int | None  # the file's loop count (0: for ever); None: it has none (a GIF that plays once)
    width: int
    height: int

    @property
    def frames(self) -> int:
        return len(self.durations)

    @property
    def fps(self) -> Fraction:
        """The average frame rate."""
        total = sum(self.durations)
        return Fraction(1000 * self.frames, total) if total else _STILL_FPS


def _error(path: Path, problem: str) -> AnimationError:
    return AnimationError(" ".join(f"{path}: {problem}".splitlines()))


def frame_name(index: int) -> str:
    """The file name of frame `index` (from 1) in a frames folder."""
    return f"frame_{index:06d}.png"


def frame_count(path: Path) -> int:
    """Frames in the image file at `path` (1 for a still one); 0 when Pillow cannot open it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return int(getattr(im, "n_frames", 1))
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return 0


@contextmanager
def _one_line(path: Path, doing: str) -> Iterator[None]:
    """Pillow's errors inside (and its warnings of a corrupt file) become one AnimationError naming `path`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except AnimationError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise _error(path, f"{doing} ({exc})") from None


@contextmanager
def _reading(path: Path, doing: str = "not a readable animated image") -> Iterator[Image.Image]:
    """The open image at `path`; errors as `_one_line`."""
    with _one_line(path, doing), Image.open(path) as im:
        yield im


def probe(path: Path) -> AnimationInfo:
    """Per-frame durations, loop count and size of the animated GIF or WebP at `path`."""
    with _reading(path) as im:
        loop = im.info.get("loop")
        durations = []
        for index in range(im.n_frames):
            im.seek(index)
            if im.format == "WEBP":
                im.load()  # a WebP frame tells its duration once decoded
            durations.append(int(im.info.get("duration") or 0))
        return AnimationInfo(tuple(durations), loop, im.width, im.height)


def _write_frame(frame: Image.Image, path: Path) -> None:
    """Write one composited frame as PNG: RGBA where it has transparency, else RGB."""
    if frame.getextrema()[3] == (255, 255):
        frame = frame.convert("RGB")
    with atomic_path(path) as tmp:
        frame.save(tmp, format="PNG")


def extract_frames(path: Path, folder: Path) -> AnimationInfo:
    """Write every frame of `path`, composited, as `folder/frame_000001.png` ...

    A folder that already holds every frame is left alone (the folder is the source's, by its digest, and
    each frame is written atomically). A frame that does not decode raises AnimationError; the frames
    before it stay.
    """
    info = probe(path)
    names = [frame_name(i) for i in range(1, info.frames + 1)]
    if all((folder / name).is_file() for name in names):
        return info
    folder.mkdir(parents=True, exist_ok=True)
    with _reading(path) as im:
        for index, name in enumerate(names):
            with _one_line(path, f"cannot decode frame {index + 1} of {info.frames}"):
                im.seek(index)
                frame = im.convert("RGBA")
            _write_frame(frame, folder / name)
    return info


def _read_frames(frames: Sequence[Path], out: Path) -> list[Image.Image]:
    """The frames, decoded, all of the first one's size."""
    images = []
    for path in frames:
        with _one_line(out, f"frame {path} is missing or not a readable image"), Image.open(path) as im:
            image = im.convert("RGBA")
        if images and image.size != images[0].size:
            (w, h), (w0, h0) = image.size, images[0].size
            raise _error(out, f"frame {path} is {w}x{h}, not {w0}x{h0} like the first")
        images.append(image)
    return images


def assemble(frames: Sequence[Path], out: Path, durations: Sequence[int], loop: int | None) -> None:
    """Write `frames` (same-size images) as an animated GIF or WebP, by `out`'s suffix, frame i lasting
    `durations[i]` ms, with the loop count `loop` (None: a GIF without one, which plays once; a WebP
    then loops for ever). On failure AnimationError, and nothing is left at `out`."""
    fmt = _FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise _error(out, f"not an animated image format ({out.suffix!r})")
    if not frames or len(frames) != len(durations):
        raise _error(out, f"{len(frames)} frames for {len(durations)} durations")
    images = _read_frames(frames, out)
    if fmt == "GIF":  # no transparency: see the module's docstring
        images = [im.convert("RGB").quantize(colors=256) for im in images]
        options: dict = {"disposal": 2}
    else:
        options = {"quality": 95}
    if loop is not None:
        options["loop"] = loop
    try:
        with atomic_path(out) as tmp:
            images[0].save(
                tmp, format=fmt, save_all=True, append_images=images[1:], duration=list(durations), **options
            )
    except (OSError, ValueError) as exc:
        raise _error(out, f"cannot write animated image ({exc})") from None
