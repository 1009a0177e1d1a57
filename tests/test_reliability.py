"""Reliability and safety: bad inputs, faults and hostile files each cost only their own job, and nothing is lost.

Every bad file is generated here. The big run feeds all of them (and good files in every odd format) to
one `stylize run`, without root's power to read any file, so that a chmod 000 file really is unreadable.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, photo_crops
from PIL import Image
from typer.testing import CliRunner

from pipeline.media.images import read_image
from pipeline.ui.cli import app

runner = CliRunner()


# --- making bad and odd files ----------------------------------------------------------------------


def _start_run(config: Path) -> subprocess.Popen:
    """`stylize run CONFIG` in the background, its stderr kept for the test to read."""
    command = [sys.executable, "-m", "pipeline", "run", str(config)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb(path: Path) -> None:
    """A valid PNG header that claims 50000x50000 RGB pixels, with a few bytes of data."""
    header = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(bytes(64)))
        + _chunk(b"IEND", b"")
    )


def _truncated(src: Image.Image, path: Path, fmt: str) -> None:
    src.save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _clip(path: Path, frames: int, fmt: str = "mp4") -> None:
    """A 32x32 H.264 clip of noise frames, its index first so that a cut keeps it readable."""
    with av.open(str(path), "w", format=fmt, options={"movflags": "faststart"} if fmt == "mp4" else {}) as out:
        stream = out.add_stream("libx264", rate=12)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        out.start_encoding()
        rng = np.random.default_rng(0)
        for _ in range(frames):
            out.mux(
                stream.encode(av.VideoFrame.from_ndarray(rng.integers(0, 255, (32, 32, 3), np.uint8), format="rgb24"))
            )
        out.mux(stream.encode(None))


def _alpha_ramp(size: tuple[int, int]) -> np.ndarray:
    w, h = size
    return np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))


GOOD = {  # name: what the output must look like
    "photo one.png": "rgb",
    "café ñ 日本.png": "rgb",
    "rgba.png": "rgba",
    "gray.png": "rgb",
    "palette.png": "rgb",
    "cmyk.jpg": "rgb",
    "deep.png": "rgb",
    "deep_rgb.png": "rgb",
    "rotated.jpg": "portrait",
}
BAD = {  # name: what its one-line reason must say
    "empty.jpg": "empty file",
    "empty.png": "empty file",
    "cut.jpg": "truncated",
    "cut.png": "truncated",
    "notes.jpg": "not a readable image",
    "bomb.png": "refused",
    "locked.png": "Permission denied",
    "loop_a.png": "symbolic links",
    "loop_b.png": "symbolic links",
    "nothing.mp4": "video",
}


def _make_inputs(folder: Path, photo: Path) -> None:
    """Every good odd format and every bad file, beside each other in one folder."""
    folder.mkdir()
    real = Image.open(photo).convert("RGB").crop((0, 0, 48, 32))
    real.save(folder / "photo one.png")
    real.save(folder / "café ñ 日本.png")
    rgba = real.convert("RGBA")
    rgba.putalpha(Image.fromarray(_alpha_ramp(real.size)))
    rgba.save(folder / "rgba.png")
    real.convert("L").save(folder / "gray.png")
    real.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    real.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.asarray(real.convert("L"), np.uint16) * 257).save(folder / "deep.png")  # I;16
    cv2.imwrite(str(folder / "deep_rgb.png"), np.asarray(real)[..., ::-1].astype(np.uint16) * 257)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown turned 90° clockwise
    real.save(folder / "rotated.jpg", exif=exif)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "empty.png").write_bytes(b"")
    _truncated(real, folder / "cut.jpg", "JPEG")
    _truncated(real, folder / "cut.png", "PNG")
    (folder / "notes.jpg").write_text("these are notes, not a photo\n")
    _bomb(folder / "bomb.png")
    real.save(folder / "locked.png")
    (folder / "locked.png").chmod(0)
    (folder / "loop_a.png").symlink_to("loop_b.png")
    (folder / "loop_b.png").symlink_to("loop_a.png")
    (folder / "sub").mkdir()
    (folder / "sub" / "again").symlink_to("..", target_is_directory=True)  # a folder loop
    _clip(folder / "broken.mp4", 12)
    data = (folder / "broken.mp4").read_bytes()
    (folder / "broken.mp4").write_bytes(data[: len(data) * 6 // 10])  # the stream breaks after a few frames
    _clip(folder / "nothing.mp4", 0, fmt="matroska")


def _tree_hashes(folder: Path) -> dict[str, str]:
    """Every entry under `folder`: a file's SHA-256 and mode, a link's target (links are not followed)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            out[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            out[rel] = f"{oct(path.stat().st_mode)} {hashlib.sha256(path.read_bytes()).hexdigest()}"
    return out


def _config(folder: Path, inputs: list[Path], out: Path | str, style: Path, **extra) -> Path:
    path = folder / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "inputs": [str(i) for i in inputs],
                "styles": [{"name": "wave", "images": [str(style)]}],
                "output": {"dir": str(out)},
                "optimize": {"size": 48, "iterations": 1, "scales": 1},
                "video": {"temporal": False, "measure": False},
                "devices": "cpu",
                "cache_dir": str(folder / "cache"),
                **extra,
            },
            allow_unicode=True,
        )
    )
    return path


