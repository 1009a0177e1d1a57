"""Output names: one rule on the input's own path, so that no input's output is lost to another's."""

import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.batch.config import Config
from pipeline.batch.discover import discover
from pipeline.batch.plan import NAME_MAX, plan
from pipeline.ui.cli import app

runner = CliRunner()


def _config(tmp_path: Path, inputs: list[Path], style: Path, **output) -> Path:
    data = {
        "inputs": [str(i) for i in inputs],
        "styles": [{"name": "wave", "images": [str(style)]}],
        "output": {"dir": str(tmp_path / "out"), **output},
        "optimize": {"size": 40, "iterations": 2, "scales": 1},
        "video": {"temporal": False, "measure": False},
        "devices": "cpu",
        "cache_dir": str(tmp_path / "cache"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _video(path: Path, frames: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for i in range(frames):
            image = np.full((24, 32, 3), 40 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _outputs(config: Config, folder: Path) -> dict[str, set[Path]]:
    """Every output path of each input under `folder`, by input name."""
    result = plan(config, discover([str(folder)], exclude=config.output.dir).sources)
    outs: dict[str, set[Path]] = {}
    for job in result.jobs:
        outs.setdefault(job.source.path.name, set()).add(job.output)
    for video in result.videos:
        outs[video.clip.source.path.name].add(video.output)
    return outs


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_clips_with_one_stem_never_share_an_output(tmp_path, shared):
    """Two videos and two animations named `clip`: four frame folders and four assembled files."""
    folder = tmp_path / "in"
    _video(folder / "clip.mp4")
    _video(folder / "clip.mov")
    frames = [Image.new("RGB", (16, 12), (60 * i, 0, 0)) for i in range(3)]
    for name in ("clip.gif", "clip.webp"):
        frames[0].save(folder / name, save_all=True, append_images=frames[1:], duration=100, loop=0)
    config = Config.model_validate(yaml.safe_load(_config(tmp_path, [folder], shared / "style/wave.jpg").read_text()))
    outs = _outputs(config, folder)
    assert len(outs) == 4 and sum(map(len, outs.values())) == len(set().union(*outs.values()))
    assert {p.parent.name for paths in outs.values() for p in paths if p.suffix == ".png"} == {
        "clip.wave",
        "clip.mov.wave",
        "clip.gif.wave",
        "clip.webp.wave",
    }
    assert {p.parent.name for p in outs["clip.mov"]} >= {"clip.mov.wave"}
    assert config.output.dir / "clip.mov.wave.mp4" in outs["clip.mov"]
    assert config.output.dir / "clip.wave.mp4" in outs["clip.mp4"]


@pytest.mark.parametrize("fmt", ["png", "jpg", "same"])
def test_an_inputs_output_name_does_not_depend_on_its_siblings(tmp_path, shared, fmt):
    """The rule looks at the input's own path only: adding siblings changes no name."""
    alone, crowd = tmp_path / "alone", tmp_path / "crowd"
    for folder, names in ((alone, ["b.png"]), (crowd, ["b.png", "b.jpg", "b.PNG", "b.jpeg", "b.webp"])):
        folder.mkdir()
        for name in names:
            Image.new("RGB", (8, 8)).save(
                folder / name, format=Image.registered_extensions()[Path(name).suffix.lower()]
            )
    out = tmp_path / "out"

    def make() -> Config:
        return Config.model_validate(
            {
                "inputs": [str(alone)],
                "styles": [{"name": "wave", "images": [str(shared / "style/wave.jpg")]}],
                "output": {"dir": str(out), "format": fmt},
            }
        )

    first, second = _outputs(make(), alone), _outputs(make(), crowd)
    assert first["b.png"] == second["b.png"]
    everything = [p for paths in second.values() for p in paths]
    assert len(everything) == len(set(everything)) == 5, "five inputs, five outputs"


def _run_once(tmp_path: Path, photo: Path, name: str) -> tuple[Path, Path]:
    """`photo` saved as in/`name`, and one finished run of it: (the input folder, the config)."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(photo).convert("RGB").save(folder / name)
    config = _config(tmp_path, [folder], photo.parents[1] / "style/wave.jpg")
    assert runner.invoke(app, ["run", str(config)]).exit_code == 0
    return folder, config


@pytest.mark.slow
def test_a_finished_output_keeps_its_name_and_bytes_when_a_sibling_appears(tmp_path, shared):
    folder, config = _run_once(tmp_path, shared / "content/chelsea.png", "b.png")
    done = tmp_path / "out" / "b.wave.png"
    before = _sha(done)

    Image.open(shared / "content/coffee.png").convert("RGB").save(folder / "b.jpg")
    second = runner.invoke(app, ["run", str(config)])
    assert second.exit_code == 0, second.output
    assert _sha(done) == before and "1 run, 1 already done" in second.output
    assert Image.open(tmp_path / "out" / "b.jpg.wave.png").size == (40, 27)

    Image.open(shared / "content/astronaut.png").convert("RGB").save(folder / "b.jpg.png")  # would take b.jpg's name
    third = runner.invoke(app, ["run", str(config)])
    assert third.exit_code == 1
    assert "FAILED b.jpg: " in third.output and "its output b.jpg.wave.png would also be written for" in third.output
    assert _sha(done) == before


@pytest.mark.slow
def test_outputs_of_the_earlier_naming_rule_are_renamed_not_rerendered(tmp_path, shared):
    folder, config = _run_once(tmp_path, shared / "content/coffee.png", "a.jpg")
    out = tmp_path / "out"
    new, old = out / "a.jpg.wave.png", out / "a.wave.png"
    made = _sha(new)
    manifest = json.loads((out / "manifest.json").read_text())  # as an earlier version named it
    manifest["jobs"] = {"a.wave.png": {**manifest["jobs"]["a.jpg.wave.png"], "output": "a.wave.png"}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    new.rename(old)

    again = runner.invoke(app, ["run", str(config)])
    assert again.exit_code == 0, again.output
    assert "renamed 1 outputs" in again.output and "0 run, 1 already done" in again.output
    assert not old.exists() and _sha(new) == made
    assert set(json.loads((out / "manifest.json").read_text())["jobs"]) == {"a.jpg.wave.png"}


@pytest.mark.slow
def test_long_file_names_are_written_or_shortened_by_a_fixed_rule(tmp_path, shared):
    folder = tmp_path / "in"
    folder.mkdir()
    photo = Image.open(shared / "content/chelsea.png").convert("RGB")
    fits = "f" * 232 + ".png"  # 236 characters: its output name still fits, its temporaries must too
    too_long = "t" * 250 + ".png"  # 254: its output name (259) would not fit
    photo.save(folder / fits)
    photo.save(folder / too_long)
    config = _config(tmp_path, [folder], shared / "style/wave.jpg")
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "out").glob("*.wave.png"))
    assert "f" * 232 + ".wave.png" in names
    (short,) = [n for n in names if n.startswith("t")]
    assert len(short.encode()) <= NAME_MAX and "~" in short and short.endswith(".wave.png")
    assert "0 run, 2 already done" in runner.invoke(app, ["run", str(config)]).output, "the shortened name is stable"
