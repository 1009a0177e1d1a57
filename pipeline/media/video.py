"""Video files in and out: probing (PyAV), frames to PNG (OpenCV), frames to H.264 MP4 with the source's
audio, subtitles and frame timestamps (PyAV).

Part of the shell: files and arrays only, no tensors. Every file is written
atomically (a hidden temporary beside it, then a rename).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from itertools import islice
from pathlib import Path

import av
import cv2
import numpy as np

from pipeline.media.images import atomic_path

_MARKER = "complete.json"
# copied packet for packet; other audio becomes AAC, other text subtitles mov_text, bitmap subtitles are dropped
_MP4_COPY = frozenset({"aac", "mp3", "ac3", "eac3", "alac", "mov_text"})
_X264 = {"crf": "18"}


class VideoError(ValueError):
    """A video cannot be read or written; the message is one line that names the file and what is wrong."""


class VideoWarning(UserWarning):
    """Something of the source that its stylised video does not keep; the video is written all the same."""


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
        info = VideoInfo(
            Fraction(data["fps"]), data["frames"], data["width"], data["height"], data["has_audio"], data.get("claimed")
        )
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


def _warn(message: str) -> None:
    warnings.warn(" ".join(message.splitlines()), VideoWarning, stacklevel=2)


@dataclass(frozen=True)
class _Timing:
    """When each output frame starts and how long it lasts, in `time_base` ticks from time zero."""

    time_base: Fraction
    starts: tuple[int, ...]
    durations: tuple[int, ...]
    zero: Fraction = Fraction(0)  # the source time, in seconds, that becomes time zero

    @property
    def end(self) -> Fraction:
        """When the last frame ends, in seconds: audio and subtitles are cut there."""
        return (self.starts[-1] + self.durations[-1]) * self.time_base


def _constant(count: int, fps: Fraction, zero: Fraction = Fraction(0)) -> _Timing:
    return _Timing(1 / fps, tuple(range(count)), (1,) * count, zero)


def _last_end(stream: av.VideoStream, last: int, fps: Fraction) -> int:
    """Where the source's last frame (at `last`) ends: at the stream's end when the container knows
    it and it lies within two average frames, else one average frame later."""
    step = max(1, round(1 / (fps * stream.time_base)))
    known = (stream.start_time or 0) + (stream.duration or 0)
    return known if last < known <= last + 2 * step else last + step


def _timing(source: Path | None, count: int, fps: Fraction, out: Path) -> _Timing:
    """The presentation times of the source's first `count` frames, its first frame at zero. A constant
    `fps` without a source, or (with a warning) when it has fewer frames or timestamps that do not increase."""
    if source is None:
        return _constant(count, fps)
    with _open(source) as container:
        if not container.streams.video:
            raise _error(source, "no video stream")
        stream = container.streams.video[0]
        pts = [frame.pts for frame in islice(_decodable(container), count + 1)]
        base, start = stream.time_base, stream.start_time or 0
        if len(pts) == count and None not in pts:
            pts.append(_last_end(stream, pts[-1], fps))
    if len(pts) <= count or None in pts or any(b <= a for a, b in zip(pts, pts[1:])):
        _warn(
            f"{out}: {source} has no increasing timestamps for its first {count} frames; "
            f"written at a constant {fps} fps"
        )
        return _constant(count, fps, start * base)
    durations = tuple(b - a for a, b in zip(pts, pts[1:]))
    return _Timing(base, tuple(p - pts[0] for p in pts[:count]), durations, pts[0] * base)


def _read_image(path: Path, out: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise _error(out, f"frame {path} is missing or not a readable image")
    return image


def _even(image: np.ndarray) -> np.ndarray:
    """Pad an odd height or width by one repeated edge row/column (yuv420p needs even sizes)."""
    h, w = image.shape[:2]
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else image


def _video_stream(
    container: av.container.OutputContainer, fps: Fraction, timing: _Timing, shape: tuple[int, ...]
) -> av.VideoStream:
    stream = container.add_stream("libx264", rate=fps, options=_X264)
    stream.height, stream.width = shape[0] + shape[0] % 2, shape[1] + shape[1] % 2
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = timing.time_base
    stream.codec_context.flags |= av.codec.context.Flags.frame_duration  # packets keep their frame's duration
    return stream


def _flush(
    container: av.container.OutputContainer, stream: av.VideoStream, timing: _Timing, first_dts: int | None
) -> None:
    """Mux the encoder's last packets. MP4 takes the track's length from the decode timestamps, which
    B-frames reorder: the last packet in decode order lasts until the last frame ends, so the length is exact."""
    packets = stream.encode(None)
    if packets:
        first_dts = packets[0].dts if first_dts is None else first_dts
        end = timing.starts[-1] + timing.durations[-1]
        packets[-1].duration = max(1, end - (packets[-1].dts - first_dts))
    container.mux(packets)


def _encode_frames(
    container: av.container.OutputContainer,
    stream: av.VideoStream,
    frames: Sequence[Path],
    first: np.ndarray,
    timing: _Timing,
    out: Path,
) -> None:
    first_dts = None
    for index, path in enumerate(frames):
        image = first if index == 0 else _read_image(path, out)
        if image.shape != first.shape:
            (h, w), (h0, w0) = image.shape[:2], first.shape[:2]
            raise _error(out, f"frame {path} is {w}x{h}, not {w0}x{h0} like the first")
        frame = av.VideoFrame.from_ndarray(_even(image), format="bgr24")
        frame.pts, frame.duration = timing.starts[index], timing.durations[index]
        packets = stream.encode(frame)
        if packets and first_dts is None:
            first_dts = packets[0].dts  # read before muxing, which rescales it to the stream's time base
        container.mux(packets)
    _flush(container, stream, timing, first_dts)


def _copied(stream: av.stream.Stream) -> bool:
    return stream.codec_context is not None and stream.codec_context.codec.canonical_name in _MP4_COPY


def _tags(stream: av.stream.Stream) -> dict[str, str]:
    """The stream's tags (language, title, ...); a title read from an MP4 comes back as `name`: a title again."""
    tags = dict(stream.metadata)
    if "name" in tags:
        tags.setdefault("title", tags.pop("name"))
    return tags


