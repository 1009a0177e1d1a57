"""pipeline.media.video.assemble keeps what the source holds besides its pictures: every audio and subtitle
stream with its tags, and each frame's timestamp (a variable frame rate stays variable)."""

from __future__ import annotations

import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import write_config
from PIL import Image

from pipeline.media.video import VideoWarning, assemble, probe

SIZE = (64, 48)
# What ffmpeg's own text subtitle decoders put in front of their events: one default style.
ASS_HEADER = b"""[Script Info]
ScriptType: v4.00+
PlayResX: 384
PlayResY: 288

[V4+ Styles]
Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding
Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0

[Events]
Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text
"""
AUDIO = [("aac", "eng", "English"), ("libopus", "fra", "Français")]  # AAC is copied, Opus becomes AAC
CUES = [(0.1, 0.15, "Hallo"), (0.3, 0.15, "Welt")]  # start, duration (s), text


def _video(container: av.container.OutputContainer, base: Fraction) -> av.VideoStream:
    """A tiny H.264 stream in `base` ticks (nominally 30 fps; frame i starts at pts[i], see _encode_video)."""
    stream = container.add_stream("libx264", rate=30)
    stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
    stream.codec_context.time_base = base
    stream.codec_context.flags |= av.codec.context.Flags.frame_duration
    return stream


def _encode_video(container: av.container.OutputContainer, stream: av.VideoStream, pts: list[int]) -> None:
    """Frame i from pts[i] to pts[i + 1]; the last lasts as long as the one before."""
    ends = [*pts[1:], 2 * pts[-1] - pts[-2]]
    for i, (start, end) in enumerate(zip(pts, ends)):
        frame = av.VideoFrame.from_ndarray(np.full((SIZE[1], SIZE[0], 3), 12 * i, np.uint8), format="rgb24")
        frame.pts, frame.duration = start, end - start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def _audio(container: av.container.OutputContainer, codec: str, language: str, title: str) -> av.AudioStream:
    stream = container.add_stream(codec, rate=48000, layout="mono")
    stream.metadata.update({"language": language, "title": title})
    return stream


