"""Temporal consistency through `stylize run`: chains, segments and seams, scene cuts, the warp-error record."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_config
from PIL import Image
from typer.testing import CliRunner

from pipeline.batch.config import VideoConfig
from pipeline.batch.discover import Source
from pipeline.batch.plan import Job, split_segments
from pipeline.ui.cli import app

runner = CliRunner()


def _pan(photo: Path, folder: Path, count: int, start: int = 1, step: int = 3) -> None:
    """`count` frames of a slow pan across a real photo, numbered from `start` (a frame sequence)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.open(photo).convert("RGB").resize((240, 160))
    for i in range(count):
        image.crop((step * i, step * i // 2, step * i + 96, step * i // 2 + 64)).save(folder / f"f{start + i:03d}.png")


def _run(
    tmp_path: Path, inputs: Path, style: Path, name: str, video: dict, iterations: int = 12, workers: int = 1
) -> dict:
    config = write_config(
        tmp_path / f"{name}.yaml",
        [inputs],
        tmp_path / name,
        style=style,
        optimize={"size": 64, "iterations": iterations, "scales": 1},
        video=video,
        workers_per_device=workers,
    )
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code in (0, 1), result.output
    return json.loads((tmp_path / name / "manifest.json").read_text())["jobs"] | {
        "_exit": result.exit_code,
        "_log": result.output,
    }


def _frames(n: int) -> tuple[Job, ...]:
    source = Source(Path("/clip"), Path("/"), "sequence")
    return tuple(Job(source, None, Path(f"/clip/{i}.png"), Path(f"/out/{i}.png"), key=f"k{i}") for i in range(n))


def test_segments_overlap_and_seams_cross_fade_with_rising_weight(tmp_path):
    video = VideoConfig(segment_frames=4, segment_overlap=2)
    final, segments, seams = split_segments(_frames(10), video, tmp_path)
    assert [[f.job.content.stem for f in s.frames] for s in segments] == [
        ["0", "1", "2", "3"],
        ["2", "3", "4", "5", "6", "7"],
        ["6", "7", "8", "9"],
    ]
    assert [(s.job.content.stem, round(s.weight, 3)) for s in seams] == [
        ("2", 0.333),
        ("3", 0.667),
        ("6", 0.333),
        ("7", 0.667),
    ]
    own = {f.job.content.stem: f.path for s in segments for f in s.frames if f.path == f.job.output}
    assert sorted(own, key=int) == ["0", "1", "4", "5", "8", "9"]  # seam frames are written by the cross-fade only
    assert all(s.earlier.parent == s.later.parent == tmp_path / "seams" and s.earlier != s.later for s in seams)
    assert len({j.key for j in final}) == 10


def test_chain_keys_cover_every_earlier_frame_of_the_segment(tmp_path):
    video = VideoConfig(segment_frames=4, segment_overlap=2)
    before, _, _ = split_segments(_frames(10), video, tmp_path)
    changed = list(_frames(10))
    changed[4] = Job(changed[4].source, None, changed[4].content, changed[4].output, key="other")
    after, _, _ = split_segments(tuple(changed), video, tmp_path)
    same = [a.key == b.key for a, b in zip(before, after)]
    assert same == [True, True, True, True, False, False, False, False, True, True]
    assert (
        split_segments(_frames(10), VideoConfig(segment_frames=4, segment_overlap=2, temporal_weight=1.0), tmp_path)[0][
            0
        ].key
        != before[0].key
    )


def test_overlap_must_be_shorter_than_a_segment():
    with pytest.raises(ValueError, match="segment_overlap"):
        VideoConfig(segment_frames=4, segment_overlap=4)


@pytest.mark.slow
def test_temporal_chain_flickers_less_than_independent_frames(shared, tmp_path):
    _pan(shared / "content" / "chelsea.png", tmp_path / "clip", 8)
    style = shared / "style" / "starry_night.jpg"
    independent = _run(tmp_path, tmp_path / "clip", style, "independent", {"temporal": False})
    temporal = _run(tmp_path, tmp_path / "clip", style, "temporal", {"temporal": True, "iterations_after_first": 4})
    assert independent["_exit"] == temporal["_exit"] == 0
    frames = sorted((tmp_path / "temporal" / "clip.wave").glob("f*.png"))
    assert len(frames) == 8 and Image.open(frames[0]).size == (64, 43)
    ind, tem = independent["clip.wave"]["metrics"], temporal["clip.wave"]["metrics"]
    assert tem["warp_error"] < 0.5 * ind["warp_error"]
    assert ind["warp_error_content"] == pytest.approx(
        tem["warp_error_content"]
    )  # the floor does not depend on the style
    iterations = [temporal[f"clip.wave/f{i:03d}.png"]["iterations"] for i in range(1, 9)]
    assert iterations == [12] + [4] * 7
    assert "warp error" in temporal["_log"]


@pytest.mark.slow
def test_scene_cut_restarts_the_chain(shared, tmp_path):
    _pan(shared / "content" / "chelsea.png", tmp_path / "clip", 4, start=1)
    _pan(shared / "content" / "astronaut.png", tmp_path / "clip", 4, start=5)
    records = _run(tmp_path, tmp_path / "clip", shared / "style" / "wave.jpg", "out", {"iterations_after_first": 3})
    iterations = [records[f"clip.wave/f{i:03d}.png"]["iterations"] for i in range(1, 9)]
    assert iterations == [12, 3, 3, 3, 12, 3, 3, 3]  # frame 5 starts a new shot: a full render, no ghost of the cat
    assert records["clip.wave"]["metrics"]["cuts"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])  # 2: the segments run at once on a pool of processes
def test_seam_frames_are_the_cross_fade_of_both_segments(shared, tmp_path, workers):
    _pan(shared / "content" / "coffee.png", tmp_path / "clip", 7)
    video = {"segment_frames": 4, "segment_overlap": 2, "iterations_after_first": 3}
    records = _run(
        tmp_path, tmp_path / "clip", shared / "style" / "wave.jpg", "out", video, iterations=6, workers=workers
    )
    assert records["_exit"] == 0
    assert all(records[f"clip.wave/f{i:03d}.png"]["state"] == "done" for i in range(1, 8))
    seams = sorted((tmp_path / "cache" / "seams").glob("*.png"))
    assert len(seams) == 4  # frames 3 and 4, one version from each segment
    out3 = np.asarray(Image.open(tmp_path / "out" / "clip.wave" / "f003.png"), dtype=float)
    versions = [np.asarray(Image.open(p), dtype=float) for p in seams]
    blends = [a / 3 * 2 + b / 3 for a in versions for b in versions if a is not b]  # weight 1/3 on the later version
    assert min(np.abs(out3 - b).max() for b in blends) <= 1.0  # PNG rounding only
    metrics = records["clip.wave"]["metrics"]
    assert {"warp_error_seams", "warp_error_inside"} <= set(metrics)
    rerun = _run(
        tmp_path, tmp_path / "clip", shared / "style" / "wave.jpg", "out", video, iterations=6, workers=workers
    )
    assert "0 run" in rerun["_log"] and "0 failed" in rerun["_log"]


@pytest.mark.slow
def test_a_corrupt_frame_fails_alone_and_the_chain_goes_on(shared, tmp_path):
    _pan(shared / "content" / "chelsea.png", tmp_path / "clip", 6)
    bad = tmp_path / "clip" / "f003.png"
    bad.write_bytes(b"not a png")
    records = _run(tmp_path, tmp_path / "clip", shared / "style" / "wave.jpg", "out", {"iterations_after_first": 3})
    assert records["_exit"] == 1
    assert records["clip.wave/f003.png"]["state"] == "failed" and str(bad) in records["clip.wave/f003.png"]["error"]
    assert "\n" not in records["clip.wave/f003.png"]["error"]
    iterations = [records[f"clip.wave/f{i:03d}.png"].get("iterations") for i in (1, 2, 4, 5, 6)]
    assert iterations == [12, 3, 12, 3, 3]  # frame 4 starts over after the bad frame
    assert bad.read_bytes() == b"not a png"


@pytest.mark.slow
def test_a_resumed_chain_continues_from_the_frames_already_done(shared, tmp_path):
    _pan(shared / "content" / "chelsea.png", tmp_path / "clip", 6)
    style = shared / "style" / "wave.jpg"
    video = {"iterations_after_first": 3}
    first = _run(tmp_path, tmp_path / "clip", style, "out", video)
    manifest = tmp_path / "out" / "manifest.json"
    data = json.loads(manifest.read_text())
    for name in ("f005.png", "f006.png"):  # as if the run had been killed after frame 4
        del data["jobs"][f"clip.wave/{name}"]
        (tmp_path / "out" / "clip.wave" / name).unlink()
    manifest.write_text(json.dumps(data))
    again = _run(tmp_path, tmp_path / "clip", style, "out", video)
    assert again["_exit"] == 0
    assert all(again[f"clip.wave/f00{i}.png"] == first[f"clip.wave/f00{i}.png"] for i in range(1, 5))  # not redone
    assert "finished: 6 jobs: 2 run, 4 already done, 0 failed" in again["_log"]  # frames 5 and 6
    assert again["clip.wave/f005.png"]["iterations"] == 3  # it follows frame 4, read back from disk
    assert again["clip.wave"]["metrics"]["warp_error"] < 2 * first["clip.wave"]["metrics"]["warp_error"]


@pytest.mark.slow
def test_long_term_consistency_holds_earlier_frames(shared, tmp_path):
    _pan(shared / "content" / "chelsea.png", tmp_path / "clip", 6)
    style = shared / "style" / "wave.jpg"
    records = _run(tmp_path, tmp_path / "clip", style, "out", {"long_term": [2, 4], "iterations_after_first": 3})
    assert records["_exit"] == 0
    assert [records[f"clip.wave/f00{i}.png"]["iterations"] for i in range(1, 7)] == [12, 3, 3, 3, 3, 3]
    assert all(records[f"clip.wave/f00{i}.png"]["losses"]["temporal"] > 0 for i in range(2, 7))
    flows = list((tmp_path / "cache" / "flow").glob("*.npz"))
    assert len(flows) == 5 + 4 + 2  # pairs (t-1, t), (t-2, t) and (t-4, t), each computed once
