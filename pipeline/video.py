"""Video files in and out: probing (PyAV), frames to PNG (OpenCV), frames to H.264 MP4 with audio (PyAV).

Part of the shell: files and arrays only, no tensors. Every file is written
atomically (a hidden temporary beside it, then a rename).
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import av
import cv2
import numpy as np

from pipeline.images import atomic_path

_MARKER = "complete.json"
_MP4_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "alac"})  # copied as is; anything else becomes AAC
_X264 = {"crf": "18"}


class VideoError(ValueError):
    """A video cannot be read or written; the message is one line that names the file and what is wrong."""


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know about a source video."""

    fps: Fraction  # average frame rate, exact
    frames: int  # frames that really decode
    width: int  # display size: a 90/270 degree rotation flag is applied, as OpenCV does
    height: int
    has_audio: bool
    claimed: int | None = None  # frames the container promises, when fewer decode (the stream breaks)


def _error(path: Path, problem: str) -> VideoError:
    return VideoError(" ".join(f"{path}: {problem}".splitlines()))


def _frame_name(index: int) -> str:
    return f"frame_{index:06d}.png"


def _stat(path: Path) -> os.stat_result:
    """The source's stat; VideoError if it is missing, not a file, or empty."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise _error(path, "file not found") from None
    except OSError as exc:
        raise _error(path, f"cannot read file ({exc.strerror})") from None
    if not path.is_file():
        raise _error(path, "not a file")
    if stat.st_size == 0:
        raise _error(path, "empty file")
    return stat


def _open(path: Path) -> av.container.InputContainer:
    _stat(path)
    try:
        return av.open(str(path))
    except av.FFmpegError as exc:
        raise _error(path, f"not a readable video ({exc.strerror})") from None


def _decodable(container: av.container.InputContainer) -> Iterator[av.VideoFrame]:
    """Frames of the first video stream, up to the first decoding error (a damaged or truncated stream)."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    try:
        yield from container.decode(stream)
    except av.FFmpegError:
        return


def _packets(path: Path) -> int:
    """Video packets the demuxer delivers (cheap: nothing is decoded)."""
    with _open(path) as container:
        stream = container.streams.video[0]
        try:
            return sum(1 for p in container.demux(stream) if p.size and not p.is_discard)
        except av.FFmpegError:
            return -1  # unreadable past some point: the caller then counts by decoding


def probe(path: Path) -> VideoInfo:
    """Frame rate, decodable frame count, display size and audio presence of the video at `path`.

    The container's frame count is trusted when the demuxer delivers exactly that many packets;
    otherwise (missing, truncated, damaged) the frames are counted by decoding.
    """
    with _open(path) as container:
        if not container.streams.video:
            raise _error(path, "no video stream")
        stream = container.streams.video[0]
        fps = stream.average_rate or stream.guessed_rate
        claimed = stream.frames
        has_audio = bool(container.streams.audio)
        if not fps:
            raise _error(path, "no frame rate")
        first = next(_decodable(container), None)
    if first is None:
        raise _error(path, "no decodable video frames")
    width, height = (first.height, first.width) if first.rotation % 180 == 90 else (first.width, first.height)
    if claimed and _packets(path) == claimed:
        frames = claimed
    else:
        with _open(path) as container:
            frames = sum(1 for _ in _decodable(container))
    return VideoInfo(Fraction(fps), frames, width, height, has_audio, claimed if claimed > frames else None)


# --- extract_frames ----------------------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def _source_stamp(path: Path) -> dict[str, int]:
    stat = _stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _finished(folder: Path, source: dict[str, int]) -> VideoInfo | None:
    """The stored info when `folder` holds a complete extraction of this very source file, else None."""
    try:
        data = json.loads((folder / _MARKER).read_text())
        if data["source"] != source:
            return None
        info = VideoInfo(Fraction(data["fps"]), data["frames"], data["width"], data["height"], data["has_audio"],
                         data.get("claimed"))
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None  # no marker, or a foreign or damaged one: extract again
    frames_there = all((folder / _frame_name(i)).is_file() for i in range(1, info.frames + 1))
    return info if frames_there else None


def _clear(folder: Path) -> None:
    """Remove the marker and frames (and temporaries) of an earlier extraction into `folder`."""
    (folder / _MARKER).unlink(missing_ok=True)
    for pattern in ("frame_[0-9][0-9][0-9][0-9][0-9][0-9].png", ".frame_*.part.png"):
        for stale in folder.glob(pattern):
            stale.unlink()


