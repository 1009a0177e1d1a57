"""Full resolution through `stylize run`: outputs at their sources' size, refined; tiles when memory is short."""

import json
from pathlib import Path

import av
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.render.renderer import resolve_precision
from pipeline.ui.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, inputs: list, style: Path, optimize: dict, output: dict | None = None) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "inputs": [str(i) for i in inputs],
                "styles": [{"name": "wave", "images": [str(style)]}],
                "output": {"dir": "out", **(output or {})},
                "optimize": {"scales": 1, **optimize},
                "devices": "cpu",
                "cache_dir": str(tmp_path / "cache"),
            }
        )
    )
    return path


def _jobs(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out" / "manifest.json").read_text())["jobs"]


@pytest.mark.slow
def test_original_size_outputs_have_their_sources_size_and_are_refined_there(shared, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.open(shared / "content/chelsea.png").convert("RGB").crop((0, 0, 150, 100)).save(inputs / "wide.png")
    Image.open(shared / "content/coffee.png").convert("RGB").crop((0, 0, 90, 120)).save(inputs / "tall.png")
    config = _config(
        tmp_path,
        [inputs],
        shared / "style/wave.jpg",
        {"size": 64, "iterations": 3, "refine_iterations": 2},
        {"size": "original"},
    )
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out/wide.wave.png").size == (150, 100)
    assert Image.open(tmp_path / "out/tall.wave.png").size == (90, 120)
    for name in ("wide.wave.png", "tall.wave.png"):
        record = _jobs(tmp_path)[name]
        assert record["iterations"] == 3 + 2  # 64 px, then 2 iterations at the source's own size
        assert record["trace"][-1][:2] == [2, 2] and record["tile"] is None
        assert record["precision"] == resolve_precision("auto", torch.device("cpu"))  # what precision: auto ran in
    assert "0 run" in runner.invoke(app, ["run", str(config)]).output  # a rerun is a no-op


@pytest.mark.slow
def test_a_video_keeps_its_source_resolution_with_output_size_original(shared, tmp_path):
    config = _config(
        tmp_path,
        [REPO / "data/video/pan.mp4"],
        shared / "style/wave.jpg",
        {"size": 48, "iterations": 2, "refine_iterations": 1},
        {"size": "original"},
    )
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    frames = sorted((tmp_path / "out/pan.wave").glob("frame_*.png"))
    assert len(frames) == 12 and {Image.open(f).size for f in frames} == {(160, 120)}
    with av.open(str(tmp_path / "out/pan.wave.mp4")) as video:
        stream = video.streams.video[0]
        assert (stream.width, stream.height) == (160, 120)
        assert sum(1 for _ in video.decode(video=0)) == 12


@pytest.mark.slow
def test_a_job_too_large_for_the_free_memory_runs_in_tiles(shared, tmp_path, monkeypatch):
    """With tile: auto and 40 MiB free, a 320 px job does not fit whole: it runs in 256 px tiles and says so."""
    monkeypatch.setattr("pipeline.render.memory.available_bytes", lambda: 40 * 2**20)
    config = _config(
        tmp_path, [shared / "content/chelsea.png"], shared / "style/wave.jpg", {"size": 320, "iterations": 2}
    )
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    record = _jobs(tmp_path)["chelsea.wave.png"]
    assert record["state"] == "done" and record["tile"] == 256 and record["iterations"] == 2
    assert max(Image.open(tmp_path / "out/chelsea.wave.png").size) == 320
