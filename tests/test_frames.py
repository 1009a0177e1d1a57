"""Frame patterns and ranges (pipeline.batch.frames, fileseq): plate.####.png, plate.%04d.png, ranges, steps."""

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.batch.config import ConfigError, load_config
from pipeline.batch.discover import InputError, discover
from pipeline.ui.cli import app
from tests.conftest import write_config

runner = CliRunner()


def _plates(folder: Path, numbers, name: str = "plate", pad: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        Image.new("RGB", (8, 8), (n % 256, 0, 0)).save(folder / f"{name}.{n:0{pad}d}.png")
    return folder


def _one(entries, tmp_path):
    found = discover(entries, exclude=tmp_path / "out")
    (seq,) = found.sources
    return seq, found.warnings


@pytest.mark.parametrize("pattern", ["plate.####.png", "plate.%04d.png", "plate.#.png", "plate.@@@@.png"])
def test_a_pattern_names_its_frames_and_keeps_their_numbers(tmp_path, pattern):
    shot = _plates(tmp_path / "shot", range(1001, 1007))
    _plates(shot, range(1001, 1004), name="matte")  # another sequence beside it
    Image.new("RGB", (8, 8)).save(shot / "reference.png")
    seq, warnings = _one([str(shot / pattern)], tmp_path)
    assert seq.kind == "sequence" and seq.path == shot / "plate" and seq.relative == Path("plate")
    assert [f.name for f in seq.frames] == [f"plate.{n}.png" for n in range(1001, 1007)]
    assert seq.gaps == () and warnings == ()


def test_a_pattern_takes_its_padding_as_given(tmp_path):
    shot = _plates(tmp_path / "shot", range(1, 4), pad=4)
    _plates(shot, range(1, 4), pad=2)  # plate.01.png …: another padding, another sequence
    seq, _ = _one([str(shot / "plate.##.png")], tmp_path)
    assert [f.name for f in seq.frames] == ["plate.01.png", "plate.02.png", "plate.03.png"]


def test_a_range_cuts_the_sequence_and_a_step_takes_every_other_frame(tmp_path):
    shot = _plates(tmp_path / "shot", range(1001, 1011))
    seq, warnings = _one([str(shot / "plate.1003-1006#.png")], tmp_path)
    assert [f.name for f in seq.frames] == [f"plate.{n}.png" for n in (1003, 1004, 1005, 1006)] and warnings == ()
    seq, warnings = _one([str(shot / "plate.1001-1010x2#.png")], tmp_path)
    assert [f.name for f in seq.frames] == [f"plate.{n}.png" for n in (1001, 1003, 1005, 1007, 1009)]
    assert seq.gaps == () and warnings == ()  # on twos: no frame is missing


def test_frames_of_a_range_missing_from_disk_are_named_and_the_sequence_stays_one(tmp_path):
    shot = _plates(tmp_path / "shot", (1001, 1002, 1004, 1005, 1006))
    pattern = str(shot / "plate.1001-1008#.png")
    seq, warnings = _one([pattern], tmp_path)
    assert [f.name for f in seq.frames] == [f"plate.{n}.png" for n in (1001, 1002, 1004, 1005, 1006)]
    assert seq.gaps == (2,)  # 1004 follows a missing frame
    assert warnings == (f"{pattern}: frames 1003, 1007-1008 missing; the temporal chain restarts after each gap",)


def test_a_config_input_gives_its_range_apart(tmp_path):
    _plates(tmp_path / "shot", range(1001, 1011))
    entry = {"path": "shot/plate.####.png", "frames": "1002-1004"}  # relative to the config
    write_config(tmp_path / "c.yaml", [], tmp_path / "out")
    config = load_config(_inputs(tmp_path, [entry]))
    seq, _ = _one(config.inputs, tmp_path)
    assert [f.name for f in seq.frames] == ["plate.1002.png", "plate.1003.png", "plate.1004.png"]
    for bad, says in (
        ({"path": "shot/plate.####.png", "frames": "10-x"}, "'10-x' is not a frame range"),
        ({"path": "shot/plate.1001.png", "frames": "1-3"}, "frames needs a frame pattern"),
    ):
        with pytest.raises(ConfigError, match=says):
            load_config(_inputs(tmp_path, [bad]))


def _inputs(tmp_path: Path, inputs: list) -> Path:
    path = tmp_path / "c.yaml"
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "inputs": inputs}))
    return path


def test_a_pattern_that_matches_nothing_is_an_input_error(tmp_path):
    shot = _plates(tmp_path / "shot", range(1, 3))
    with pytest.raises(InputError, match=r"inputs\[0\]: .*plate\.2001-2003#\.png: matches no file"):
        discover([str(shot / "plate.2001-2003#.png")], exclude=tmp_path / "out")
    with pytest.raises(InputError, match=r"inputs\[0\]: .*\.txt frames are not images"):
        (shot / "notes.0001.txt").write_text("x")
        discover([str(shot / "notes.####.txt")], exclude=tmp_path / "out")


@pytest.mark.slow
def test_a_plate_range_comes_out_with_its_own_frame_numbers(tmp_path, shared):
    shot = tmp_path / "shot"
    shot.mkdir()
    photo = Image.open(shared / "content/chelsea.png").convert("RGB")
    for n in range(1001, 1006):
        photo.crop((10 * n - 10000, 0, 10 * n - 9700, 200)).save(shot / f"plate.{n}.png")
    inputs = [{"path": str(shot / "plate.####.png"), "frames": "1002-1004"}]
    write_config(tmp_path / "c.yaml", [], tmp_path / "out", optimize={"size": 48, "iterations": 2})
    result = runner.invoke(app, ["run", str(_inputs(tmp_path, inputs))])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out" / "plate.wave").iterdir()) == [
        "plate.1002.png",
        "plate.1003.png",
        "plate.1004.png",
    ]
    records = json.loads((tmp_path / "out" / "manifest.json").read_text())["jobs"]
    frames = [f"plate.wave/plate.{n}.png" for n in (1002, 1003, 1004)]
    assert sorted(records) == ["plate.wave", *frames]  # the sequence's own record, then its frames'
    assert all(records[f]["state"] == "done" for f in frames)
