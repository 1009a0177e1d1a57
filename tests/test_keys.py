"""Job keys: every setting that changes pixels changes them, and settings left at their off value keep
the keys that jobs done before those settings existed were recorded with."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.batch.config import Config
from pipeline.batch.discover import discover
from pipeline.batch.plan import pixel_settings, plan
from pipeline.media.digest import file_digest, value_digest


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


def test_output_depth_joins_the_key_only_for_16_bit_outputs(shared, tmp_path):
    """An 8-bit input's jobs keep the keys made before output.depth (same and 8 alike); 16 changes them,
    and so does the default for a 16-bit input, whose output became 16-bit."""
    config = _config(shared, tmp_path)
    (job,) = plan(config, discover(config.inputs, exclude=config.output.dir).sources).jobs
    style = [(file_digest(shared / "style" / "wave.jpg"), 1.0)]
    before = {"content": file_digest(job.content), "style": style, "settings": pixel_settings(config), "format": ".png"}
    assert job.key == value_digest(before)

    def keys(inputs: list[Path], depth: object) -> list[str]:
        config = Config.model_validate(
            {
                "inputs": [str(p) for p in inputs],
                "styles": [{"name": "wave", "images": [str(shared / "style" / "wave.jpg")]}],
                "output": {"dir": str(tmp_path / "out"), "depth": depth},
            }
        )
        return [j.key for j in plan(config, discover(config.inputs, exclude=config.output.dir).sources).jobs]

    chelsea = shared / "content" / "chelsea.png"
    assert keys([chelsea], "same") == keys([chelsea], 8) == [job.key] != keys([chelsea], 16)
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), (np.random.default_rng(0).random((8, 8, 3)) * 65535).astype(np.uint16))
    assert keys([deep], "same") == keys([deep], 16) != keys([deep], 8)
