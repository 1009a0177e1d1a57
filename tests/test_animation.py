"""Animated GIF and WebP: each is a clip, stylised frame by frame and written back as the same format with
its frame durations and loop count; a still one stays a plain image."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from test_naming import _config as naming_config
from typer.testing import CliRunner

from pipeline.batch.config import Config
from pipeline.batch.discover import discover
from pipeline.batch.plan import AnimationOut, plan
from pipeline.media.animation import AnimationError, assemble, extract_frames, probe
from pipeline.ui.cli import app

runner = CliRunner()
DURATIONS = [100, 200, 150]


def _config(tmp_path: Path, inputs: list[Path], style: Path, temporal: bool = True) -> Path:
    """test_naming's tiny config (size 40, 2 iterations, CPU), with the temporal chain on or off."""
    path = naming_config(tmp_path, inputs, style)
    data = yaml.safe_load(path.read_text())
    data["video"]["temporal"] = temporal
    path.write_text(yaml.safe_dump(data))
    return path


def _frames(count: int) -> list[Image.Image]:
    """48x32 frames that differ: a colour ramp and a white square that moves."""
    frames = []
    for i in range(count):
        image = Image.fromarray(np.full((32, 48, 3), (60 * i, 255 - 60 * i, 100), np.uint8))
        image.paste((255, 255, 255), (8 * i, 4, 8 * i + 10, 14))
        frames.append(image)
    return frames


def _animation(path: Path, durations: list[int] = DURATIONS, loop: int | None = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = _frames(len(durations))
    options = {"loop": loop} if loop is not None else {}
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, **options)
    return path


def _timing(path: Path) -> tuple[int, list[int], object, tuple[int, int]]:
    """(frames, durations, loop, size) of an animated file, as Pillow reads it."""
    info = probe(path)
    return info.frames, list(info.durations), info.loop, (info.width, info.height)


def _run(config: Path) -> str:
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    return result.output


def test_probe_extract_and_assemble_round_trip(tmp_path):
    source = _animation(tmp_path / "a.gif", loop=2)
    assert _timing(source) == (3, DURATIONS, 2, (48, 32))
    info = extract_frames(source, tmp_path / "frames")
    frames = sorted((tmp_path / "frames").glob("frame_*.png"))
    assert [f.name for f in frames] == ["frame_000001.png", "frame_000002.png", "frame_000003.png"]
    assert Image.open(frames[1]).getpixel((9, 8)) == (255, 255, 255)  # composited, the square where it is
    for suffix in (".gif", ".webp"):
        out = tmp_path / f"back{suffix}"
        assemble(frames, out, info.durations, info.loop)
        assert _timing(out) == (3, DURATIONS, 2, (48, 32)) and Image.open(out).format == suffix[1:].upper()
    assert not list(tmp_path.glob(".*part*"))  # written atomically


@pytest.mark.slow
@pytest.mark.parametrize("suffix,loop", [(".gif", 0), (".gif", 2), (".webp", 0), (".webp", 2)])
def test_an_animation_in_a_folder_and_one_named_directly_are_stylised_as_clips(tmp_path, shared, suffix, loop):
    folder = tmp_path / "in"
    in_folder = _animation(folder / f"loop{suffix}", loop=loop)
    named = _animation(tmp_path / "direct" / f"wave{suffix}", [100, 200, 150, 120], loop=loop)
    config = _config(tmp_path, [folder, named], shared / "style/wave.jpg")
    first = _run(config)
    assert "finished: 7 jobs: 7 run, 0 already done, 0 failed; 2 of 2 videos assembled" in first
    out = tmp_path / "out"
    for source, count in ((in_folder, 3), (named, 4)):
        result = out / f"{source.name}.wave{suffix}"
        durations = [100, 200, 150, 120][:count]
        assert _timing(result) == (count, durations, loop, (40, 27))
        assert Image.open(result).format == suffix[1:].upper()
        assert sorted(p.name for p in (out / f"{source.name}.wave").iterdir()) == [
            f"frame_{i:06d}.png" for i in range(1, count + 1)
        ]
    again = _run(config)
    assert "finished: 7 jobs: 0 run, 7 already done, 0 failed; 2 of 2 videos assembled" in again


