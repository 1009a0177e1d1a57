"""Regenerate the project's generated samples: two style images and a short clip.

Run from the repository root: `.venv/bin/python data/make_samples.py`.
Everything is drawn from a fixed seed, so the files are reproducible.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

HERE = Path(__file__).parent
RNG_SEED = 7


def swirls(width: int = 384, height: int = 288) -> np.ndarray:
    """Short curved brush strokes following a swirling flow field, night-sky palette (RGB uint8)."""
    rng = np.random.default_rng(RNG_SEED)
    canvas = np.zeros((height, width, 3), np.uint8)
    canvas[:] = (22, 40, 92)
    palette = np.array([(28, 60, 140), (52, 94, 178), (96, 140, 210), (230, 200, 70), (245, 230, 150), (20, 30, 60)])
    centers = rng.uniform((0, 0), (width, height), size=(5, 2))
    for _ in range(5000):
        x, y = rng.uniform((0, 0), (width, height))
        color = palette[rng.choice(len(palette), p=(0.22, 0.25, 0.2, 0.13, 0.1, 0.1))]
        color = np.clip(color + rng.normal(0, 12, 3), 0, 255)
        pts = []
        for _ in range(10):
            pts.append((x, y))
            d = np.array([x, y]) - centers
            r2 = (d**2).sum(1) + 400.0
            vx = (-d[:, 1] / r2 * 4000).sum() + 1.5
            vy = (d[:, 0] / r2 * 4000).sum()
            n = np.hypot(vx, vy) + 1e-6
            x, y = x + 3 * vx / n, y + 3 * vy / n
        cv2.polylines(
            canvas, [np.int32(pts)], False, tuple(int(c) for c in color), int(rng.integers(2, 5)), cv2.LINE_AA
        )
    return cv2.GaussianBlur(canvas, (3, 3), 0)


def shapes(width: int = 384, height: int = 288) -> np.ndarray:
    """Bold overlapping circles, bars and triangles on a warm ground (RGB uint8)."""
    rng = np.random.default_rng(RNG_SEED + 1)
    canvas = np.full((height, width, 3), (236, 222, 190), np.uint8)
    palette = [(200, 40, 40), (30, 60, 160), (240, 190, 30), (20, 20, 20), (40, 140, 90), (230, 110, 30)]
    for _ in range(60):
        color = palette[int(rng.integers(len(palette)))]
        kind = rng.integers(3)
        if kind == 0:
            c = tuple(int(v) for v in rng.uniform((0, 0), (width, height)))
            cv2.circle(canvas, c, int(rng.integers(8, 60)), color, int(rng.choice([-1, 3, 6])), cv2.LINE_AA)
        elif kind == 1:
            p1 = rng.uniform((0, 0), (width, height))
            p2 = p1 + rng.normal(0, 90, 2)
            cv2.line(
                canvas,
                tuple(int(v) for v in p1),
                tuple(int(v) for v in p2),
                color,
                int(rng.integers(2, 9)),
                cv2.LINE_AA,
            )
        else:
            tri = rng.uniform((0, 0), (width, height)) + rng.normal(0, 40, (3, 2))
            cv2.fillPoly(canvas, [np.int32(tri)], color, cv2.LINE_AA)
    noise = rng.normal(0, 6, canvas.shape)
    return np.clip(canvas + noise, 0, 255).astype(np.uint8)


def pan_clip(photo: Path, out: Path, frames: int = 12, size: tuple[int, int] = (160, 120), fps: int = 12) -> None:
    """A slow horizontal pan across `photo`, written as H.264 MP4."""
    image = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    w, h = size
    scale = h / image.shape[0]
    image = cv2.resize(image, (round(image.shape[1] * scale), h), interpolation=cv2.INTER_AREA)
    span = image.shape[1] - w
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "23"}
        for i in range(frames):
            x = round(span * i / max(1, frames - 1) * 0.5)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:, x : x + w]), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def main() -> None:
    (HERE / "style").mkdir(exist_ok=True)
    (HERE / "video").mkdir(exist_ok=True)
    cv2.imwrite(
        str(HERE / "style" / "swirls.jpg"), cv2.cvtColor(swirls(), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92]
    )
    cv2.imwrite(
        str(HERE / "style" / "shapes.jpg"), cv2.cvtColor(shapes(), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92]
    )
    pan_clip(HERE / "content" / "animals" / "chelsea.jpg", HERE / "video" / "pan.mp4")


if __name__ == "__main__":
    main()
