"""pipeline.media.video on real clips: probe, frames out (OpenCV), H.264 MP4 back (PyAV), broken inputs."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import pytest
from conftest import require_shared
from PIL import Image

import pipeline.media.video
from pipeline.media.video import VideoError, VideoInfo, assemble, extract_frames, probe

REPO = Path(__file__).resolve().parents[1]
PAN = REPO / "data/video/pan.mp4"
COCKATOO = "video/cockatoo.mp4"
BUNNY = "video/big_buck_bunny_432_433.webm"


def _shared(name: str) -> Path:
    return require_shared(name)


def _remux(
    src: Path,
    dst: Path,
    kinds: tuple[str, ...] = ("video", "audio"),
    rotation: int = 0,
    options: dict[str, str] | None = None,
) -> Path:
    """Copy the `kinds` streams of `src` packet for packet into the MP4 `dst`."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4", options=options or {}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in kinds}
        for stream in streams.values():
            if rotation and stream.type == "video":
                stream.set_display_rotation(rotation)
        for packet in inp.demux(*(inp.streams[i] for i in streams)):
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    return dst


def _stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def _names(count: int) -> list[str]:
    return [f"frame_{i:06d}.png" for i in range(1, count + 1)]


def _scaled(frames: list[Path], folder: Path, size: tuple[int, int]) -> list[Path]:
    folder.mkdir()
    for frame in frames:
        Image.open(frame).resize(size).save(folder / frame.name)
    return [folder / f.name for f in frames]


def _solid(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    folder.mkdir()
    for i in range(count):
        Image.new("RGB", size, (10 * i, 80, 160)).save(folder / f"f{i:02d}.png")
    return [folder / f"f{i:02d}.png" for i in range(count)]


@pytest.fixture(scope="module")
def bunny_frames(tmp_path_factory) -> tuple[Path, VideoInfo]:
    folder = tmp_path_factory.mktemp("bunny") / "frames"
    return folder, extract_frames(_shared(BUNNY), folder)


@pytest.fixture(scope="module")
def pan_frames(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("pan") / "frames"
    return [folder / name for name in _names(extract_frames(PAN, folder).frames)]


# --- probe -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        (COCKATOO, VideoInfo(Fraction(20), 280, 1280, 720, True)),
        (BUNNY, VideoInfo(Fraction(24), 24, 1280, 720, True)),  # WebM holds no frame count: counted by decoding
        ("pan.mp4", VideoInfo(Fraction(12), 12, 160, 120, False)),
    ],
)
def test_probe_reads_rate_count_size_and_audio(name, expected):
    info = probe(PAN if name == "pan.mp4" else _shared(name))
    assert info == expected and isinstance(info.fps, Fraction)


def test_probe_and_frames_follow_a_rotation_flag_like_phone_videos(tmp_path):
    rotated = _remux(PAN, tmp_path / "portrait.mp4", rotation=90)
    assert probe(rotated) == VideoInfo(Fraction(12), 12, 120, 160, False)
    extract_frames(rotated, tmp_path / "frames")  # OpenCV turns the frames upright: sizes must agree
    assert Image.open(tmp_path / "frames" / "frame_000001.png").size == (120, 160)


def _blank_mdat(tmp_path: Path) -> Path:
    """pan.mp4 with its frame data zeroed: a valid container, 12 packets, nothing that decodes."""
    data = bytearray(PAN.read_bytes())
    start, end = data.index(b"mdat") + 4, data.index(b"moov") - 4  # pan.mp4 keeps its index (moov) last
    data[start:end] = bytes(end - start)
    path = tmp_path / "blank.mp4"
    path.write_bytes(bytes(data))
    return path


