"""The `stylize` commands end to end on real inputs, tiny sizes."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import image_args
from PIL import Image
from typer.testing import CliRunner

from pipeline.ui.cli import app

runner = CliRunner()
FAST = ["--size", "64", "--iterations", "4", "--scales", "1"]


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _write_config(tmp_path: Path, inputs, styles, **optimize) -> Path:
    config = {
        "inputs": [str(i) for i in inputs],
        "styles": [{"name": n, "images": [str(p)]} for n, p in styles],
        "output": {"dir": "out"},
        "optimize": {"size": 48, "iterations": 3, "scales": 1, **optimize},
        "devices": "cpu",
        "cache_dir": str(tmp_path / "cache"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_image_keeps_aspect_and_longest_side(shared, tmp_path):
    out = tmp_path / "cat.png"
    result = runner.invoke(app, image_args(shared / "content/chelsea.png", shared / "style/wave.jpg", out, *FAST))
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (64, 43)  # 451x300 source


@pytest.mark.slow
def test_image_original_size_writes_the_contents_own_resolution(shared, tmp_path):
    source, out = tmp_path / "small.png", tmp_path / "out.png"
    Image.open(shared / "content/chelsea.png").convert("RGB").crop((0, 0, 150, 100)).save(source)
    result = runner.invoke(app, image_args(source, shared / "style/wave.jpg", out, *FAST, "--original-size"))
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (150, 100)


@pytest.mark.slow
def test_image_respects_exif_orientation(shared, tmp_path):
    src = Image.open(shared / "content/coffee.png").convert("RGB")  # 600x400, landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    rotated = tmp_path / "rotated.jpg"
    src.save(rotated, exif=exif)
    out = tmp_path / "out.png"
    result = runner.invoke(app, image_args(rotated, shared / "style/wave.jpg", out, *FAST))
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (43, 64)  # upright: portrait


@pytest.mark.slow
def test_image_blends_several_styles(shared, tmp_path):
    out = tmp_path / "blend.jpg"
    args = [
        "image",
        str(shared / "content/astronaut.png"),
        str(shared / "style/wave.jpg"),
        str(shared / "style/the_scream.jpg"),
    ]
    result = runner.invoke(app, [*args, "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert Image.open(out).format == "JPEG" and Image.open(out).size == (64, 64)


@pytest.mark.slow
def test_image_with_the_wasserstein_style_loss(shared, tmp_path):
    out = tmp_path / "w2.png"
    result = runner.invoke(
        app,
        image_args(shared / "content/coffee.png", shared / "style/wave.jpg", out, *FAST, "--style-loss", "wasserstein"),
    )
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (64, 43)


def test_image_missing_file_is_usage_error(tmp_path):
    result = runner.invoke(app, image_args(tmp_path / "nope.png", tmp_path / "x.jpg", tmp_path / "o.png"))
    assert result.exit_code == 2
    assert "nope.png: file not found" in result.output


@pytest.mark.slow
def test_run_mirrors_tree_isolates_bad_file_and_resumes(shared, tmp_path):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    Image.open(shared / "content/chelsea.png").save(inputs / "sub" / "cat one.png")
    Image.open(shared / "content/coffee.png").convert("RGB").save(inputs / "coffee.jpg")
    (inputs / "broken.jpg").write_text("this is not a jpeg")
    (inputs / ".hidden.png").write_bytes((inputs / "coffee.jpg").read_bytes())
    before = _tree_hashes(inputs)
    config = _write_config(tmp_path, [inputs], [("wave", shared / "style/wave.jpg")])

    first = runner.invoke(app, ["run", str(config)])
    assert first.exit_code == 1, first.output
    out = tmp_path / "out"
    assert Image.open(out / "sub" / "cat one.wave.png").size == (48, 32)
    assert Image.open(out / "coffee.jpg.wave.png").size == (48, 32)
    assert not (out / "broken.wave.png").exists() and not (out / ".hidden.wave.png").exists()
    assert "broken.jpg: not a readable image" in first.output
    assert not list(out.rglob("*.part")), "no temporary files are left behind"
    assert _tree_hashes(inputs) == before, "inputs are never modified"

    (inputs / "broken.jpg").unlink()
    second = runner.invoke(app, ["run", str(config)])
    assert second.exit_code == 0, second.output
    assert "2 of 2 jobs already done" in second.output and "0 run" in second.output

    plan = runner.invoke(app, ["plan", str(config)])
    assert plan.exit_code == 0 and "2 jobs: 2 done" in plan.output

    changed = _write_config(tmp_path, [inputs], [("wave", shared / "style/wave.jpg")], style_weight=99.0)
    assert "2 jobs: 2 pending" in runner.invoke(app, ["plan", str(changed)]).output


@pytest.mark.slow
def test_early_stop_is_recorded_in_the_manifest(shared, tmp_path):
    """A loose tolerance ends the job before its iterations; the manifest records the iterations run."""
    config = _write_config(
        tmp_path,
        [shared / "content" / "coffee.png"],
        [("wave", shared / "style/wave.jpg")],
        iterations=40,
        tolerance=0.3,
        tolerance_window=3,
    )
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "manifest.json").read_text())["jobs"]["coffee.wave.png"]
    assert 4 <= record["iterations"] < 40
    assert record["trace"][-1][1] == record["iterations"]  # one scale: its last row is the last iteration run


def test_bad_config_exits_2_with_suggestion(shared, tmp_path):
    config = _write_config(tmp_path, [shared / "content"], [("wave", shared / "style/wave.jpg")])
    data = yaml.safe_load(config.read_text())
    data["optimize"]["iteratons"] = 5
    config.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 2
    assert "optimize.iteratons: unknown key; did you mean 'iterations'?" in result.output
    assert str(config) in result.output


@pytest.mark.parametrize(
    "change, message",
    [
        ({"optimize": {"size": -4}}, "optimize.size: Input should be greater than or equal to 32"),
        ({"optimize": {"optimizer": "sgd"}}, "optimize.optimizer: Input should be 'lbfgs' or 'adam'"),
        ({"styles": [{"name": "x", "images": ["missing.jpg"]}]}, "styles[0].images[0]: file not found"),
        ({"inputs": ["nowhere/"]}, "inputs[0]"),
        ({"optimize": {"tile": 32}}, "optimize.tile"),
        ({"output": {"size": "huge"}}, "output.size: Input should be 'optimize' or 'original'"),
        ({"optimize": {"tolerance": 1.5}}, "optimize.tolerance: Input should be less than 1"),
        ({"optimize": {"tolerance": -0.1}}, "optimize.tolerance: Input should be greater than or equal to 0"),
        (
            {"optimize": {"tolerance_window": 0}},
            "optimize.tolerance_window: Input should be greater than or equal to 1",
        ),
        ({"optimize": {"tolerance": 0.01, "batch": 4, "optimizer": "adam"}}, "optimize: batch 4 needs tolerance: 0"),
        (
            {"styles": [{"name": "x", "images": ["a.jpg"], "scale": 8}]},
            "styles[0].scale: Input should be less than or equal to 4",
        ),
        (
            {"styles": [{"name": "x", "images": ["a.jpg"], "scale": 0}]},
            "styles[0].scale: Input should be greater than or equal to 0.1",
        ),
    ],
)
def test_config_errors_name_the_key(shared, tmp_path, change, message):
    config = _write_config(tmp_path, [shared / "content"], [("wave", shared / "style/wave.jpg")])
    data = yaml.safe_load(config.read_text())
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    config.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["run", str(config), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_dry_run_lists_jobs_without_running(shared, tmp_path):
    config = _write_config(
        tmp_path,
        [shared / "content"],
        [("wave", shared / "style/wave.jpg"), ("scream", shared / "style/the_scream.jpg")],
    )
    result = runner.invoke(app, ["run", str(config), "--dry-run"])
    assert result.exit_code == 0
    assert "6 jobs: 6 pending" in result.output and "astronaut.png × scream" in result.output
    assert not (tmp_path / "out").exists()


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "run" in done.stdout and "image" in done.stdout


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-CUDA error")
def test_missing_cuda_device_is_a_usage_error(shared, tmp_path):
    result = runner.invoke(
        app,
        image_args(
            shared / "content/chelsea.png", shared / "style/wave.jpg", tmp_path / "o.png", "--device", "cuda:0", *FAST
        ),
    )
    assert result.exit_code == 2 and "CUDA is not available" in result.output
    config = _write_config(tmp_path, [shared / "content"], [("wave", shared / "style/wave.jpg")])
    data = yaml.safe_load(config.read_text())
    data["devices"] = ["cuda:0"]
    config.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 2 and "devices: device cuda:0: CUDA is not available" in result.output
    assert not list((tmp_path / "out").glob("*.png"))


def test_config_reference_page_is_generated_from_the_schema():
    from pipeline.batch.config import reference

    page = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    assert reference() in page


def test_unwritable_output_dir_is_a_config_error(shared, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the output folder's parent should be")
    config = _write_config(tmp_path, [shared / "content"], [("wave", shared / "style/wave.jpg")])
    data = yaml.safe_load(config.read_text())
    data["output"]["dir"] = str(blocker / "out")
    config.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 2
    assert "output.dir: cannot write to" in result.output and "not_a_folder" in result.output


def test_vgg16_config_errors_name_the_key(shared, tmp_path):
    """model.arch vgg16 with a VGG-19-only layer, or with the (VGG-19) bundled weights: exit 2, one line."""
    config = _write_config(tmp_path, [shared / "content"], [("wave", shared / "style/wave.jpg")])
    data = yaml.safe_load(config.read_text())
    data["model"] = {"arch": "vgg16", "weights": "torchvision"}
    data.setdefault("optimize", {})["style_layers"] = {"relu1_1": 1.0, "relu5_4": 1.0}
    config.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["plan", str(config)])
    assert result.exit_code == 2 and "VGG-16 has no layer 'relu5_4' (optimize.style_layers)" in result.output
    data["model"]["arch"] = "vgg19"
    data["optimize"]["style_layers"] = {"relu1_1": 1.0, "rleu4_2": 1.0}  # a typo, in either network
    config.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["plan", str(config)])
    assert result.exit_code == 2 and "VGG-19 has no layer 'rleu4_2'; did you mean 'relu4_2'?" in result.output
    data["model"]["arch"] = "vgg16"
    data["model"]["weights"] = "bundled"
    del data["optimize"]["style_layers"]
    config.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["plan", str(config)])
    assert result.exit_code == 2 and "bundled weights are VGG-19 only" in result.output


def test_every_shipped_config_is_valid_against_the_schema():
    """The sample configs use only real keys and values (paths aside: cron.yaml names a render box's)."""
    import yaml

    from pipeline.batch.config import Config

    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        Config.model_validate(yaml.safe_load(path.read_text()))


def test_image_command_rejects_a_bad_option_value(shared, tmp_path):
    for option, value in (("--precision", "fp8"), ("--tile", "tiny"), ("--style-loss", "l2"), ("--style-scale", "5")):
        result = runner.invoke(
            app,
            image_args(shared / "content/coffee.png", shared / "style/wave.jpg", tmp_path / "out.png", option, value),
        )
        assert result.exit_code == 2 and option in result.output, result.output


def test_the_command_names_itself_stylize():
    """`python -m pipeline` re-executes itself; its usage lines still say `stylize`, with plain argument names."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "image", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: stylize image" in done.stdout and "CONTENT" in done.stdout and "STYLE" in done.stdout
    assert "python -m pipeline" not in done.stdout and "STYLE..." not in done.stdout