def _mov_text(container: av.container.OutputContainer, stream: av.SubtitleStream) -> av.SubtitleStream:
    """A mov_text stream for the text subtitles `stream`, styled by the ASS header of its decoder."""
    stream.codec_context.open(strict=False)  # opening the decoder makes its header
    out = container.add_stream("mov_text")
    out.codec_context.time_base = stream.time_base
    out.codec_context.subtitle_header = stream.codec_context.subtitle_header
    return out


def _output_stream(
    container: av.container.OutputContainer, stream: av.stream.Stream, source: Path
) -> av.stream.Stream | None:
    """The output stream for the source's audio or subtitle `stream`, with its tags and disposition: a copy
    when MP4 holds its codec, else AAC or mov_text; None, with a warning, for subtitles that are no text."""
    if _copied(stream):
        out = container.add_stream_from_template(stream)
    elif stream.type == "audio":
        out = container.add_stream("aac", rate=stream.rate, layout=stream.layout)
    elif stream.codec_context is not None and stream.codec_context.codec.text_sub:
        out = _mov_text(container, stream)
    else:
        codec = stream.codec_context.name if stream.codec_context else "unknown codec"
        _warn(
            f"{source}: subtitle stream #{stream.index} ({codec}, language {stream.language or 'unknown'}) "
            "is left out: MP4 holds only text subtitles"
        )
        return None
    out.metadata.update(_tags(stream))
    out.disposition = stream.disposition
    return out


