"""Runs that would lose work or stylise nothing in silence: each is refused or warned of, by name."""

import errno
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import require_shared
from PIL import Image
from typer.testing import CliRunner

from pipeline.ui.cli import app

runner = CliRunner()


def _config(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _base(tmp_path: Path, shared: Path, inputs: list, **extra) -> dict:
    return {
        "inputs": [str(i) for i in inputs],
        "styles": [{"name": "wave", "images": [str(shared / "style/wave.jpg")]}],
        "output": {"dir": str(tmp_path / "out")},
        "optimize": {"size": 40, "iterations": 2, "scales": 1},
        "devices": "cpu",
        "cache_dir": str(tmp_path / "cache"),
        **extra,
    }


def _photo(shared: Path, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(shared / "content/chelsea.png").convert("RGB").save(path)
    return path


def test_an_output_dir_equal_to_the_input_folder_exits_2_before_any_work(tmp_path, shared):
    folder = tmp_path / "in"
    _photo(shared, folder / "a.png")
    data = _base(tmp_path, shared, [folder])
    data["output"]["dir"] = str(folder)
    result = runner.invoke(app, ["run", str(_config(tmp_path, data))])
    assert result.exit_code == 2
    assert "the output dir" in result.output and "is this folder or lies inside it" in result.output
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"], "nothing was written"


def test_a_folder_of_unsupported_files_exits_2_naming_the_types(tmp_path, shared):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.txt", "b.psd", "c.psd"):
        (folder / name).write_text("x")
    result = runner.invoke(app, ["run", str(_config(tmp_path, _base(tmp_path, shared, [folder])))])
    assert result.exit_code == 2
    assert (
        "config.yaml: the inputs hold no image or video to stylise: skipped 3 files of unsupported types: 2 .psd, 1 .txt"
        in result.output
    )


def test_skipped_files_are_counted_in_one_warning_line(tmp_path, shared):
    folder = tmp_path / "in"
    _photo(shared, folder / "a.png")
    for name in ("notes.txt", "scene.blend", "x.blend"):
        (folder / name).write_text("x")
    result = runner.invoke(app, ["plan", str(_config(tmp_path, _base(tmp_path, shared, [folder])))])
    assert result.exit_code == 0
    assert result.output.count("warning: skipped 3 files of unsupported types: 2 .blend, 1 .txt") == 1


def test_an_input_that_matches_nothing_names_the_config_file(tmp_path, shared):
    config = _config(tmp_path, _base(tmp_path, shared, [tmp_path / "*.png"]))
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 2 and f"{config}: inputs[0]: " in result.output and "matches no files" in result.output


def test_a_duplicate_key_in_the_yaml_exits_2_naming_it_and_its_line(tmp_path, shared):
    _photo(shared, tmp_path / "in" / "a.png")
    text = yaml.safe_dump(_base(tmp_path, shared, [tmp_path / "in"]), sort_keys=False)
    text = text.replace("  size: 40\n", "  size: 40\n  iterations: 5\n", 1)  # iterations twice in optimize
    config = tmp_path / "config.yaml"
    config.write_text(text)
    line = text.splitlines().index("  iterations: 2") + 1
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 2
    assert f"invalid YAML at line {line}: duplicate key 'iterations' (first at line {line - 1})" in result.output


def test_a_corrupt_style_image_fails_the_config_before_any_work(tmp_path, shared):
    _photo(shared, tmp_path / "in" / "a.png")
    _photo(shared, tmp_path / "in" / "b.png")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    data = _base(tmp_path, shared, [tmp_path / "in"])
    data["styles"][0]["images"] = [str(broken)]
    result = runner.invoke(app, ["run", str(_config(tmp_path, data))])
    assert result.exit_code == 2
    assert "styles[0].images[0]: " in result.output and "broken.jpg" in result.output
    assert not (tmp_path / "out" / "manifest.json").exists(), "no job ran"


def test_an_unwritable_cache_dir_exits_2_naming_it(tmp_path, shared):
    _photo(shared, tmp_path / "in" / "a.png")
    blocker = tmp_path / "ro"
    blocker.write_text("a file where the cache folder should be")
    data = _base(tmp_path, shared, [tmp_path / "in"], cache_dir=str(blocker / "cache"))
    result = runner.invoke(app, ["run", str(_config(tmp_path, data))])
    assert result.exit_code == 2 and "cache_dir: cannot write to" in result.output


def test_a_read_only_cache_mount_with_a_video_exits_2_without_a_traceback(tmp_path, shared, monkeypatch):
    """A read-only mount (EROFS at the first write; root ignores permission bits, so it is simulated there)."""
    clip = require_shared("video/cockatoo.mp4")
    cache = tmp_path / "cache"
    cache.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == cache:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    result = runner.invoke(app, ["run", str(_config(tmp_path, _base(tmp_path, shared, [clip])))])
    assert result.exit_code == 2, result.output
    assert f"cache_dir: cannot write to {cache} (Read-only file system)" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.slow
def test_the_summary_counts_each_job_once(tmp_path, shared):
    """A chained sequence with cross-faded seams: the closing line counts its frames, not its steps."""
    shot = tmp_path / "in" / "shot"
    shot.mkdir(parents=True)
    photo = Image.open(shared / "content/chelsea.png").convert("RGB").resize((60, 40))
    for n in range(1, 6):
        photo.rotate(n).save(shot / f"f_{n:03d}.png")
    data = _base(
        tmp_path, shared, [tmp_path / "in"], video={"segment_frames": 2, "segment_overlap": 1, "measure": False}
    )
    config = _config(tmp_path, data)
    first = runner.invoke(app, ["run", str(config)])
    assert first.exit_code == 0, first.output
    assert "finished: 5 jobs: 5 run, 0 already done, 0 failed" in first.output
    second = runner.invoke(app, ["run", str(config)])
    assert "finished: 5 jobs: 0 run, 5 already done, 0 failed" in second.output
