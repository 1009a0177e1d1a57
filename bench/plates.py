"""`make bench-plates`: the figures of production plates (issue 20), on plates made from a real clip.

- Throughput: decode plus encode of one 4K (3840x2160) half-float EXR frame, with OpenImageIO, OCIO and the
  view, as a job reads and writes it (zip and piz compression).
- Near-identity round trips through `stylize run` (one iteration, a vanishing style weight, no TV, at the
  source's own size): a scene-linear half EXR sequence numbered from 1001, and a 16-bit PNG.
- ICC: Adobe RGB and Wide Gamut RGB patch charts, and a real Adobe RGB photo (scikit-image's rocket.jpg), read
  as a job reads them, against LittleCMS's own sRGB conversion and against the colorimetry by hand.

    python -m bench.plates          # writes bench/plates.md and bench/plates.json
"""

from __future__ import annotations

import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import OpenImageIO as oiio
import yaml
from PIL import Image, ImageCms

from bench import machine
from bench.icc import ADOBE_RGB, ADOBE_RGB_GAMMA, WIDE_GAMUT, WIDE_GAMUT_GAMMA, chart, expected_srgb, icc_profile
from bench.quality import skimage_image
from pipeline.media.color import SRGB
from pipeline.media.images import read_image, write_plate_image
from pipeline.media.plates import probe, read_pixels
from pipeline.media.scene import SceneColor, view

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
CLIP = SHARED / "video" / "cockatoo.mp4"
LIFT = 1.6  # scene-linear white of the clip's frames: highlights past 1.5
LINEAR = SceneColor(input="Linear Rec.709 (sRGB)")


def clip_frames(count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """`count` frames of the clip at `size` (w, h), scene-linear Rec.709 float32 with white at LIFT."""
    video = cv2.VideoCapture(str(CLIP))
    frames = []
    while len(frames) < count:
        ok, bgr = video.read()
        if not ok:
            raise SystemExit(f"{CLIP}: fewer than {count} frames")
        srgb = cv2.resize(bgr[..., ::-1], size, interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255
        frames.append(
            (np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4) * LIFT).astype(np.float32)
        )
    return frames


def write_exr(path: Path, rgb: np.ndarray, compression: str) -> None:
    spec = oiio.ImageSpec(rgb.shape[1], rgb.shape[0], 3, "half")
    spec.attribute("compression", compression)
    out = oiio.ImageOutput.create(str(path))
    if not (out.open(str(path), spec) and out.write_image(rgb)):
        raise SystemExit(f"{path}: {oiio.geterror()}")
    out.close()


def throughput(folder: Path, repeats: int = 3) -> list[dict]:
    """Seconds to decode (read_image at full size) and encode (write_plate_image) one 4K half EXR frame."""
    rgb = clip_frames(1, (3840, 2160))[0]
    rows = []
    for compression in ("zip", "piz"):
        plate = folder / f"plate_{compression}.exr"
        write_exr(plate, rgb, compression)
        decode, encode = [], []
        for i in range(repeats):
            start = time.perf_counter()
            image = read_image(plate, None, LINEAR)
            decode.append(time.perf_counter() - start)
            start = time.perf_counter()
            write_plate_image(image, folder / f"out_{compression}_{i}.exr", plate, "same", LINEAR)
            encode.append(time.perf_counter() - start)
        rows.append(
            {
                "compression": compression,
                "decode_s": round(statistics.median(decode), 3),
                "encode_s": round(statistics.median(encode), 3),
                "file_mb": round(plate.stat().st_size / 1e6, 1),
                "decoded_mb": round(image.numel() * 4 / 1e6, 1),
            }
        )
    return rows


def _run(folder: Path, inputs: list[str]) -> float:
    """`stylize run` near identity on `inputs`, outputs in folder/out; its wall seconds."""
    config = folder / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "inputs": inputs,
                "styles": [{"name": "wave", "images": [str(SHARED / "style" / "wave.jpg")]}],
                "output": {"dir": str(folder / "out"), "format": "same", "size": "original"},
                "optimize": {"size": 640, "iterations": 1, "scales": 1, "style_weight": 1e-9, "tv_weight": 0},
                "video": {"temporal": False, "measure": False},
                "color": {"input": "Linear Rec.709 (sRGB)"},
                "devices": "cpu",
                "cache_dir": str(folder / "cache"),
            }
        )
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", str(config)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stdout + done.stderr)
    return time.perf_counter() - start