def _encode_audio(container: av.container.OutputContainer, stream: av.AudioStream, seconds: float) -> None:
    samples = 960
    for k in range(int(seconds * 48000 / samples)):
        tone = np.sin(np.arange(k * samples, (k + 1) * samples) * 0.05, dtype=np.float32)[None]
        frame = av.AudioFrame.from_ndarray(tone.astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 48000, k * samples
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def _text_stream(container: av.container.OutputContainer, codec: str, language: str, title: str) -> av.SubtitleStream:
    stream = container.add_stream(codec)
    stream.codec_context.subtitle_header = ASS_HEADER
    stream.metadata.update({"language": language, "title": title})
    return stream


def _text_packets(stream: av.stream.Stream, cues: list[tuple[float, float, str]]) -> list[av.Packet]:
    """SRT-in-Matroska (or any raw) subtitle packets: the text, timed by the packet."""
    packets = []
    for start, duration, text in cues:
        packet = av.Packet(text.encode())
        packet.stream, packet.time_base = stream, Fraction(1, 1000)
        packet.pts = packet.dts = round(start * 1000)
        packet.duration = round(duration * 1000)
        packets.append(packet)
    return packets


@pytest.fixture(scope="module")
def mkv(tmp_path_factory) -> Path:
    """15 frames at 30 fps with two audio tracks (AAC English, Opus French), SRT German and ASS French
    subtitles, and a DVB (bitmap) subtitle track that MP4 cannot hold."""
    path = tmp_path_factory.mktemp("mkv") / "tracks.mkv"
    pts = list(range(15))
    with av.open(str(path), "w", format="matroska") as out:
        video = _video(out, Fraction(1, 30))
        audio = [_audio(out, *track) for track in AUDIO]
        srt, ass = _text_stream(out, "subrip", "deu", "Deutsch"), _text_stream(out, "ass", "fra", "Français")
        dvb = out.add_stream("dvbsub")
        dvb.metadata["language"] = "spa"
        _encode_video(out, video, pts)
        for stream in audio:
            _encode_audio(out, stream, 0.6)
        out.mux(_text_packets(srt, CUES))
        out.mux(_text_packets(ass, [(0.2, 0.1, "0,0,Default,,0,0,0,,{\\i1}Bonjour{\\i0}")]))  # Matroska's ASS event
        out.mux(_text_packets(dvb, CUES[:1]))
    return path


def _frames(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    for i in range(count):
        Image.new("RGB", SIZE, (200, 10 * i, 60)).save(folder / f"f{i:02d}.png")
    return [folder / f"f{i:02d}.png" for i in range(count)]


def _title(stream: av.stream.Stream) -> str | None:
    return stream.metadata.get("title", stream.metadata.get("name"))  # MP4 reads a track title back as name


def _described(path: Path) -> list[tuple[str, str, str | None, str | None]]:
    with av.open(str(path)) as container:
        return [(s.type, s.codec_context.name, s.language, _title(s)) for s in container.streams]


def _cues(path: Path, track: int = 0) -> list[tuple[Fraction, bytes]]:
    """A subtitle track's cues that say something (MP4 fills the gaps with empty ones): start, packet."""
    with av.open(str(path)) as container:
        stream = container.streams.subtitles[track]
        return [(p.pts * p.time_base, bytes(p)) for p in container.demux(stream) if p.size > 2]


@pytest.fixture(scope="module")
def reassembled(mkv, tmp_path_factory) -> tuple[Path, list[str]]:
    """The MKV's 15 frames reassembled, and the warnings that this gave."""
    folder = tmp_path_factory.mktemp("out")
    with pytest.warns(VideoWarning) as caught:
        assemble(_frames(folder / "frames", 15), folder / "tracks.mp4", Fraction(30), source=mkv)
    return folder / "tracks.mp4", [str(w.message) for w in caught]


def _vfr(path: Path, count: int = 16) -> list[Fraction]:
    """A clip whose frames last 1/30 s and 1/10 s in turn; the frames' start times."""
    base = Fraction(1, 90)
    pts = [sum((3, 9)[k % 2] for k in range(i)) for i in range(count)]
    with av.open(str(path), "w") as out:
        _encode_video(out, _video(out, base), pts)
    return [p * base for p in pts]


def _times(path: Path) -> tuple[list[Fraction], Fraction]:
    """The decoded frames' start times and the video's duration, both in seconds."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        starts = [frame.pts * stream.time_base for frame in container.decode(stream)]
        return starts, Fraction(container.duration, av.time_base)


# --- streams -----------------------------------------------------------------------------------


def test_every_audio_track_and_the_text_subtitles_come_along_with_their_tags(reassembled):
    out, _ = reassembled
    assert _described(out) == [
        ("video", "h264", "und", None),
        ("audio", "aac", "eng", "English"),  # copied
        ("audio", "aac", "fra", "Français"),  # Opus does not belong in MP4: re-encoded
        ("subtitle", "mov_text", "deu", "Deutsch"),  # SRT and ASS become MP4's text subtitles
        ("subtitle", "mov_text", "fra", "Français"),
    ]
    assert _cues(out) == [(Fraction(1, 10), b"\x00\x05Hallo"), (Fraction(3, 10), b"\x00\x04Welt")]
    ((start, cue),) = _cues(out, 1)
    assert start == Fraction(1, 5) and cue.startswith(b"\x00\x07Bonjour") and b"styl" in cue  # italic kept as a style
    with av.open(str(out)) as container:  # both tracks cut at the last frame's end (0.5 s), not 0.6 s
        assert [abs(s.duration * s.time_base - Fraction(1, 2)) < 0.03 for s in container.streams.audio] == [True] * 2


def test_bitmap_subtitles_are_left_out_with_one_warning_naming_the_stream(mkv, reassembled):
    _, messages = reassembled
    assert messages == [f"{mkv}: subtitle stream #5 (dvbsub, language spa) is left out: MP4 holds only text subtitles"]


def test_an_mp4_source_has_its_tracks_copied_packet_for_packet(reassembled, tmp_path):
    source, _ = reassembled
    out = tmp_path / "again.mp4"
    with warnings.catch_warnings():
        warnings.simplefilter("error", VideoWarning)  # nothing is left out
        assemble(_frames(tmp_path / "frames", 15), out, Fraction(30), source=source)
    assert _described(out) == _described(source)  # titles too: MP4 reads them back as "name"
    assert [_cues(out, t) for t in (0, 1)] == [_cues(source, t) for t in (0, 1)]
    with av.open(str(out)) as got, av.open(str(source)) as src:
        for index in (1, 2):
            assert [bytes(p) for p in got.demux(got.streams[index]) if p.size] == [
                bytes(p) for p in src.demux(src.streams[index]) if p.size
            ]


# --- timing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vfr.mp4", "vfr.mkv"])  # MKV gives the nominal 30 fps as the average
def test_a_variable_frame_rate_keeps_each_frame_time_and_the_duration(tmp_path, name):
    source = tmp_path / name
    starts = _vfr(source)
    fps = probe(source).fps
    out = tmp_path / "out.mp4"
    assemble(_frames(tmp_path / "frames", len(starts)), out, fps, source=source)
    source_starts, source_seconds = _times(source)
    got, seconds = _times(out)
    assert len(got) == len(source_starts) == 16
    assert got == source_starts  # frame i at the source frame i's time (exact in MP4's finer time base)
    assert abs(seconds - source_seconds) <= 1 / fps


def test_a_source_with_fewer_frames_gives_a_constant_rate_and_says_so(tmp_path):
    source = tmp_path / "vfr.mp4"
    _vfr(source)
    out = tmp_path / "out.mp4"
    with pytest.warns(
        VideoWarning,
        match=r"vfr\.mp4 has no increasing timestamps for its first 20 frames; "
        r"written at a constant 16 fps",
    ):
        assemble(_frames(tmp_path / "frames", 20), out, Fraction(16), source=source)
    got, seconds = _times(out)
    assert got == [Fraction(i, 16) for i in range(20)] and seconds == Fraction(20, 16)


# --- in a run ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_logs_and_records_what_the_video_leaves_out(mkv, shared, tmp_path):
    """The warning reaches the run's log and the video's manifest record, not only Python's warnings."""
    import json

    from typer.testing import CliRunner

    from pipeline.ui.cli import app

    config = write_config(
        tmp_path / "config.yaml",
        [mkv],
        tmp_path / "out",
        optimize={"size": 32, "iterations": 1, "scales": 1},
        video={"temporal": False, "measure": False},
    )
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    message = f"{mkv}: subtitle stream #5 (dvbsub, language spa) is left out: MP4 holds only text subtitles"
    assert f"warning: {message}" in result.output
    record = json.loads((tmp_path / "out" / "manifest.json").read_text())["jobs"]["tracks.mkv.wave.mp4"]
    assert record["state"] == "done" and record["warning"] == message