def _write_png(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise _error(path, "cannot write PNG")


def _write_frames(path: Path, folder: Path, info: VideoInfo) -> int:
    """Decode with OpenCV and write every frame; the number written. VideoError if decoding stops early."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        raise _error(path, "OpenCV cannot open the video")
    count = 0
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                break
            count += 1
            if image.shape[:2] != (info.height, info.width):
                h, w = image.shape[:2]
                raise _error(path, f"frame {count} is {w}x{h}, not {info.width}x{info.height}")
            _write_png(folder / _frame_name(count), image)
    finally:
        capture.release()
    if count < info.frames:
        kept = f"the {count} frames before it are in {folder}"
        raise _error(path, f"decoding stopped at frame {count + 1} of {info.frames}; {kept}")
    return count


def extract_frames(path: Path, folder: Path) -> VideoInfo:
    """Write every frame of `path` as `folder/frame_000001.png` ..., then `folder/complete.json`.

    A folder already complete for this source (same size and mtime) is left alone. A stream that
    breaks keeps the frames written so far, writes no marker and raises VideoError.
    """
    source = _source_stamp(path)
    done = _finished(folder, source)
    if done is not None:
        return done
    info = probe(path)
    folder.mkdir(parents=True, exist_ok=True)
    _clear(folder)
    info = replace(info, frames=_write_frames(path, folder, info))
    fps = f"{info.fps.numerator}/{info.fps.denominator}"
    _write_json(folder / _MARKER, {**asdict(info), "fps": fps, "source": source})
    return info


# --- assemble ----------------------------------------------------------------------------------


def _read_image(path: Path, out: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise _error(out, f"frame {path} is missing or not a readable image")
    return image


def _even(image: np.ndarray) -> np.ndarray:
    """Pad an odd height or width by one repeated edge row/column (yuv420p needs even sizes)."""
    h, w = image.shape[:2]
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else image


def _video_stream(container: av.container.OutputContainer, fps: Fraction, shape: tuple[int, ...]) -> av.VideoStream:
    stream = container.add_stream("libx264", rate=fps, options=_X264)
    stream.height, stream.width = shape[0] + shape[0] % 2, shape[1] + shape[1] % 2
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = 1 / fps
    return stream


def _encode_frames(container: av.container.OutputContainer, stream: av.VideoStream, frames: Sequence[Path],
                   first: np.ndarray, out: Path) -> None:
    for index, path in enumerate(frames):
        image = first if index == 0 else _read_image(path, out)
        if image.shape != first.shape:
            (h, w), (h0, w0) = image.shape[:2], first.shape[:2]
            raise _error(out, f"frame {path} is {w}x{h}, not {w0}x{h0} like the first")
        frame = av.VideoFrame.from_ndarray(_even(image), format="bgr24")
        frame.pts = index
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def _fits_mp4(audio: av.AudioStream) -> bool:
    return audio.codec_context.codec.canonical_name in _MP4_AUDIO


def _audio_stream(container: av.container.OutputContainer, audio: av.AudioStream) -> av.AudioStream:
    """The output stream for `audio`: its own codec when MP4 holds it, else AAC."""
    if _fits_mp4(audio):
        return container.add_stream_from_template(audio)
    return container.add_stream("aac", rate=audio.rate, layout=audio.layout)


def _start_offset(source: av.container.InputContainer, audio: av.AudioStream) -> int:
    """The source's first video timestamp in `audio` ticks: it becomes time zero, keeping sync."""
    ref = source.streams.video[0] if source.streams.video else audio
    start = (ref.start_time or 0) * ref.time_base
    return round(start / audio.time_base)


def _copy_audio(container: av.container.OutputContainer, source: av.container.InputContainer,
                audio: av.AudioStream, stream: av.AudioStream, end: Fraction) -> None:
    """Mux the source's audio packets unchanged, shifted to the video's time zero, up to `end` seconds."""
    offset = _start_offset(source, audio)
    for packet in source.demux(audio):
        if packet.dts is None:
            continue  # the demuxer's flush packet
        packet.dts -= offset
        if packet.pts is not None:
            packet.pts -= offset
        if packet.dts * audio.time_base >= end:
            break
        packet.stream = stream
        container.mux(packet)


def _transcode_audio(container: av.container.OutputContainer, source: av.container.InputContainer,
                     audio: av.AudioStream, stream: av.AudioStream, end: Fraction) -> None:
    """Decode the source's audio and encode it as AAC, shifted to the video's time zero, up to `end` seconds."""
    offset = _start_offset(source, audio)
    for frame in source.decode(audio):
        frame.pts -= offset
        if frame.pts * audio.time_base >= end:
            break
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def _encode(tmp: Path, frames: Sequence[Path], out: Path, fps: Fraction, audio_from: Path | None) -> None:
    first = _read_image(frames[0], out)
    with (
        av.open(str(tmp), "w", format="mp4", options={"movflags": "faststart"}) as container,
        _open(audio_from) if audio_from is not None else nullcontext() as source,
    ):
        video = _video_stream(container, fps, first.shape)
        audio = source.streams.audio[0] if source is not None and source.streams.audio else None
        audio_out = _audio_stream(container, audio) if audio is not None else None  # streams before packets
        _encode_frames(container, video, frames, first, out)
        if audio is not None:
            mux = _copy_audio if _fits_mp4(audio) else _transcode_audio
            mux(container, source, audio, audio_out, len(frames) / fps)


def assemble(frames: Sequence[Path], out: Path, fps: Fraction, audio_from: Path | None = None) -> None:
    """Encode `frames` (same-size images) as H.264 MP4 at exactly `fps`, with the audio of `audio_from`.

    MP4-friendly audio (AAC, MP3, ...) is copied packet for packet, other audio is re-encoded to AAC;
    audio past the last frame is dropped. On failure VideoError, and nothing is left at `out`.
    """
    if not frames:
        raise _error(out, "no frames to encode")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out) as tmp:
            _encode(tmp, frames, out, Fraction(fps), audio_from)
    except (av.FFmpegError, OSError) as exc:
        raise _error(out, f"cannot write video ({exc.strerror or exc})") from None
