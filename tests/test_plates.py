"""Production plates: EXR and DPX in and out through OpenImageIO, scene-linear colour through OpenColorIO.

The tests make their own plates from a real clip (../shared/data/video/cockatoo.mp4): its frames decoded to
scene-linear Rec.709 and lifted so that its highlights pass 1.0, the way a render or a graded plate holds them.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import OpenImageIO as oiio
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.media import scene
from pipeline.media.images import ImageError, read_image, sample_depth
from pipeline.media.plates import probe, read_pixels
from pipeline.ui.cli import app
from tests.conftest import write_config

runner = CliRunner()
LIFT = 1.6  # scene-linear white of the clip's frames: its highlights reach 1.5 and more


def clip_frames(shared, count: int, size: tuple[int, int] = (64, 36)) -> list[np.ndarray]:
    """`count` frames of a real clip, (H, W, 3) scene-linear Rec.709 float32, white at LIFT."""
    video = cv2.VideoCapture(str(shared / "video/cockatoo.mp4"))
    frames = []
    while len(frames) < count:
        ok, bgr = video.read()
        assert ok
        srgb = cv2.resize(bgr[..., ::-1], size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
        frames.append((linear * LIFT).astype(np.float32))
    video.release()
    return frames


def write_exr(path, rgb: np.ndarray, extra: dict[str, np.ndarray] | None = None, pixel: str = "half") -> None:
    """An EXR of `rgb` and `extra` channels, PIZ-compressed, with a shot name in its header."""
    extra = extra or {}
    pixels = np.concatenate([rgb, *[c[..., None] for c in extra.values()]], axis=2)
    spec = oiio.ImageSpec(rgb.shape[1], rgb.shape[0], pixels.shape[2], pixel)
    spec.channelnames = ("R", "G", "B", *extra)
    spec.attribute("compression", "piz")
    spec.attribute("shot", "sh010")
    out = oiio.ImageOutput.create(str(path))
    assert out.open(str(path), spec) and out.write_image(pixels)
    out.close()


def header(path) -> oiio.ImageSpec:
    inp = oiio.ImageInput.open(str(path))
    spec = oiio.ImageSpec(inp.spec())
    inp.close()
    return spec


def near_identity(tmp_path, inputs, **output) -> dict:
    """A run that leaves its content nearly as it is (one iteration, a vanishing style weight, no TV, at the
    source's own size); its manifest's jobs."""
    config = write_config(
        tmp_path / "config.yaml",
        inputs,
        tmp_path / "out",
        optimize={"size": 64, "iterations": 1, "scales": 1, "style_weight": 1e-9, "tv_weight": 0},
        output={"dir": str(tmp_path / "out"), "format": "same", "size": "original", **output},
        video={"temporal": False, "measure": False},
        color={"input": "Linear Rec.709 (sRGB)"},
    )
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / "out" / "manifest.json").read_text())["jobs"]


def test_the_view_is_exactly_invertible_and_keeps_highlights():
    linear = np.array([0, 1e-4, 0.0031308, 0.18, 0.5, 1.0, 1.2, 1.5, 4.0, 20.0, scene.HEADROOM], np.float32)
    working = scene.view(linear)
    assert working.min() >= 0 and working.max() <= 1 and np.all(np.diff(working) > 0)  # monotone, no clip
    assert working[5] == pytest.approx(scene.WHITE) and working[-1] == pytest.approx(1.0)
    np.testing.assert_allclose(scene.unview(working), linear, rtol=2e-5, atol=1e-7)
    slope = np.diff(scene.view(np.float32([1 - 1e-3, 1, 1 + 1e-3]))) / 1e-3
    assert slope[0] == pytest.approx(slope[1], rel=0.01)  # no kink where the shoulder starts
    codes = np.linspace(95, 1023, 50, dtype=np.float32) / 1023
    np.testing.assert_allclose(scene.linear_to_cineon(scene.cineon_to_linear(codes)), codes, atol=1e-5)
    assert scene.cineon_to_linear(np.float32([685 / 1023]))[0] == pytest.approx(1.0, abs=1e-5)


def test_an_exr_reads_through_ocio_into_the_view(shared, tmp_path):
    rgb = clip_frames(shared, 1)[0]
    write_exr(tmp_path / "plate.exr", rgb)
    linear = scene.SceneColor(input="Linear Rec.709 (sRGB)")
    got = read_image(tmp_path / "plate.exr", scene=linear)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, scene.view(rgb), atol=2e-3)  # half's precision
    # The default input is the CG config's scene_linear, ACEScg: its wider primaries go to Rec.709 by the
    # published AP1 -> Rec.709 matrix (Bradford-adapted D60 -> D65), and grey stays grey.
    ap1 = np.array([[0.5, 0.4, 0.3], [0.18, 0.18, 0.18]], np.float32).reshape(1, 2, 3)
    write_exr(tmp_path / "ap1.exr", ap1, pixel="float")
    got = read_image(tmp_path / "ap1.exr")[0].permute(1, 2, 0).numpy()
    to709 = np.array([[1.70505, -0.62179, -0.08326], [-0.13026, 1.14080, -0.01055], [-0.02400, -0.12897, 1.15297]])
    np.testing.assert_allclose(got[0], scene.view((ap1[0] @ to709.T).astype(np.float32)), atol=1e-3)
    assert sample_depth(tmp_path / "plate.exr") == "16-bit half"


@pytest.mark.slow
def test_a_half_exr_sequence_round_trips_with_its_numbers_header_channels_and_highlights(shared, tmp_path):
    plates = tmp_path / "shot"
    plates.mkdir()
    frames = clip_frames(shared, 3)
    for n, rgb in zip(range(1001, 1004), frames):
        depth = np.full(rgb.shape[:2], float(n), np.float32)
        write_exr(plates / f"plate.{n}.exr", rgb, {"A": np.ones(rgb.shape[:2], np.float32), "Z": depth})
    jobs = near_identity(tmp_path, [plates / "plate.1001-1003#.exr"])
    out = tmp_path / "out"
    written = sorted(p.name for p in out.rglob("*.exr"))
    assert written == ["plate.1001.exr", "plate.1002.exr", "plate.1003.exr"], written
    for n, rgb in zip(range(1001, 1004), frames):
        path = next(out.rglob(f"plate.{n}.exr"))
        spec = header(path)
        assert str(spec.format) == "half" and spec.channelnames == ("R", "G", "B", "A", "Z")
        assert spec.getattribute("compression") == "piz" and spec.getattribute("shot") == "sh010"
        pixels, _ = read_pixels(path)
        assert np.all(pixels[..., 4] == n) and np.all(pixels[..., 3] == 1)  # the other channels, carried
        got = pixels[..., :3]
        assert abs(got.mean() / rgb.mean() - 1) < 0.01, (got.mean(), rgb.mean())
        bright = rgb >= 1.5
        assert bright.sum() > 20 and got[bright].min() > 1.2  # highlights survive: no clip at 1.0
    record = next(iter(jobs.values()))
    assert record["color"] == "Linear Rec.709 (sRGB) -> Linear Rec.709 (sRGB) (cg-config-v2.2.0_aces-v1.3_ocio-v2.4)"
    # The report shows the plates and their outputs through the view, not as unreadable files.
    page = (out / "report.html").read_text()
    assert "data:image/webp" in page and 'class="missing">unreadable' not in page


@pytest.mark.slow
def test_a_16_bit_png_and_a_10_bit_log_dpx_round_trip_at_their_depth(shared, tmp_path):
    rgb = clip_frames(shared, 1)[0]
    folder = tmp_path / "in"
    folder.mkdir()
    srgb16 = (scene.view(rgb) / scene.WHITE).clip(0, 1)
    cv2.imwrite(str(folder / "still.png"), (srgb16[..., ::-1] * 65535).round().astype(np.uint16))
    spec = oiio.ImageSpec(rgb.shape[1], rgb.shape[0], 3, "uint16")
    spec.attribute("oiio:BitsPerSample", 10)
    spec.attribute("dpx:Transfer", "Printing density")
    out = oiio.ImageOutput.create(str(folder / "scan.dpx"))
    code = scene.linear_to_cineon(rgb / LIFT)
    assert out.open(str(folder / "scan.dpx"), spec) and out.write_image(code)
    out.close()
    jobs = near_identity(tmp_path, [folder])
    png = next((tmp_path / "out").rglob("still*.png"))
    back = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and abs(back.astype(np.float64).mean() / 65535 / srgb16.mean() - 1) < 0.01
    dpx = next((tmp_path / "out").rglob("scan*.dpx"))
    info = probe(dpx)
    assert info.bits == 10 and info.log
    np.testing.assert_allclose(read_pixels(dpx)[0].mean(), code.mean(), rtol=0.01)
    assert any(r["color"] == "Cineon printing density (DPX)" for r in jobs.values())


def test_a_broken_exr_fails_in_one_line_that_names_it(tmp_path):
    path = tmp_path / "broken.exr"
    write_exr(path, np.ones((8, 8, 3), np.float32))
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ImageError) as err:
        read_image(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_an_unknown_colour_space_is_a_config_error(shared, tmp_path):
    config = write_config(tmp_path / "config.yaml", [shared / "content"], tmp_path / "out", color={"input": "ACES 9"})
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 2 and "color: OCIO config" in result.output and "ACES 9" in result.output


def test_output_depth_float_writes_a_float_tiff_and_the_deepest_each_format_holds(shared, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    with Image.open(shared / "content/chelsea.png") as im:
        im.convert("RGB").crop((0, 0, 90, 60)).save(folder / "cat.tif")
        im.convert("RGB").crop((0, 0, 90, 60)).save(folder / "cat.png")
    write_exr(folder / "plate.exr", clip_frames(shared, 1)[0])
    config = write_config(
        tmp_path / "config.yaml",
        [folder],
        tmp_path / "out",
        optimize={"size": 48, "iterations": 1, "scales": 1},
        output={"dir": str(tmp_path / "out"), "format": "same", "depth": "float"},
    )
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert cv2.imread(str(next(out.glob("cat.wave.tif"))), cv2.IMREAD_UNCHANGED).dtype == np.float32
    assert cv2.imread(str(next(out.glob("cat.wave.png"))), cv2.IMREAD_UNCHANGED).dtype == np.uint16  # 16 at most
    assert str(header(next(out.glob("plate.wave.exr"))).format) == "float"


def test_a_users_ocio_config_comes_from_the_environment(shared, tmp_path, monkeypatch):
    """$OCIO names the config where color.config is empty; the manifest's colour names it."""
    import PyOpenColorIO as ocio

    path = tmp_path / "show.ocio"
    ocio.Config.CreateFromBuiltinConfig(scene.BUILTIN).serialize(str(path))
    monkeypatch.setenv("OCIO", str(path))
    color = scene.SceneColor(input="ACEScg")
    assert color.source == str(path) and color.describe() == f"ACEScg -> ACEScg ({path})"
    rgb = clip_frames(shared, 1)[0]
    write_exr(tmp_path / "plate.exr", rgb)
    builtin = scene.SceneColor(config=scene.BUILTIN, input="ACEScg")
    np.testing.assert_array_equal(
        read_image(tmp_path / "plate.exr", scene=color).numpy(),
        read_image(tmp_path / "plate.exr", scene=builtin).numpy(),
    )
