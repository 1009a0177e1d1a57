"""Colour management (pipeline.media.color): ICC-tagged inputs read into sRGB, outputs tagged sRGB.

The profiles come from bench/icc.py: matrix/TRC ICC v2 profiles built byte by byte from published primaries, so
that the expected sRGB values come from the colorimetry by hand (numpy), not from LittleCMS itself."""

import io
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageCms
from typer.testing import CliRunner

from bench.icc import ADOBE_RGB, ADOBE_RGB_GAMMA, WIDE_GAMUT, WIDE_GAMUT_GAMMA, chart, expected_srgb, icc_profile
from pipeline.media.color import SRGB_ICC, describe
from pipeline.media.images import ImageError, color_note, converted_space, input_note, read_image, write_image
from pipeline.ui.cli import app
from tests.conftest import image_args, write_config

runner = CliRunner()


@pytest.mark.parametrize(
    ("name", "colorants", "gamma", "suffix"),
    [
        ("Adobe RGB (test)", ADOBE_RGB, ADOBE_RGB_GAMMA, ".png"),
        ("Wide Gamut RGB (test)", WIDE_GAMUT, WIDE_GAMUT_GAMMA, ".tif"),
    ],
)
def test_an_icc_tagged_chart_is_read_into_srgb_as_the_colorimetry_says(tmp_path, name, colorants, gamma, suffix):
    pixels = chart()
    path = tmp_path / f"chart{suffix}"
    Image.fromarray(pixels).save(path, icc_profile=icc_profile(name, colorants, gamma))
    ours = read_image(path)[0].permute(1, 2, 0).numpy()
    want = expected_srgb(pixels.astype(np.float64), colorants, gamma)
    error = np.abs(ours - want) * 255
    assert error.mean() < 1.0 and error.max() <= 3.0, (error.mean(), error.max())
    untouched = np.abs(pixels / 255.0 - want) * 255  # what reading it as sRGB would be off by
    assert untouched.mean() > 4 * error.mean() + 2
    assert converted_space(path) == name and input_note(path) is None


def test_untagged_and_srgb_tagged_inputs_are_read_as_they_are(tmp_path):
    pixels = chart(1)
    plain, tagged = tmp_path / "plain.png", tmp_path / "tagged.jpg"
    Image.fromarray(pixels).save(plain)
    Image.fromarray(pixels).save(tagged, icc_profile=SRGB_ICC, quality=100)
    assert np.array_equal(read_image(plain)[0].permute(1, 2, 0).numpy(), pixels / np.float32(255))
    decoded = np.asarray(Image.open(tagged).convert("RGB"))
    assert np.array_equal(read_image(tagged)[0].permute(1, 2, 0).numpy(), decoded / np.float32(255))
    assert converted_space(plain) is None and converted_space(tagged) is None


def test_outputs_carry_an_srgb_profile_the_same_in_every_process(tmp_path):
    for suffix in (".png", ".jpg", ".webp", ".tif"):
        out = tmp_path / f"out{suffix}"
        write_image(torch.rand(1, 3, 16, 24), out)
        with Image.open(out) as im:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
        assert "sRGB" in describe(profile), suffix
    # LittleCMS dates a profile it makes: a date of its own would make two processes' renders differ in bytes.
    time.sleep(1.1)
    code = "import sys; from pipeline.media.color import SRGB_ICC; sys.stdout.buffer.write(SRGB_ICC)"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, check=True, cwd=Path(__file__).parents[1]
        ).stdout
        == SRGB_ICC
    )


def test_a_broken_profile_fails_its_input_in_one_line(tmp_path):
    path = tmp_path / "broken.png"
    Image.fromarray(chart()).save(path, icc_profile=b"\0" * 200)
    with pytest.raises(ImageError) as err:
        read_image(path)
    assert str(err.value).startswith(f"{path}: cannot read its embedded ICC profile") and "\n" not in str(err.value)


