"""Videos and frame sequences through `stylize run`: one job per frame, reassembly, resume."""

import json
from fractions import Fraction
from pathlib import Path

import av
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.ui.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, inputs: list, style: Path, size: int = 48) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "inputs": [str(i) for i in inputs],
                "styles": [{"name": "wave", "images": [str(style)]}],
                "output": {"dir": "out"},
                "optimize": {"size": size, "iterations": 2, "scales": 1},
                "devices": "cpu",
                "cache_dir": str(tmp_path / "cache"),
            }
        )
    )
    return path


def _streams(path: Path) -> tuple[int, Fraction, int, bool, tuple[int, int]]:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(video=0))
        return frames, v.average_rate, v.codec_context.width, bool(c.streams.audio), (v.width, v.height)


@pytest.mark.slow
def test_webm_with_audio_becomes_frames_and_h264_with_audio(shared, tmp_path):
    config = _config(tmp_path, [shared / "video/big_buck_bunny_432_433.webm"], shared / "style/wave.jpg")
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    frames = sorted((out / "big_buck_bunny_432_433.webm.wave").glob("frame_*.png"))  # a WebM keeps its suffix
    assert len(frames) == 24 and Image.open(frames[0]).size == (48, 27)
    count, fps, _, has_audio, _ = _streams(out / "big_buck_bunny_432_433.webm.wave.mp4")
    assert (count, fps, has_audio) == (24, 24, True)
    records = json.loads((out / "manifest.json").read_text())["jobs"]
    assert records["big_buck_bunny_432_433.webm.wave.mp4"]["state"] == "done"


@pytest.mark.slow
def test_video_reassembles_when_a_later_run_finishes_the_last_frame(tmp_path, shared):
    config = _config(tmp_path, [REPO / "data/video/pan.mp4"], shared / "style/wave.jpg")
    assert runner.invoke(app, ["run", str(config)]).exit_code == 0
    out = tmp_path / "out"
    video = out / "pan.wave.mp4"
    assert _streams(video)[:4] == (12, 12, 48, False)
    # A run that died before its last frame and the reassembly: the rerun does just those.
    (out / "pan.wave" / "frame_000012.png").unlink()
    video.unlink()
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    assert "11 of 12 jobs already done" in result.output and "[1/1] done" in result.output
    assert _streams(video)[0] == 12
    again = runner.invoke(app, ["run", str(config)])
    assert "0 run" in again.output and video.is_file()


@pytest.mark.slow
def test_sequence_keeps_frame_names(tmp_path, shared):
    shot = tmp_path / "shots" / "shot010"
    shot.mkdir(parents=True)
    photo = Image.open(shared / "content/chelsea.png").convert("RGB")
    for n in range(1, 4):
        photo.crop((10 * n, 0, 10 * n + 300, 200)).save(shot / f"frame_{n:04d}.png")
    config = _config(tmp_path, [tmp_path / "shots"], shared / "style/wave.jpg")
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "out" / "shot010.wave").iterdir())
    assert names == ["frame_0001.png", "frame_0002.png", "frame_0003.png"]


def test_unreadable_video_fails_only_its_jobs(tmp_path, shared):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "broken.mp4").write_text("not a video")
    Image.open(shared / "content/coffee.png").convert("RGB").save(inputs / "coffee.jpg")
    config = _config(tmp_path, [inputs], shared / "style/wave.jpg")
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 1
    assert "broken.mp4" in result.output and (tmp_path / "out" / "coffee.jpg.wave.png").is_file()
    records = json.loads((tmp_path / "out" / "manifest.json").read_text())["jobs"]
    assert records["broken.wave.mp4"]["state"] == "failed"  # named like the video it would have made