def _routes(
    container: av.container.OutputContainer, source: av.container.InputContainer, path: Path
) -> dict[int, tuple[av.stream.Stream, av.stream.Stream]]:
    """Every audio and subtitle stream of the source that the output keeps, by index, with its output stream."""
    routes = {}
    for stream in source.streams:
        if stream.type in ("audio", "subtitle") and (out := _output_stream(container, stream, path)) is not None:
            routes[stream.index] = (stream, out)
    return routes


def _as_mov_text(stream: av.SubtitleStream, out: av.SubtitleStream, packet: av.Packet) -> list[av.Packet]:
    """The text subtitle `packet` encoded as mov_text, at the same time and for as long."""
    subtitle = stream.codec_context.decode2(packet)
    if subtitle is None:
        return []
    converted = out.codec_context.encode_subtitle(subtitle)
    converted.stream = out
    converted.time_base = stream.time_base
    converted.pts, converted.dts, converted.duration = packet.pts, packet.dts, packet.duration
    return [converted]


def _mux_streams(
    container: av.container.OutputContainer,
    source: av.container.InputContainer,
    routes: dict[int, tuple[av.stream.Stream, av.stream.Stream]],
    timing: _Timing,
) -> None:
    """Mux the source's audio and subtitle packets, shifted to the video's time zero and cut at its end:
    copied unchanged where MP4 holds them, else re-encoded (audio as AAC, text subtitles as mov_text)."""
    for packet in source.demux(*(stream for stream, _ in routes.values())):
        if packet.dts is None:
            continue  # the demuxer's flush packet
        stream, out = routes[packet.stream.index]
        offset = round(timing.zero / stream.time_base)
        packet.dts -= offset
        if packet.pts is not None:
            packet.pts -= offset
        if packet.dts * stream.time_base >= timing.end:
            continue
        if _copied(stream):
            packet.stream = out
            container.mux(packet)
        elif stream.type == "audio":
            container.mux([p for frame in stream.decode(packet) for p in out.encode(frame)])
        else:
            container.mux(_as_mov_text(stream, out, packet))
    for stream, out in routes.values():
        if stream.type == "audio" and not _copied(stream):
            container.mux([p for frame in [*stream.decode(None), None] for p in out.encode(frame)])


def _encode(tmp: Path, frames: Sequence[Path], out: Path, fps: Fraction, source: Path | None) -> None:
    first = _read_image(frames[0], out)
    timing = _timing(source, len(frames), fps, out)
    with (
        av.open(str(tmp), "w", format="mp4", options={"movflags": "faststart"}) as container,
        _open(source) if source is not None else nullcontext() as inp,
    ):
        video = _video_stream(container, fps, timing, first.shape)
        routes = _routes(container, inp, source) if inp is not None else {}  # every stream before the first packet
        _encode_frames(container, video, frames, first, timing, out)
        if routes:
            _mux_streams(container, inp, routes, timing)


def assemble(frames: Sequence[Path], out: Path, fps: Fraction, source: Path | None = None) -> None:
    """Encode `frames` (same-size images) as H.264 MP4 at an average `fps`, with the audio and subtitle
    streams of the video `source` (tags kept) and its frame timestamps, so a variable frame rate stays.

    Frame i gets the source frame i's time; without a source (or with a warning when its timestamps fail)
    the rate is exactly `fps`. MP4-friendly audio (AAC, MP3, ...) and mov_text subtitles are copied
    packet for packet, other audio is re-encoded to AAC, other text subtitles (SRT, ASS, WebVTT) to
    mov_text; bitmap subtitles are left out with a VideoWarning. Audio and subtitles past the last frame
    are dropped. On failure VideoError, and nothing is left at `out`.
    """
    if not frames:
        raise _error(out, "no frames to encode")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out) as tmp:
            _encode(tmp, frames, out, Fraction(fps), source)
    except (av.FFmpegError, OSError) as exc:
        raise _error(out, f"cannot write video ({exc.strerror or exc})") from None
