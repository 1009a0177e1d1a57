"""Shared fixtures: real inputs from ../shared/data, the bundled model, tiny configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.core.vgg import VGGFeatures
from pipeline.media.weights import resolve_weights

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CONTENT = SHARED / "content"
STYLE = SHARED / "style"

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
IN_CI = os.environ.get("CI") == "true"  # CI has every input and tool: a missing one fails there instead of skipping


def missing(reason: str) -> None:
    """Skip the test for a missing input or tool; under CI=true, fail it."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: nothing may be skipped for it)", pytrace=False)
    pytest.skip(reason)


def require_shared(name: str = "") -> Path:
    """The real test input `name` under ../shared/data (the folder itself for ""); missing: see `missing`."""
    path = SHARED / name
    if not path.exists():
        missing(f"{path} is missing: the real test inputs live in ../shared/data")
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return require_shared()


@pytest.fixture(scope="session")
def bundled():
    return resolve_weights("bundled")


@pytest.fixture(scope="session")
def model(bundled) -> VGGFeatures:
    layers = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1")
    return VGGFeatures(bundled, layers)


def photo_crops(src: Path, folder: Path, count: int, offset: int = 0) -> Path:
    """`count` different 300x200 crops of a real photo in `folder`, named by letters
    (`photo_a.png`, …: numbered names would make them one frame sequence)."""
    from PIL import Image

    folder.mkdir(parents=True)
    image = Image.open(src).convert("RGB")
    for i in range(count):
        x = 15 * (i + offset)
        image.crop((x, 0, x + 300, 200)).save(folder / f"photo_{chr(97 + i)}.png")
    return folder


def write_config(
    path: Path, inputs: list[Path], out: Path | str, style: Path = STYLE / "wave.jpg", name: str = "wave", **keys
) -> Path:
    """A config at `path`: `inputs` in the style `name` (the image `style`), written to `out`, on the CPU,
    with its cache beside the config, unless `keys` (optimize, video, devices, cache_dir, ...) say otherwise."""
    data = {
        "inputs": [str(i) for i in inputs],
        "styles": [{"name": name, "images": [str(style)]}],
        "output": {"dir": str(out)},
        "devices": "cpu",
        "cache_dir": str(path.parent / "cache"),
        **keys,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def image_args(content: Path, style: Path, out: Path, *extra: str) -> list[str]:
    """`stylize image`'s arguments for one content and style image, then `extra`."""
    return ["image", str(content), str(style), "-o", str(out), *extra]


def run_with_hooks(config: Path, **hooks: str) -> subprocess.CompletedProcess:
    """`stylize run CONFIG` in a fresh process with tests/hooks/sitecustomize.py loaded and `hooks` in its
    environment (STYLIZE_TEST_FAULT, STYLIZE_TEST_RECYCLE, ...)."""
    path = os.pathsep.join(filter(None, [str(REPO / "tests" / "hooks"), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "pipeline", "run", str(config)]
    env = {**os.environ, **hooks, "PYTHONPATH": path}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