def _written(name: str, data: bytes):
    def make(folder: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder / name

    return make


@pytest.mark.parametrize(
    "make, problem",
    [
        (_written("zero.mp4", b""), "empty file"),
        (_written("notes.mp4", b"not\na video\n"), "not a readable video"),
        (lambda d: d / "missing.mp4", "file not found"),
        (lambda d: _remux(_shared(COCKATOO), d / "sound.mp4", kinds=("audio",)), "no video stream"),
        (_blank_mdat, "no decodable video frames"),
    ],
)
def test_probe_rejects_non_videos_with_one_line_naming_the_file(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(VideoError) as caught:
        probe(path)
    message = str(caught.value)
    assert path.name in message and problem in message and "\n" not in message


# --- extract_frames ----------------------------------------------------------------------------


def test_extract_frames_writes_numbered_pngs_and_a_marker_once(pan_frames):
    folder = pan_frames[0].parent
    assert sorted(p.name for p in folder.iterdir()) == ["complete.json", *_names(12)]  # no temporaries left
    assert {Image.open(p).size for p in pan_frames} == {(160, 120)}
    marker = json.loads((folder / "complete.json").read_text())
    assert (marker["fps"], marker["frames"], marker["source"]["size"]) == ("12/1", 12, PAN.stat().st_size)
    before = _stamps(folder)
    assert extract_frames(PAN, folder) == probe(PAN)  # the second call only reads the marker
    assert _stamps(folder) == before


def test_extract_frames_of_a_webm(bunny_frames):
    folder, info = bunny_frames
    assert info == VideoInfo(Fraction(24), 24, 1280, 720, True)
    assert sorted(folder.glob("frame_*.png")) == [folder / n for n in _names(24)]
    assert {Image.open(folder / n).size for n in _names(24)[::8]} == {(1280, 720)}
    before = _stamps(folder)
    assert extract_frames(_shared(BUNNY), folder) == info and _stamps(folder) == before


def test_extract_frames_redoes_a_folder_when_the_source_changed(tmp_path):
    source = tmp_path / "clip.mp4"
    source.write_bytes(PAN.read_bytes())
    folder = tmp_path / "frames"
    extract_frames(source, folder)
    (folder / "frame_000001.png").write_bytes(b"an old frame")
    (folder / "frame_000099.png").write_bytes(b"an old frame")
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    assert extract_frames(source, folder).frames == 12
    assert sorted(p.name for p in folder.iterdir()) == ["complete.json", *_names(12)]  # the stale frame is gone
    assert Image.open(folder / "frame_000001.png").size == (160, 120)  # written anew


def test_extract_frames_keeps_frames_when_decoding_stops_early(tmp_path, monkeypatch):
    # The container promises 20 frames; OpenCV delivers 12, then read() fails.
    monkeypatch.setattr(pipeline.media.video, "probe", lambda path: replace(probe(path), frames=20))
    folder = tmp_path / "frames"
    with pytest.raises(VideoError, match=r"pan\.mp4: decoding stopped at frame 13 of 20") as caught:
        extract_frames(PAN, folder)
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in folder.iterdir()) == _names(12)  # kept, and no complete.json


def test_truncated_mp4_with_its_index_at_the_end_is_not_a_video(tmp_path):
    # cockatoo.mp4 stores its index (moov box) after the frame data: its first 40% has no index at all,
    # so FFmpeg cannot open it. extract_frames fails before writing anything.
    source = _shared(COCKATOO)
    cut = tmp_path / "cockatoo_cut.mp4"
    cut.write_bytes(source.read_bytes()[: source.stat().st_size * 4 // 10])
    with pytest.raises(VideoError, match=r"cockatoo_cut\.mp4: not a readable video"):
        extract_frames(cut, tmp_path / "frames")
    assert not (tmp_path / "frames").exists()


def test_truncated_mp4_with_its_index_first_yields_the_frames_that_decode(tmp_path):
    # The same clip remuxed with the index first ("faststart"), then cut to 40%: the container still
    # claims 280 frames but only 104 packets remain, of which 101 decode (with PyAV 18.1 and OpenCV 5.0).
    # probe sees the packet shortfall and counts by decoding, OpenCV stops at the same frame, so
    # extract_frames succeeds with that shorter, consistent count: no error, 101 frames, a marker.
    fast = _remux(_shared(COCKATOO), tmp_path / "fast.mp4", options={"movflags": "faststart"})
    cut = tmp_path / "cockatoo_cut.mp4"
    cut.write_bytes(fast.read_bytes()[: fast.stat().st_size * 4 // 10])
    with av.open(str(cut)) as container:
        assert container.streams.video[0].frames == 280
    info = extract_frames(cut, tmp_path / "frames")
    assert 80 < info.frames < 120 and info.frames == probe(cut).frames
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["complete.json", *_names(info.frames)]


# --- assemble ----------------------------------------------------------------------------------


def _seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        return container.duration / av.time_base


def test_assemble_webm_frames_with_vorbis_audio_to_h264_and_aac(bunny_frames, tmp_path):
    folder, _ = bunny_frames
    frames = _scaled(sorted(folder.glob("frame_*.png")), tmp_path / "small", (128, 72))
    out = tmp_path / "clip.mp4"
    assemble(frames, out, Fraction(24), source=_shared(BUNNY))
    assert probe(out) == VideoInfo(Fraction(24), 24, 128, 72, True)
    with av.open(str(out)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, video.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert audio.codec_context.name == "aac"  # Vorbis does not belong in MP4: re-encoded
        assert abs(container.duration / av.time_base - 1) < 0.05
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "small"]  # no temporary left


def test_assemble_copies_mp3_audio_packets_and_cuts_them_at_the_last_frame(tmp_path):
    source = _shared(COCKATOO)
    frames = _solid(tmp_path / "small", 20, (64, 36))
    out = tmp_path / "clip.mp4"
    assemble(frames, out, Fraction(20), source=source)
    with av.open(str(out)) as got, av.open(str(source)) as src:
        assert got.streams.audio[0].codec_context.name.startswith("mp3")  # copied, not re-encoded
        copied = [bytes(p) for p in got.demux(audio=0) if p.size]
        original = [bytes(p) for p in src.demux(audio=0) if p.size]
    assert copied == original[: len(copied)] and len(copied) < len(original)  # 1 s of the clip's 14 s
    assert abs(_seconds(out) - 1) < 0.1


def test_assemble_without_audio_and_with_odd_size_at_an_ntsc_rate(pan_frames, tmp_path):
    plain = tmp_path / "plain.mp4"
    assemble(pan_frames, plain, Fraction(12), source=PAN)  # PAN has no audio track
    assert probe(plain) == VideoInfo(Fraction(12), 12, 160, 120, False)
    odd = _scaled(pan_frames, tmp_path / "odd", (127, 71))
    ntsc = tmp_path / "odd.mp4"
    assemble(odd, ntsc, Fraction(30000, 1001))
    assert probe(ntsc) == VideoInfo(Fraction(30000, 1001), 12, 128, 72, False)  # padded to even


@pytest.mark.parametrize("spoil", ["size", "missing"])
def test_assemble_failure_leaves_nothing_at_out(pan_frames, tmp_path, spoil):
    frames = list(pan_frames)
    if spoil == "size":
        frames[5] = _scaled(pan_frames[:1], tmp_path / "big", (320, 240))[0]
    else:
        frames[5] = tmp_path / "gone.png"
    out = tmp_path / "out" / "clip.mp4"
    with pytest.raises(VideoError) as caught:
        assemble(frames, out, Fraction(12))
    assert str(caught.value).startswith(f"{out}: frame ") and "\n" not in str(caught.value)
    assert list(out.parent.iterdir()) == []