def round_trips(folder: Path) -> dict:
    """The EXR sequence's and the 16-bit PNG's near-identity figures."""
    shot = folder / "shot"
    shot.mkdir()
    frames = clip_frames(3, (640, 360))
    for n, rgb in zip(range(1001, 1004), frames):
        write_exr(shot / f"plate.{n}.exr", rgb, "piz")
    png = view(frames[0]) / 0.8
    cv2.imwrite(str(folder / "still.png"), (png.clip(0, 1)[..., ::-1] * 65535).round().astype(np.uint16))
    seconds = _run(folder, [str(shot / "plate.1001-1003#.exr"), str(folder / "still.png")])
    rows = []
    for n, rgb in zip(range(1001, 1004), frames):
        path = next((folder / "out").rglob(f"plate.{n}.exr"))
        got = read_pixels(path)[0][..., :3]
        bright = rgb >= 1.5
        rows.append(
            {
                "frame": path.name,
                "pixel_type": probe(path).pixel_type,
                "mean_ratio": round(float(got.mean() / rgb.mean()), 4),
                "plate_max": round(float(rgb.max()), 3),
                "min_where_plate_reaches_1_5": round(float(got[bright].min()), 3),
                "pixels_at_1_5": int(bright.sum()),
            }
        )
    still = cv2.imread(str(next((folder / "out").glob("still*.png"))), cv2.IMREAD_UNCHANGED)
    source = cv2.imread(str(folder / "still.png"), cv2.IMREAD_UNCHANGED)
    return {
        "exr": rows,
        "png16": {"dtype": str(still.dtype), "mean_ratio": round(float(still.mean() / source.mean()), 4)},
        "run_s": round(seconds, 1),
    }


def _levels(ours: np.ndarray, reference: np.ndarray) -> dict:
    """Mean and max absolute difference in levels of 255."""
    error = np.abs(ours.astype(np.float64) - reference) * 255
    return {"mean": round(float(error.mean()), 2), "max": round(float(error.max()), 2)}


def icc_figures(folder: Path) -> list[dict]:
    """How far a job's read of each ICC-tagged input lies from LittleCMS's own conversion to sRGB (Pillow's
    ImageCms, the profile embedded in the file) and, for the charts, from the colorimetry by hand."""
    pixels = chart()
    inputs: dict[str, tuple[Path, np.ndarray | None]] = {}
    for name, colorants, gamma, suffix in (
        ("Adobe RGB chart", ADOBE_RGB, ADOBE_RGB_GAMMA, ".png"),
        ("Wide Gamut RGB chart", WIDE_GAMUT, WIDE_GAMUT_GAMMA, ".tif"),
    ):
        path = folder / f"chart{suffix}"
        Image.fromarray(pixels).save(path, icc_profile=icc_profile(name, colorants, gamma))
        inputs[name] = (path, expected_srgb(pixels.astype(np.float64), colorants, gamma))
    inputs["Adobe RGB photo (rocket.jpg)"] = (skimage_image("rocket.jpg"), None)
    rows = []
    for name, (path, by_hand) in inputs.items():
        im = Image.open(path)
        profile = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
        littlecms = np.asarray(ImageCms.profileToProfile(im, profile, SRGB, outputMode="RGB")) / 255.0
        ours = read_image(path)[0].permute(1, 2, 0).numpy()
        row = {"input": name, "littlecms": _levels(ours, littlecms)}
        row |= {"by_hand": _levels(ours, by_hand)} if by_hand is not None else {}
        rows.append(row | {"read_as_srgb": _levels(np.asarray(im) / 255.0, littlecms)})
    return rows


def markdown(results: dict) -> str:
    lines = [f"# Plates ({results['machine']})", "", "## One 4K half-float EXR frame (3840x2160, RGB)", ""]
    lines += ["| compression | file | decoded | decode | encode | decode + encode |", "|---|---|---|---|---|---|"]
    for r in results["throughput"]:
        total = r["decode_s"] + r["encode_s"]
        lines.append(
            f"| {r['compression']} | {r['file_mb']} MB | {r['decoded_mb']} MB | {r['decode_s']} s | "
            f"{r['encode_s']} s | {total:.2f} s |"
        )
    trips = results["round_trips"]
    lines += ["", f"## Near-identity round trips (`stylize run`, {trips['run_s']} s for both)", ""]
    lines += [
        "| output | pixel type | mean ÷ plate's | plate max | min where the plate ≥ 1.5 |",
        "|---|---|---|---|---|",
    ]
    for r in trips["exr"]:
        lines.append(
            f"| {r['frame']} | {r['pixel_type']} | {r['mean_ratio']} | {r['plate_max']} | "
            f"{r['min_where_plate_reaches_1_5']} ({r['pixels_at_1_5']} px) |"
        )
    png = trips["png16"]
    lines.append(f"| still.wave.png | {png['dtype']} | {png['mean_ratio']} | | |")
    lines += ["", "## ICC-tagged inputs as a job reads them (levels of 255: mean / max)", ""]
    lines += ["| input | vs LittleCMS's sRGB | vs the colorimetry by hand | read as if sRGB, vs LittleCMS |"]
    lines.append("|---|---|---|---|")
    for r in results["icc"]:
        cells = [f"{r[k]['mean']} / {r[k]['max']}" if k in r else "" for k in ("littlecms", "by_hand", "read_as_srgb")]
        lines.append(f"| {r['input']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results = {"machine": machine(), "throughput": throughput(folder), "round_trips": round_trips(folder)}
        results["icc"] = icc_figures(folder)
    (HERE / "plates.json").write_text(json.dumps(results, indent=1) + "\n")
    (HERE / "plates.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
