"""The CPU memory check: a job too large for the RAM fails alone, naming its size."""

import json

import pytest
from conftest import write_config
from PIL import Image
from typer.testing import CliRunner

from pipeline.render.memory import GIB, HISTORY, available_bytes, check_fits, needed_bytes
from pipeline.ui.cli import app

runner = CliRunner()


def test_the_estimate_matches_the_measured_slope_and_lbfgs_adds_its_history():
    mp = (1000, 1000)
    assert needed_bytes(mp, "adam") / GIB == pytest.approx(3.8, rel=0.05)  # bench --memory: 3.78 GiB per MP
    assert needed_bytes(mp, "lbfgs") - needed_bytes(mp, "adam") == 1_000_000 * 2 * HISTORY * 3 * 4
    assert needed_bytes(mp, "adam", images=4) == 4 * needed_bytes(mp, "adam")
    assert needed_bytes(mp, "adam", precision="bf16") / GIB == pytest.approx(1.83, rel=0.05)  # bf16: 1.83 GiB per MP


def test_bf16_layers_fit_larger_images_whole():
    """At 20 GiB free, 2048² with L-BFGS is tiled in float32 but fits whole in bf16 (half-size activations)."""
    from pipeline.render.memory import HISTORY, tile_plan

    assert tile_plan(20 * GIB, (2048, 2048), "lbfgs")[0] > 0
    assert tile_plan(20 * GIB, (2048, 2048), "lbfgs", precision="bf16") == (0, HISTORY)


def test_check_fits_names_the_size_that_does_not_fit():
    assert available_bytes() > 0
    check_fits((64, 64), "lbfgs")  # tiny: fits anywhere
    with pytest.raises(MemoryError, match=r"30000x20000 px needs about \d+\.\d GiB on the CPU"):
        check_fits((20000, 30000), "lbfgs")


def test_with_tiling_off_a_job_too_large_for_the_ram_fails_alone_and_the_others_complete(shared, tmp_path):
    """With optimize.tile: off, at optimize.size 8192 a square image needs hundreds of GiB and fails before
    it is decoded; a 512:1 strip at the same size needs little and completes."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    photo = Image.open(shared / "content/coffee.png").convert("RGB")
    photo.resize((64, 64)).save(inputs / "square.png")
    photo.resize((1024, 2)).save(inputs / "strip.png")
    config = write_config(
        tmp_path / "c.yaml",
        [inputs],
        tmp_path / "out",
        optimize={"size": 8192, "iterations": 1, "scales": 1, "tile": "off"},
    )
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 1, result.output
    jobs = json.loads((tmp_path / "out/manifest.json").read_text())["jobs"]
    assert jobs["square.wave.png"]["state"] == "failed"
    assert "square.png: out of memory at size 8192" in jobs["square.wave.png"]["error"]
    assert "8192x8192 px needs about" in jobs["square.wave.png"]["error"]
    assert jobs["strip.wave.png"]["state"] == "done"
    assert Image.open(tmp_path / "out/strip.wave.png").size == (8192, 16)