def _records(out: Path) -> dict[str, dict]:
    return json.loads((out / "manifest.json").read_text())["jobs"]


def _unprivileged() -> list[str]:
    """A command prefix that takes root's power to read any file: root reads a chmod 000 file, others cannot."""
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []


# --- the bad-input suite ---------------------------------------------------------------------------


@pytest.mark.slow
def test_each_bad_input_fails_alone_and_every_odd_format_converts(shared, tmp_path):
    inputs = tmp_path / "in"
    _make_inputs(inputs, shared / "content/coffee.png")
    before = _tree_hashes(inputs)
    config = _config(tmp_path, [inputs], tmp_path / "out", shared / "style/wave.jpg")
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a chmod 000 file would be readable")
    done = subprocess.run(
        [*_unprivileged(), sys.executable, "-m", "pipeline", "run", str(config)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    assert done.returncode == 1, done.stderr
    assert _tree_hashes(inputs) == before  # inputs are never modified

    out = tmp_path / "out"
    records = _records(out)
    by_source = {Path(r["source"]).name: r for r in records.values() if r["output"].count("/") == 0}
    for name, problem in BAD.items():
        record = by_source[name]
        assert record["state"] == "failed", name
        assert name in record["error"] and problem.lower() in record["error"].lower() and "\n" not in record["error"], (
            record["error"]
        )
        assert not (out / record["output"]).exists()
    for name, look in GOOD.items():
        record = by_source[name]
        assert record["state"] == "done", (name, record.get("error"))
        with Image.open(out / record["output"]) as im:
            im.load()
            assert im.mode == ("RGBA" if look == "rgba" else "RGB"), name
            assert im.size == ((32, 48) if look == "portrait" else (48, 32)), name
    with Image.open(out / by_source["rgba.png"]["output"]) as im:
        assert np.abs(np.asarray(im)[..., 3].astype(int) - _alpha_ramp((48, 32))).max() <= 2  # the alpha, carried

    # The broken stream: the frames before the break are stylised, the video itself is a reported failure.
    frames = sorted((out / "broken.wave").glob("frame_*.png"))
    assert 0 < len(frames) < 12
    broken = records["broken.wave.mp4"]
    assert (
        broken["state"] == "failed"
        and "broken.mp4" in broken["error"]
        and f"after frame {len(frames)} of 12" in broken["error"]
    )
    assert not (out / "broken.wave.mp4").exists()
    assert "sub" not in {Path(r["output"]).parts[0] for r in records.values()}  # the folder loop is not followed
    failed = {line for line in done.stderr.splitlines() if "FAILED" in line}
    assert len(failed) == len(BAD) + 1  # each bad file once, plus the broken video
    assert not list(out.rglob("*.part*"))


@pytest.mark.parametrize(
    "make, mode",
    [
        (lambda im: im.convert("L"), "gray"),
        (lambda im: im.convert("P", palette=Image.Palette.ADAPTIVE), "palette"),
        (lambda im: im.convert("CMYK"), "cmyk"),
        (lambda im: im.convert("RGBA"), "rgba"),
        (lambda im: Image.fromarray(np.asarray(im.convert("L"), np.uint16) * 257), "gray 16-bit"),
    ],
)
def test_odd_modes_decode_to_the_colours_they_show(shared, tmp_path, make, mode):
    real = Image.open(shared / "content/coffee.png").convert("RGB").crop((0, 0, 48, 32))
    fmt = "JPEG" if mode == "cmyk" else "PNG"
    path = tmp_path / f"odd.{fmt.lower()}"
    make(real).save(path, format=fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    expected = real.convert("L") if "gray" in mode else real
    shown = np.asarray(expected.convert("RGB"), float) / 255
    decoded = read_image(path)[0].permute(1, 2, 0).numpy()
    assert decoded.shape == shown.shape and np.abs(decoded - shown).mean() < 0.03, mode


def test_16_bit_colour_png_keeps_its_high_byte(tmp_path):
    deep = np.zeros((8, 8, 3), np.uint16)
    deep[..., 2] = 40_000  # red, in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    assert read_image(tmp_path / "deep.png")[0, :, 0, 0].tolist() == pytest.approx([40_000 / 65_535, 0, 0], abs=1 / 255)


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    from pipeline.media.images import ImageError, working_shape

    _bomb(tmp_path / "bomb.png")
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("the bomb was decoded"))
    with pytest.raises(ImageError, match=r"bomb\.png: refused before decoding: Image size \(2500000000 pixels\)"):
        read_image(tmp_path / "bomb.png", 48)
    assert working_shape(tmp_path / "bomb.png", 48) is None


def test_alpha_drop_writes_rgb_and_jpeg_output_has_none(shared, tmp_path):
    from pipeline.media.images import read_alpha, write_image

    rgba = Image.new("RGBA", (40, 20), (200, 30, 60, 255))
    rgba.putalpha(Image.fromarray(_alpha_ramp((40, 20))))
    rgba.save(tmp_path / "a.png")
    alpha = read_alpha(tmp_path / "a.png")
    image = torch.rand(1, 3, 10, 20)
    write_image(image, tmp_path / "out.png", alpha)
    write_image(image, tmp_path / "out.jpg", alpha)
    write_image(image, tmp_path / "plain.png")
    assert Image.open(tmp_path / "out.png").mode == "RGBA" and Image.open(tmp_path / "out.png").size == (20, 10)
    assert Image.open(tmp_path / "out.jpg").mode == "RGB" and Image.open(tmp_path / "plain.png").mode == "RGB"
    assert read_alpha(shared / "content/coffee.png") is None


def test_an_output_dir_that_cannot_be_written_is_a_config_error_before_any_work(shared, tmp_path):
    (tmp_path / "blocker").write_text("a file where the output folder should be")
    config = _config(tmp_path, [shared / "content/coffee.png"], tmp_path / "blocker" / "out", shared / "style/wave.jpg")
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 2
    assert re.search(r"output\.dir: cannot write to .*blocker/out", result.output)
    assert not (tmp_path / "cache").exists()  # no style was encoded, no model ran


# --- faults ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_disk_full_mid_write_and_out_of_memory_fail_only_their_jobs_and_leave_no_partial_file(
    shared, tmp_path, monkeypatch
):
    """Jobs run in order a, b, c: b's write hits a full disk half-way, c runs out of memory."""
    import pipeline.render.renderer

    inputs = photo_crops(shared / "content/coffee.png", tmp_path / "in", 3)
    config = _config(tmp_path, [inputs], "out", shared / "style/wave.jpg")
    save, stylize, calls = Image.Image.save, pipeline.render.renderer.stylize, []

    def full_disk(self, fp, *args, **kwargs):
        if ".photo_b.wave.png." in str(fp):
            Path(fp).write_bytes(b"\x89PNG half an image")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(self, fp, *args, **kwargs)

    def third_runs_out_of_memory(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        return stylize(*args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", full_disk)
    monkeypatch.setattr(pipeline.render.renderer, "stylize", third_runs_out_of_memory)
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 1, result.output
    out = tmp_path / "out"
    records = _records(out)
    assert records["photo_a.wave.png"]["state"] == "done"
    assert re.fullmatch(r".*photo_b\.png: .*No space left on device.*", records["photo_b.wave.png"]["error"])
    assert records["photo_c.wave.png"]["error"].startswith(f"{inputs / 'photo_c.png'}: out of memory at size 48 (")
    assert sorted(p.name for p in out.glob("photo_*")) == ["photo_a.wave.png"]
    assert not list(out.rglob("*.part*"))


def _wait_for(predicate, seconds: float) -> None:
    end = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
def test_sigterm_abandons_the_job_cleanly_writes_the_manifest_and_exits_non_zero(shared, tmp_path):
    inputs = photo_crops(shared / "content/coffee.png", tmp_path / "in", 6)
    config = _config(
        tmp_path, [inputs], "out", shared / "style/wave.jpg", optimize={"size": 48, "iterations": 10, "scales": 1}
    )
    log = tmp_path / "out" / "stylize.log"
    proc = _start_run(config)
    try:
        _wait_for(lambda: log.is_file() and "] done" in log.read_text(), 120)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "terminated" in err
    out = tmp_path / "out"
    done = {k for k, r in _records(out).items() if r["state"] == "done"}
    assert done and done == {p.name for p in out.glob("photo_*.png")}  # every output has its record, and no more
    assert len(done) < 6 and not list(out.rglob("*.part*"))


@pytest.mark.slow
def test_a_worker_that_dies_has_its_task_run_again_and_the_run_goes_on(shared, tmp_path):
    inputs = photo_crops(shared / "content/coffee.png", tmp_path / "in", 6)
    config = _config(
        tmp_path,
        [inputs],
        "out",
        shared / "style/wave.jpg",
        workers_per_device=2,
        optimize={"size": 48, "iterations": 8, "scales": 1},
    )
    manifest = tmp_path / "out" / "manifest.json"
    proc = _start_run(config)
    try:
        _wait_for(manifest.is_file, 120)
        victim = next(iter(r["pid"] for r in json.loads(manifest.read_text())["jobs"].values()))
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, err  # the task it ran, run again on a fresh pool
    records = _records(tmp_path / "out")
    assert len(records) == 6 and all(r["state"] == "done" for r in records.values())
    assert {p.name for p in (tmp_path / "out").glob("photo_*.png")} == set(records)
    assert len({r["pid"] for r in records.values()} - {None}) >= 3  # two workers, then a fresh pool


# --- safety ---------------------------------------------------------------------------------------


def _sources() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((REPO / "pipeline").glob("*.py"))}


def test_yaml_is_read_safely_weights_hold_no_code_and_no_shell_runs():
    for name, text in _sources().items():
        assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(", text), name
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (name, call)
        assert not re.search(r"shell\s*=\s*True|os\.system\(|os\.popen\(|pickle\.loads?\(", text), name


def test_a_yaml_object_tag_is_refused(tmp_path):
    from pipeline.batch.config import ConfigError, load_config

    config = tmp_path / "config.yaml"
    config.write_text("inputs: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="config.yaml: invalid YAML"):
        load_config(config)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("name", ["../up", "/abs", "a/b", "..", ""])
def test_a_style_name_cannot_leave_the_output_dir(shared, tmp_path, name):
    config = _config(tmp_path, [shared / "content/coffee.png"], "out", shared / "style/wave.jpg")
    data = yaml.safe_load(config.read_text())
    data["styles"][0]["name"] = name
    config.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["plan", str(config)])
    assert result.exit_code == 2 and "styles[0].name" in result.output


def test_output_names_stay_inside_the_output_dir(tmp_path):
    from pipeline.batch.discover import discover
    from pipeline.batch.plan import frame_folder, output_path

    folder = tmp_path / "in" / "x y"
    folder.mkdir(parents=True)
    for name in ("-rf.png", "a\nb.png", "tab\t.png", " lead.png", "ü.png"):
        Image.new("RGB", (8, 8)).save(folder / name, format="PNG")
    out = tmp_path / "out"
    sources = discover([str(tmp_path / "in"), str(folder / "*.png")], exclude=out).sources
    assert len(sources) == 5
    for source in sources:
        for path in (output_path(source, "wave", out, "png"), frame_folder(source, "wave", out)):
            resolved = path.resolve()
            assert resolved.is_relative_to(out.resolve()) and resolved != out.resolve(), path
            assert "\n" not in path.name


def test_corrupt_cache_entries_are_recomputed(tmp_path):
    from pipeline.render.style_cache import StyleCache

    layers = ["relu1_1"]
    good = {"relu1_1": torch.eye(3)}
    calls = []

    def compute():
        calls.append(1)
        return good

    key = StyleCache.key(test=1)
    entry = tmp_path / "styles" / f"{key}.pt"
    StyleCache(tmp_path).get(key, layers, torch.device("cpu"), compute)
    for spoil in (b"", b"garbage" * 10, entry.read_bytes()[:200], b"PK\x03\x04" + bytes(100)):
        entry.write_bytes(spoil)
        assert torch.equal(StyleCache(tmp_path).get(key, layers, torch.device("cpu"), compute)["relu1_1"], torch.eye(3))
        assert entry.stat().st_size > 200  # rewritten whole
    torch.save({"relu1_1": torch.ones(2, 3)}, entry)  # loads, but not a Gram matrix
    StyleCache(tmp_path).get(key, layers, torch.device("cpu"), compute)
    assert len(calls) == 6


def test_outputs_get_the_permissions_of_a_new_file_not_the_temporary_600(tmp_path):
    """Atomic writes go through a private temporary; the result is readable by others per the umask."""
    import torch

    from pipeline.media import images

    out = tmp_path / "a.png"
    images.write_image(torch.rand(1, 3, 8, 8), out)
    assert out.stat().st_mode & 0o777 == 0o666 & ~images.UMASK != 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
