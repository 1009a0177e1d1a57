"""Discovery of images, videos and numbered frame sequences."""

from pathlib import Path

import pytest
from PIL import Image

from pipeline.batch.discover import InputError, discover


def _img(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(path)
    return path


def test_numbered_folder_is_one_sequence_in_frame_order(tmp_path):
    for n in (10, 8, 9, 11):
        _img(tmp_path / "in" / "shot010" / f"frame_{n:04d}.png")
    _img(tmp_path / "in" / "still.jpg")
    sources = discover([str(tmp_path / "in")], exclude=tmp_path / "out").sources
    kinds = {s.relative.as_posix(): s for s in sources}
    assert set(kinds) == {"shot010", "still.jpg"}
    seq = kinds["shot010"]
    assert seq.kind == "sequence" and [f.name for f in seq.frames] == [f"frame_{n:04d}.png" for n in (8, 9, 10, 11)]


def test_a_sequence_folder_given_directly_keeps_its_name(tmp_path):
    for n in (1, 2):
        _img(tmp_path / "shot" / f"f{n}.png")
    (source,) = discover([str(tmp_path / "shot")], exclude=tmp_path / "out").sources
    assert source.kind == "sequence" and source.relative == Path("shot")


@pytest.mark.parametrize(
    "names", [["a_0001.png", "a_0003.png"], ["a_0001.png", "b_0002.png"], ["a_0001.png"], ["x.png", "a_0002.png"]]
)
def test_gaps_mixed_prefixes_and_singles_stay_images(tmp_path, names):
    for name in names:
        _img(tmp_path / "in" / "sub" / name)
    sources = discover([str(tmp_path / "in")], exclude=tmp_path / "out").sources
    assert all(s.kind == "image" for s in sources) and len(sources) == len(names)


def test_hidden_files_other_types_and_duplicates_are_skipped(tmp_path):
    a = _img(tmp_path / "in" / "a.png")
    _img(tmp_path / "in" / ".hidden.png")
    _img(tmp_path / "in" / ".cache" / "b.png")
    (tmp_path / "in" / "notes.txt").write_text("ignored")
    (tmp_path / "in" / "more.txt").write_text("ignored")
    (tmp_path / "in" / "scene.blend").write_bytes(b"")
    (tmp_path / "in" / "clip.mp4").write_bytes(b"")
    found = discover([str(tmp_path / "in"), str(a), str(tmp_path / "in" / "*.png")], exclude=tmp_path / "out")
    assert [(s.relative.as_posix(), s.kind) for s in found.sources] == [("a.png", "image"), ("clip.mp4", "video")]
    assert found.skipped == {".txt": 2, ".blend": 1}
    assert found.notes() == ["skipped 3 files of unsupported types: 1 .blend, 2 .txt"]


@pytest.mark.parametrize("out", ["in", "in/out", "in/sub/out"])
def test_an_output_dir_that_is_or_lies_inside_an_input_folder_is_an_error(tmp_path, out):
    _img(tmp_path / "in" / "a.png")
    with pytest.raises(InputError, match=r"inputs\[0\]: .*in: the output dir .* is this folder or lies inside it"):
        discover([str(tmp_path / "in")], exclude=tmp_path / out)


def test_inputs_with_files_but_nothing_to_stylise_are_an_error_naming_the_types(tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("a.txt", "b.txt", "c.psd"):
        (tmp_path / "in" / name).write_text("x")
    with pytest.raises(
        InputError, match=r"no image or video to stylise: skipped 3 files of unsupported types: 1 \.psd, 2 \.txt"
    ):
        discover([str(tmp_path / "in")], exclude=tmp_path / "out")


def test_what_an_earlier_run_wrote_is_not_taken_as_input(tmp_path):
    """After output.dir moves, the old output dir (its manifest, outputs and report) is passed over."""
    from pipeline.batch.manifest import Manifest, Record

    _img(tmp_path / "in" / "a.png")
    old = tmp_path / "in" / "old_out"
    _img(old / "a.wave.png")
    _img(old / "contact_sheet.png")
    mine = _img(old / "mine.png")  # not in the manifest: a file of the user's
    manifest = Manifest(old)
    manifest.put(
        Record(output="a.wave.png", source=str(tmp_path / "in" / "a.png"), style="wave", key="k", state="done")
    )
    manifest.save()
    found = discover([str(tmp_path / "in")], exclude=tmp_path / "out")
    assert [s.path for s in found.sources] == [tmp_path / "in" / "a.png", mine]
    assert found.earlier == 3 and "skipped 3 files that an earlier stylize run wrote" in found.notes()[-1]


def test_a_sequence_with_gaps_stays_one_sequence_and_names_the_missing_frames(tmp_path):
    shot = tmp_path / "in" / "shot"
    for n in (1, 2, 3, 5, 6, 9, 10, 11, 12):
        _img(shot / f"frame_{n:04d}.png")
    _img(shot / "reference.png")  # an unrelated image beside the frames
    found = discover([str(tmp_path / "in")], exclude=tmp_path / "out")
    by_kind = {s.kind: s for s in found.sources}
    assert set(by_kind) == {"sequence", "image"} and by_kind["image"].path.name == "reference.png"
    seq = by_kind["sequence"]
    assert [f.name for f in seq.frames] == [f"frame_{n:04d}.png" for n in (1, 2, 3, 5, 6, 9, 10, 11, 12)]
    assert seq.gaps == (3, 5)  # frame_0005 and frame_0009 follow missing frames
    assert found.warnings == (
        f"{shot}: frames 4, 7-8 missing from frame_####.png; the temporal chain restarts after each gap",
    )


def test_a_sequence_rendered_on_twos_has_no_gaps(tmp_path):
    for n in (1001, 1003, 1005, 1007):
        _img(tmp_path / "shot" / f"plate.{n}.png")
    found = discover([str(tmp_path / "shot")], exclude=tmp_path / "out")
    (seq,) = found.sources
    assert seq.kind == "sequence" and seq.gaps == () and found.warnings == ()


def test_inputs_that_name_nothing_are_errors(tmp_path):
    with pytest.raises(InputError, match=r"inputs\[0\]: .*nope: no such file or folder"):
        discover([str(tmp_path / "nope")], exclude=tmp_path / "out")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not an image or video file"):
        discover([str(tmp_path / "notes.txt")], exclude=tmp_path / "out")
    with pytest.raises(InputError, match="matches no files"):
        discover([str(tmp_path / "*.png")], exclude=tmp_path / "out")


def test_the_temporal_chain_restarts_after_a_gap(tmp_path, shared):
    from pipeline.batch.config import Config
    from pipeline.batch.plan import plan

    for n in (1, 2, 3, 7, 8):
        _img(tmp_path / "shot" / f"frame_{n:04d}.png")
    config = Config.model_validate(
        {
            "inputs": [str(tmp_path / "shot")],
            "output": {"dir": str(tmp_path / "out")},
            "styles": [{"name": "wave", "images": [str(shared / "style/wave.jpg")]}],
        }
    )
    result = plan(config, discover(config.inputs, exclude=config.output.dir).sources)
    chains = [[f.job.content.name for f in segment.frames] for segment in result.segments]
    assert chains == [[f"frame_{n:04d}.png" for n in (1, 2, 3)], [f"frame_{n:04d}.png" for n in (7, 8)]]
    assert [j.output.name for j in result.jobs] == [f"frame_{n:04d}.png" for n in (1, 2, 3, 7, 8)], "frame names kept"
