"""Issue 17: inputs of any aspect ratio and of more than 8 bits per sample. Every input is made here, tiny."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import image_args, write_config
from PIL import Image
from typer.testing import CliRunner

from pipeline.core.optimize import Settings, crop, levels, min_side, pad, padding, style_area, style_targets, stylize
from pipeline.media.images import (
    depth_note,
    output_bits,
    read_alpha,
    read_image,
    sample_depth,
    working_shape,
    write_image,
)
from pipeline.ui.cli import app

runner = CliRunner()
LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1")  # the conftest model's


def _noise(path: Path, height: int, width: int, seed: int = 0) -> Path:
    """An 8-bit RGB image of smooth noise (a blurred random field) at `path`."""
    rng = np.random.default_rng(seed)
    field = cv2.GaussianBlur(rng.random((height, width, 3)).astype(np.float32), (0, 0), 2)
    Image.fromarray((field.clip(0, 1) * 255).astype(np.uint8)).save(path)
    return path


# --- 1. extreme aspect ratios ----------------------------------------------------------------------


def test_the_minimum_side_and_the_padding_that_reaches_it():
    assert min_side(LAYERS) == 16 and min_side(("relu3_1",)) == 4 and min_side(("relu1_1", "pool5")) == 32
    assert (
        padding((6, 400), 16) == (0, 0, 5, 5)
        and padding((400, 3), 16) == (6, 7, 0, 0)
        and padding((20, 20), 16) == (0,) * 4
    )
    image = torch.rand(2, 3, 3, 40)
    padded = pad(image, padding((3, 40), 16))
    assert padded.shape == (2, 3, 16, 40) and torch.equal(crop(padded, padding((3, 40), 16)), image)
    assert torch.equal(padded[..., 0, :], image[..., 0, :]) and torch.equal(padded[..., -1, :], image[..., -1, :])


@pytest.mark.parametrize("shape", [(1, 128), (3, 128), (128, 2)])
def test_stylize_optimises_a_strip_thinner_than_the_network_at_every_level(model, shape):
    settings = Settings(size=max(shape), scales=2, iterations=3, content_layers=("relu4_2",))
    content = torch.rand(1, 3, *shape)
    schedule = levels(shape, settings)
    assert len(schedule) == 2 and min(schedule[0].shape) <= min(shape)  # the coarse level is thinner still
    style = (torch.rand(1, 3, 2, 200), 1.0)  # a style strip: its targets are padded too
    targets = [style_targets(model, [style], style_area(lv.shape), list(settings.style_layers)) for lv in schedule]
    result = stylize(model, content, targets, settings)
    assert result.image.shape == content.shape and torch.isfinite(result.image).all()
    assert list(dict.fromkeys(p.shape for p in result.trace)) == [lv.shape for lv in schedule]


@pytest.mark.slow
@pytest.mark.parametrize(
    "height, width, size, expected",
    [
        (6, 400, 128, (128, 2)),  # (width, height) of the output: the longest side 128, aspect kept, two levels
        (400, 12, 128, (4, 128)),
    ],
)
def test_stylize_image_writes_a_thin_strip_at_its_scaled_shape(tmp_path, height, width, size, expected):
    content = _noise(tmp_path / "strip.png", height, width)
    style = _noise(tmp_path / "style.png", 48, 64, seed=1)
    out = tmp_path / "out.png"
    result = runner.invoke(
        app,
        image_args(content, style, out, "--size", str(size), "--scales", "2", "--iterations", "3", "--device", "cpu"),
    )
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == expected


def _one_line_error(tmp_path: Path, content: Path) -> str:
    """`stylize image` of `content`, which must fail with exit 1 and one line: that line."""
    style = _noise(tmp_path / "style.png", 32, 32)
    result = runner.invoke(
        app,
        image_args(
            content,
            style,
            tmp_path / "out.png",
            "--size",
            "32",
            "--iterations",
            "1",
            "--scales",
            "1",
            "--device",
            "cpu",
        ),
    )
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"stylize: error: {content}: "), lines
    return lines[0]


@pytest.mark.filterwarnings("error")  # a warning would be a line more
def test_stylize_image_reports_a_bad_input_in_one_line(tmp_path, monkeypatch):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\0" + bytes(12))  # a TIFF header and no directory
    assert "not a readable image" in _one_line_error(tmp_path, broken)
    cut = tmp_path / "cut.png"
    cv2.imwrite(str(cut), np.zeros((40, 40, 3), np.uint16))
    cut.write_bytes(cut.read_bytes()[:60])  # a 16-bit PNG cut short: OpenCV's to read, and it cannot
    assert "cannot decode image" in _one_line_error(tmp_path, cut)
    cv2.imwrite(str(tmp_path / "cut.tif"), np.zeros((40, 40, 3), np.float32))
    (tmp_path / "cut.tif").write_bytes((tmp_path / "cut.tif").read_bytes()[:100])  # its directory cut off
    assert "not a readable image" in _one_line_error(tmp_path, tmp_path / "cut.tif")

    def fail(*args, **kwargs):  # what torch said of a strip before the padding
        raise RuntimeError(
            "Given input size: (512x1x1). Calculated output size: (512x0x0). Output size is too small\nmore"
        )

    monkeypatch.setattr("pipeline.render.renderer.stylize", fail)
    assert _one_line_error(tmp_path, _noise(tmp_path / "fine.png", 8, 8)).endswith("Output size is too small")


# --- 2. float and 16-bit TIFF (and PNG) ------------------------------------------------------------


def _deep(tmp_path: Path) -> tuple[np.ndarray, dict[str, Path]]:
    """One 20x30 RGB picture in [0, 1] (a few samples out of range) and files of it: float32 and 16-bit TIFF,
    16-bit PNG, a float32 TIFF with alpha and a 16-bit grey TIFF."""
    rng = np.random.default_rng(3)
    rgb = rng.random((20, 30, 3)).astype(np.float32)
    bgr = rgb[..., ::-1].copy()
    out_of_range = bgr.copy()
    out_of_range[0, 0] = (1.5, -0.25, np.nan)  # display-referred: clipped to 0..1 (NaN: 0)
    files = {name: tmp_path / name for name in ("float.tif", "deep.tif", "deep.png", "alpha.tif", "grey.tif")}
    cv2.imwrite(str(files["float.tif"]), out_of_range)
    cv2.imwrite(str(files["deep.tif"]), (bgr * 65535).round().astype(np.uint16))
    cv2.imwrite(str(files["deep.png"]), (bgr * 65535).round().astype(np.uint16))
    alpha = np.tile(np.linspace(0, 1, 30, dtype=np.float32), (20, 1))
    cv2.imwrite(str(files["alpha.tif"]), np.dstack([bgr, alpha]))
    cv2.imwrite(str(files["grey.tif"]), (rgb[..., 0] * 65535).round().astype(np.uint16))
    return rgb, files


def test_float_and_16_bit_tiff_and_png_are_read_in_full_precision(tmp_path):
    rgb, files = _deep(tmp_path)
    with pytest.raises(OSError):  # PIL.UnidentifiedImageError
        Image.open(files["float.tif"])  # what made it "not a readable image": Pillow reads no float colour TIFF
    for name in ("float.tif", "deep.tif", "deep.png", "alpha.tif"):
        decoded = read_image(files[name])[0].permute(1, 2, 0).numpy()
        expected = rgb.copy()
        if name == "float.tif":
            expected[0, 0] = (0.0, 0.0, 1.0)  # RGB of the BGR (1.5, -0.25, NaN): clipped
        assert decoded.shape == (20, 30, 3) and np.abs(decoded - expected).max() < 1e-4, name  # far below 8 bits' 1/255
    grey = read_image(files["grey.tif"])[0].numpy()
    assert np.abs(grey - rgb[..., 0]).max() < 1e-4 and (grey[0] == grey[1]).all()
    assert read_image(files["float.tif"], 15).shape == (1, 3, 10, 15) and working_shape(files["float.tif"], 15) == (
        10,
        15,
    )
    ramp = np.asarray(read_alpha(files["alpha.tif"]), float)
    assert ramp.shape == (20, 30) and np.abs(ramp - np.linspace(0, 255, 30)).max() <= 0.5
    assert read_alpha(files["deep.tif"]) is None


def test_a_16_bit_png_is_turned_upright_per_its_exif(tmp_path):
    grey = (np.random.default_rng(4).random((20, 30)) * 65535).astype(np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown turned 90° clockwise
    Image.fromarray(grey).save(tmp_path / "turned.png", exif=exif)
    decoded = read_image(tmp_path / "turned.png")[0, 0].numpy()
    assert decoded.shape == (30, 20) and np.abs(decoded - np.rot90(grey, -1) / 65535).max() < 1e-6
    assert working_shape(tmp_path / "turned.png", None) == (30, 20)


# --- 3. more than 8 bits in: 16 bits out where the format holds them, else the job says so -------------


def test_the_depth_of_an_input_its_output_and_the_note_it_owes(tmp_path):
    _, files = _deep(tmp_path)
    eight = _noise(tmp_path / "eight.png", 8, 8)
    Image.new("RGB", (8, 8)).save(tmp_path / "eight.tif")
    assert [sample_depth(files[n]) for n in ("float.tif", "deep.tif", "deep.png", "grey.tif")] == [
        "32-bit float",
        "16-bit",
        "16-bit",
        "16-bit",
    ]
    assert sample_depth(eight) is None and sample_depth(tmp_path / "eight.tif") is None and depth_note(eight) is None
    assert sample_depth(tmp_path / "missing.png") is None
    out = tmp_path / "out.png"
    assert output_bits(files["deep.tif"], out) == 16 and output_bits(files["float.tif"], out.with_suffix(".tif")) == 32
    assert (
        output_bits(files["float.tif"], out) == 16 and output_bits(files["deep.tif"], out.with_suffix(".exr")) is None
    )
    assert output_bits(files["deep.tif"], out.with_suffix(".jpg")) == 8  # JPEG holds 8 bits
    assert output_bits(files["deep.tif"], out, 8) == 8 and output_bits(eight, out) == 8
    assert output_bits(eight, out, 16) == 16 and output_bits(eight, out.with_suffix(".webp"), 16) == 8
    assert depth_note(files["deep.tif"], 16) is None
    assert (
        depth_note(files["deep.tif"])
        == f"{files['deep.tif']}: 16-bit input written as 8-bit (its output's format holds 8; PNG and TIFF hold 16)"
    )
    assert depth_note(files["float.tif"], 16) == (
        f"{files['float.tif']}: 32-bit float input written as 16-bit (PNG holds 16 at most; TIFF and EXR hold float)"
    )


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_16_bit_output_keeps_the_levels_and_the_alpha(tmp_path, suffix):
    """A smooth ramp with 4000 levels, written at 16 bits, reads back to within half a 16-bit step; its alpha
    (8-bit, as read_alpha gives it) is carried as 16-bit."""
    ramp = torch.linspace(0, 1, 4000).view(1, 1, 1, 4000).expand(1, 3, 2, 4000).contiguous()
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, 4000).astype(np.uint8), (2, 1)), "L")
    out = tmp_path / f"ramp{suffix}"
    write_image(ramp, out, alpha, bits=16)
    assert sample_depth(out) == "16-bit"
    back = read_image(out)
    assert back.shape == ramp.shape and (back - ramp).abs().max() < 1 / 65535
    assert len(np.unique(back.numpy())) == 4000  # not 256 levels in a 16-bit file
    assert np.abs(np.asarray(read_alpha(out), float) - np.asarray(alpha, float)).max() <= 0.5
    write_image(ramp, out.with_suffix(".jpg"), bits=16)  # JPEG holds 8: written at 8
    assert sample_depth(out.with_suffix(".jpg")) is None


@pytest.mark.slow
def test_a_batch_writes_16_bit_outputs_of_deeper_inputs_and_stylize_image_warns_where_it_cannot(tmp_path):
    _, files = _deep(tmp_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("float.tif", "deep.png"):
        files[name].rename(inputs / name)
    _noise(inputs / "plain.png", 20, 30)
    style = _noise(tmp_path / "style.png", 32, 32, seed=1)
    config = write_config(
        tmp_path / "config.yaml",
        [inputs],
        tmp_path / "out",
        style=style,
        name="s",
        optimize={"size": 32, "iterations": 2, "scales": 1},
    )
    result = runner.invoke(app, ["run", str(config), "--quiet"])
    assert result.exit_code == 0, result.output
    records = {
        Path(r["source"]).name: r for r in json.loads((tmp_path / "out/manifest.json").read_text())["jobs"].values()
    }
    assert all(r["state"] == "done" for r in records.values())
    depths = {name: sample_depth(tmp_path / "out" / r["output"]) for name, r in records.items()}
    assert depths == {"float.tif": "16-bit", "deep.png": "16-bit", "plain.png": None}
    assert records["float.tif"]["warning"] == depth_note(inputs / "float.tif", 16)
    assert records["deep.png"]["warning"] is None and records["plain.png"]["warning"] is None
    for where in (result.output, (tmp_path / "out/stylize.log").read_text()):  # once each, also when quiet
        warnings = [line for line in where.splitlines() if "warning:" in line]
        assert len(warnings) == 1 and "32-bit float input written as 16-bit" in warnings[0], where

    out = tmp_path / "one.png"
    args = (files["deep.tif"], style, out, "--size", "32", "--iterations", "2", "--scales", "1", "--device", "cpu")
    alone = runner.invoke(app, image_args(*args))
    assert alone.exit_code == 0 and "warning" not in alone.output, alone.output
    assert sample_depth(out) == "16-bit" and Image.open(out).size == (32, 21)
    eight = runner.invoke(app, image_args(*args, "--depth", "8"))
    assert eight.exit_code == 0 and f"warning: {files['deep.tif']}: 16-bit input written as 8-bit" in eight.output
    assert sample_depth(out) is None
    bad = runner.invoke(app, image_args(*args, "--depth", "12"))
    assert bad.exit_code == 2 and "--depth: '12' is not same, 8, 16, half or float" in bad.output


@pytest.mark.slow
def test_a_16_bit_png_comes_through_a_near_identity_render_at_16_bits(shared, tmp_path):
    """Issue 20's round trip for 16-bit PNG: one iteration, a vanishing style weight, no TV, the original
    size: the output is still 16-bit, with more levels than 8 bits hold, and its mean within 1 % of the plate's."""
    photo = read_image(shared / "content" / "chelsea.png", 64)[0].permute(1, 2, 0).numpy()
    photo = (photo + np.random.default_rng(0).random(photo.shape, np.float32) / 255).clip(0, 1)  # between 8-bit levels
    plate = tmp_path / "plate.png"
    cv2.imwrite(str(plate), (photo[..., ::-1] * 65535).round().astype(np.uint16))
    out = tmp_path / "out.png"
    extra = ("--iterations", "1", "--scales", "1", "--style-weight", "1e-9", "--tv-weight", "0", "--original-size")
    result = runner.invoke(app, image_args(plate, shared / "style" / "wave.jpg", out, *extra, "--device", "cpu"))
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    back = read_image(out)[0].permute(1, 2, 0).numpy()
    assert sample_depth(out) == "16-bit" and back.shape == photo.shape
    assert len(np.unique(back)) > 256
    assert abs(back.mean() - photo.mean()) < 0.01 * photo.mean()