@pytest.mark.slow
def test_a_gif_that_plays_once_keeps_no_loop_and_is_resumed_per_frame(tmp_path, shared):
    source = _animation(tmp_path / "in" / "once.gif", loop=None)
    config = _config(tmp_path, [source.parent], shared / "style/wave.jpg", temporal=False)
    _run(config)
    out = tmp_path / "out"
    frame = out / "once.gif.wave" / "frame_000002.png"
    frame.unlink()  # a run that lost one frame: only that frame is rendered again
    (out / "once.gif.wave.gif").unlink()
    again = _run(config)
    assert "finished: 3 jobs: 1 run, 2 already done, 0 failed; 1 of 1 videos assembled" in again
    assert _timing(out / "once.gif.wave.gif") == (3, DURATIONS, None, (40, 27))


def test_a_single_frame_gif_is_a_plain_image(tmp_path, shared):
    folder = tmp_path / "in"
    folder.mkdir()
    _frames(1)[0].save(folder / "still.gif")
    _animation(folder / "moving.gif")
    for fmt, name in (("png", "still.gif.wave.png"), ("jpg", "still.gif.wave.jpg"), ("same", "still.gif.wave.png")):
        config = Config.model_validate(
            {
                "inputs": [str(folder)],
                "styles": [{"name": "wave", "images": [str(shared / "style/wave.jpg")]}],
                "output": {"dir": str(tmp_path / "out"), "format": fmt},
                "cache_dir": str(tmp_path / "cache"),
            }
        )
        sources = {s.path.name: s for s in discover(config.inputs, exclude=config.output.dir).sources}
        assert sources["still.gif"].kind == "image" and sources["moving.gif"].kind == "animation"
        result = plan(config, list(sources.values()))
        still = [j for j in result.jobs if j.source.path.name == "still.gif"]
        assert [j.output.name for j in still] == [name] and still[0].content == folder / "still.gif"
        assert [(type(v), v.output.name) for v in result.videos] == [(AnimationOut, "moving.gif.wave.gif")]
        moving = [j for j in result.jobs if j.source.path.name == "moving.gif"]
        assert [j.content.parent.parent for j in moving] == [tmp_path / "cache" / "frames"] * 3
        assert [f.job for s in result.segments for f in s.frames] == moving  # the temporal chain (the default)


@pytest.mark.slow
def test_a_single_frame_gif_named_directly_is_stylised_as_an_image(tmp_path, shared):
    still = tmp_path / "still.gif"
    _frames(1)[0].save(still)
    output = _run(_config(tmp_path, [still], shared / "style/wave.jpg"))
    assert "finished: 1 jobs: 1 run, 0 already done, 0 failed;" in output and "videos" not in output.splitlines()[-1]
    assert Image.open(tmp_path / "out" / "still.gif.wave.png").size == (40, 27)


@pytest.mark.slow
def test_a_truncated_animated_gif_fails_only_its_own_jobs(tmp_path, shared):
    folder = tmp_path / "in"
    data = _animation(tmp_path / "whole.gif", [100, 200, 150, 120]).read_bytes()
    folder.mkdir()
    (folder / "broken.gif").write_bytes(data[: len(data) * 2 // 3])
    _frames(1)[0].save(folder / "fine.png")
    result = runner.invoke(app, ["run", str(_config(tmp_path, [folder], shared / "style/wave.jpg"))])
    assert result.exit_code == 1, result.output
    failures = [line.split(" FAILED ", 1)[1] for line in result.output.splitlines() if " FAILED " in line]
    assert len(failures) == 3 and all(line.startswith("broken.gif × wave [frame_") for line in failures)
    assert all(f"{folder / 'broken.gif'}: cannot decode frame 3 of 3 (" in line for line in failures)
    assert "4 jobs: 4 run, 0 already done, 3 failed; 0 of 1 videos assembled" in result.output
    assert (tmp_path / "out" / "fine.wave.png").is_file()
    assert not (tmp_path / "out" / "broken.gif.wave.gif").exists()


def test_an_animation_that_cannot_be_read_is_one_line_naming_it(tmp_path):
    source = _animation(tmp_path / "a.webp")
    source.write_bytes(source.read_bytes()[:40])
    with pytest.raises(AnimationError, match=r"^.*a\.webp: ") as caught:
        extract_frames(source, tmp_path / "frames")
    assert "\n" not in str(caught.value)