def test_a_16_bit_input_s_profile_is_named_in_a_warning(tmp_path):
    """OpenCV decodes 16-bit samples and LittleCMS is reached through 8-bit images only: the profile is not
    applied, and the job says so rather than lose it in silence."""
    path = tmp_path / "deep.png"
    Image.fromarray(chart()).save(path, icc_profile=icc_profile("Adobe RGB (test)", ADOBE_RGB, 2.2))
    with Image.open(path) as im:
        icc = im.info["icc_profile"]
    deep = (chart().astype(np.uint16) * 257)[..., ::-1]
    cv2.imwrite(str(path), np.ascontiguousarray(deep))
    with Image.open(path) as im:  # OpenCV writes no profile: put it back with Pillow's 16-bit PNG chunk copy
        assert "icc_profile" not in im.info
    _add_iccp(path, icc)
    assert converted_space(path) is None
    assert (
        color_note(path) == f"{path}: its ICC profile (Adobe RGB (test)) is not applied to 16-bit samples: read as sRGB"
    )


def _add_iccp(path, icc: bytes) -> None:
    """Insert an iCCP chunk after a PNG's IHDR."""
    import zlib

    data = path.read_bytes()
    body = b"test\0\0" + zlib.compress(icc)
    chunk = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body))
    path.write_bytes(data[:33] + chunk + data[33:])


def test_the_manifest_records_what_a_photo_was_converted_from(shared, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    photo = Image.open(shared / "content" / "chelsea.png").convert("RGB").resize((48, 32))
    photo.save(folder / "tagged.png", icc_profile=icc_profile("Adobe RGB (test)", ADOBE_RGB, 2.2))
    photo.save(folder / "plain.png")
    config = write_config(tmp_path / "c.yaml", [folder], tmp_path / "out", optimize={"size": 48, "iterations": 2})
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "out" / "manifest.json").read_text())["jobs"].values()
    assert {Path(r["source"]).name: r["color"] for r in records} == {
        "tagged.png": "Adobe RGB (test)",
        "plain.png": None,
    }


def test_stylize_image_converts_a_tagged_photo(shared, tmp_path):
    pixels = chart(2)
    path = tmp_path / "chart.png"
    Image.fromarray(pixels).save(path, icc_profile=icc_profile("Adobe RGB (test)", ADOBE_RGB, 2.2))
    out = tmp_path / "out.png"
    extra = ("--iterations", "1", "--scales", "1", "--style-weight", "1e-9", "--tv-weight", "0", "--original-size")
    result = runner.invoke(app, image_args(path, shared / "style" / "wave.jpg", out, *extra, "--device", "cpu"))
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    back = np.asarray(Image.open(out).convert("RGB"), dtype=np.float64) / 255
    want = expected_srgb(pixels.astype(np.float64), ADOBE_RGB, 2.2)
    assert np.abs(back - want).mean() * 255 < 3.0


def test_output_color_source_carries_the_input_profile_back(shared, tmp_path):
    """A near-identity render of an Adobe RGB chart with output.color: source comes back in Adobe RGB, tagged
    so, within a few levels of the input where sRGB holds its colours (the working space clips the others);
    with srgb, the same chart comes out as the colorimetry says in sRGB."""
    folder = tmp_path / "in"
    folder.mkdir()
    pixels = chart(3)
    icc = icc_profile("Adobe RGB (test)", ADOBE_RGB, 2.2)
    Image.fromarray(pixels).save(folder / "chart.png", icc_profile=icc)
    optimize = {"size": 32, "iterations": 1, "scales": 1, "style_weight": 1e-9, "tv_weight": 0}
    outs = {}
    for color in ("source", "srgb"):
        output = {"dir": str(tmp_path / color), "size": "original", "color": color}
        config = write_config(tmp_path / f"{color}.yaml", [folder], tmp_path / color, optimize=optimize, output=output)
        result = runner.invoke(app, ["run", str(config)])
        assert result.exit_code == 0, result.output
        outs[color] = tmp_path / color / "chart.wave.png"
    want = expected_srgb(pixels.astype(np.float64), ADOBE_RGB, 2.2) * 255
    inside = ((want > 3) & (want < 252)).all(axis=2)  # sRGB holds these patches: the round trip clips no channel
    assert inside.mean() > 0.3
    with Image.open(outs["source"]) as im:
        assert im.info["icc_profile"] == icc
        back = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert np.abs(back - pixels)[inside].mean() < 3.0
    with Image.open(outs["srgb"]) as im:
        assert "sRGB" in describe(ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"])))
        srgb = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert np.abs(srgb - want).mean() < 3.0 < np.abs(srgb - pixels).mean()
