"""Discovery of images, videos and numbered frame sequences."""

from pathlib import Path

import pytest
from PIL import Image

from pipeline.discover import InputError, discover


def _img(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(path)
    return path


def test_numbered_folder_is_one_sequence_in_frame_order(tmp_path):
    for n in (10, 8, 9, 11):
        _img(tmp_path / "in" / "shot010" / f"frame_{n:04d}.png")
    _img(tmp_path / "in" / "still.jpg")
    sources = discover([str(tmp_path / "in")], exclude=tmp_path / "out")
    kinds = {s.relative.as_posix(): s for s in sources}
    assert set(kinds) == {"shot010", "still.jpg"}
    seq = kinds["shot010"]
    assert seq.kind == "sequence" and [f.name for f in seq.frames] == [f"frame_{n:04d}.png" for n in (8, 9, 10, 11)]


def test_a_sequence_folder_given_directly_keeps_its_name(tmp_path):
    for n in (1, 2):
        _img(tmp_path / "shot" / f"f{n}.png")
    (source,) = discover([str(tmp_path / "shot")], exclude=tmp_path / "out")
    assert source.kind == "sequence" and source.relative == Path("shot")


@pytest.mark.parametrize("names", [["a_0001.png", "a_0003.png"], ["a_0001.png", "b_0002.png"], ["a_0001.png"], ["x.png", "a_0002.png"]])
def test_gaps_mixed_prefixes_and_singles_stay_images(tmp_path, names):
    for name in names:
        _img(tmp_path / "in" / "sub" / name)
    sources = discover([str(tmp_path / "in")], exclude=tmp_path / "out")
    assert all(s.kind == "image" for s in sources) and len(sources) == len(names)


def test_hidden_output_dir_and_duplicates_are_skipped(tmp_path):
    a = _img(tmp_path / "in" / "a.png")
    _img(tmp_path / "in" / ".hidden.png")
    _img(tmp_path / "in" / ".cache" / "b.png")
    _img(tmp_path / "in" / "out" / "a.style.png")
    (tmp_path / "in" / "notes.txt").write_text("ignored")
    (tmp_path / "in" / "clip.mp4").write_bytes(b"")
    sources = discover([str(tmp_path / "in"), str(a), str(tmp_path / "in" / "*.png")], exclude=tmp_path / "in" / "out")
    assert [(s.relative.as_posix(), s.kind) for s in sources] == [("a.png", "image"), ("clip.mp4", "video")]


def test_inputs_that_name_nothing_are_errors(tmp_path):
    with pytest.raises(InputError, match=r"inputs\[0\]: .*nope: no such file or folder"):
        discover([str(tmp_path / "nope")], exclude=tmp_path / "out")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not an image or video file"):
        discover([str(tmp_path / "notes.txt")], exclude=tmp_path / "out")
    with pytest.raises(InputError, match="matches no files"):
        discover([str(tmp_path / "*.png")], exclude=tmp_path / "out")
