"""Job keys: every setting that changes pixels changes them, and settings left at their off value keep
the keys that jobs done before those settings existed were recorded with."""

from pathlib import Path

import pytest

from pipeline.batch.config import Config
from pipeline.batch.discover import discover
from pipeline.batch.plan import pixel_settings, plan


def _config(shared: Path, tmp_path: Path, optimize: dict | None = None, style: dict | None = None) -> Config:
    return Config.model_validate(
        {
            "inputs": [str(shared / "content" / "chelsea.png")],
            "styles": [{"name": "wave", "images": [str(shared / "style" / "wave.jpg")], **(style or {})}],
            "output": {"dir": str(tmp_path / "out")},
            "optimize": optimize or {},
        }
    )


def _keys(shared: Path, tmp_path: Path, optimize: dict | None = None, style: dict | None = None) -> list[str]:
    config = _config(shared, tmp_path, optimize, style)
    return [job.key for job in plan(config, discover(config.inputs, exclude=config.output.dir).sources).jobs]


@pytest.mark.parametrize(
    ("change", "off"),
    [
        ({"style_loss": "wasserstein"}, {"style_loss": "gram"}),
        ({"tolerance": 0.01}, {"tolerance": 0.0}),
        (
            {"tolerance": 0.01, "tolerance_window": 5},
            {"tolerance": 0.0, "tolerance_window": 5},
        ),  # off: the window is moot
    ],
)
def test_new_settings_change_the_key_only_when_they_change_pixels(shared, tmp_path, change, off):
    before = _keys(shared, tmp_path, off)
    assert _keys(shared, tmp_path, change) != before
    assert not set(off) & set(pixel_settings(_config(shared, tmp_path, off))["optimize"])  # the keys of older jobs


def test_a_style_scale_changes_the_key_and_1_keeps_the_older_one(shared, tmp_path):
    before = _keys(shared, tmp_path)
    assert _keys(shared, tmp_path, style={"scale": 1.0}) == before
    assert _keys(shared, tmp_path, style={"scale": 2.0}) != before != _keys(shared, tmp_path, style={"scale": 0.5})


def test_the_tolerance_window_changes_the_key_only_with_a_tolerance(shared, tmp_path):
    assert _keys(shared, tmp_path, {"tolerance": 0.01}) != _keys(
        shared, tmp_path, {"tolerance": 0.01, "tolerance_window": 5}
    )
    assert _keys(shared, tmp_path, {"tolerance_window": 5}) == _keys(shared, tmp_path)
