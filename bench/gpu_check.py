"""`make bench-gpu`: the checks and figures that need a CUDA device, in one short run (a few minutes).

Prepared for the `device` tool's lent GPU, where time is scarce: it runs the suite's GPU tests, a two-worker
run on one GPU, the 512 px × 500 iteration time against the bare network pass, a tiled 4096 px image, the
evaluator's bf16 check against fp32 and the peak memory per size. Each step has its own time limit and a
failure ends only that step. Writes bench/gpu_check.json and bench/gpu_check.md.

    python -m bench.gpu_check            # on a machine with a CUDA device
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from bench import image_command

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "data"
CONTENT, STYLE = SHARED / "content" / "chelsea.png", SHARED / "style" / "starry_night.jpg"
LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1")
DEVICE = os.environ.get(
    "STYLIZE_GPU_CHECK_DEVICE", "cuda:0"
)  # "cpu": a dry run of the steps, to check the script itself


def _command(cmd: list[str], limit: float) -> tuple[float, str, int]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=REPO)
    return time.perf_counter() - start, (done.stdout + done.stderr)[-2000:], done.returncode


def gpu_tests() -> dict:
    """The suite's tests that need CUDA (they skip elsewhere)."""
    seconds, tail, code = _command(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "gpu or cuda", "tests"], 400
    )
    return {"seconds": round(seconds, 1), "exit": code, "tail": tail.splitlines()[-3:]}


def image_seconds(size: int, iterations: int, *extra: str) -> dict:
    """`stylize image` at one scale, wall time from the shell (start-up, style encoding and write included)."""
    out = Path(tempfile.mkdtemp()) / "out.png"
    cmd = image_command(CONTENT, STYLE, out, size, iterations, "--scales", "1", "--device", DEVICE, *extra)
    seconds, tail, code = _command(cmd, 300)
    return {
        "size": size,
        "iterations": iterations,
        "extra": list(extra),
        "seconds": round(seconds, 2),
        "exit": code,
        "said": tail.strip().splitlines()[-1] if tail.strip() else "",
    }


def floor_ratio(size: int = 512, iterations: int = 20) -> dict:
    """The bare VGG-19 forward and backward to relu5_1 (fastest of fp32/bf16 × NCHW/channels-last) against
    one optimiser iteration of ours, in the precision `auto` picks on this GPU."""
    from pipeline.core.vgg import VGGFeatures
    from pipeline.media.weights import resolve_weights
    from pipeline.render.renderer import PRECISIONS, resolve_precision

    device = torch.device(DEVICE)
    weights = resolve_weights("bundled")
    x = torch.rand(1, 3, size, size, device=device)
    passes = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = VGGFeatures(weights, LAYERS, dtype=dtype).to(device)
        for fmt in (torch.contiguous_format, torch.channels_last):
            image = x.to(memory_format=fmt)

            def bare() -> None:
                probe = image.clone().requires_grad_(True)
                sum(f.float().pow(2).mean() for f in model(probe).values()).backward()

            passes[
                f"{dtype}".removeprefix("torch.") + ("/channels_last" if fmt is torch.channels_last else "/nchw")
            ] = _cuda_median(bare)
    precision = resolve_precision("auto", device)
    ours = VGGFeatures(weights, LAYERS, dtype=PRECISIONS[precision]).to(device)
    iteration = _iteration(ours, size, iterations)
    fastest = min(passes, key=passes.get)
    return {
        "size": size,
        "passes_s": {k: round(v, 5) for k, v in passes.items()},
        "fastest": fastest,
        "precision": precision,
        "iteration_s": round(iteration, 5),
        "ratio": round(iteration / passes[fastest], 3),
    }


def _iteration(model: torch.nn.Module, size: int, iterations: int) -> float:
    """Seconds per iteration of our optimiser on the GPU: (time of 2N iterations - time of N) / N, so that
    the set-up of a level cancels out."""
    from pipeline.core.optimize import Settings, resize, style_targets, stylize
    from pipeline.media.images import read_image

    device = torch.device(DEVICE)
    content = resize(read_image(CONTENT), (size, size)).to(device)
    settings = Settings(size=size, scales=1, iterations=iterations)
    targets = [style_targets(model, [(read_image(STYLE).to(device), 1.0)], size * size, list(settings.style_layers))]

    def run(n: int) -> float:
        _sync()
        start = time.perf_counter()
        stylize(model, content, targets, Settings(size=size, scales=1, iterations=n))
        _sync()
        return time.perf_counter() - start

    run(iterations)  # warm-up: cuDNN's search, the allocator
    return (run(2 * iterations) - run(iterations)) / iterations


def _sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def _cuda_median(fn: Callable[[], None], repeats: int = 10) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def two_workers() -> dict:
    """A batch of 8 photos with two workers on one GPU: both work, nothing fails, memory split between them."""
    from conftest import photo_crops  # noqa: PLC0415  (tests/ is on the path below)

    work = Path(tempfile.mkdtemp())
    inputs = photo_crops(CONTENT, work / "in", 8)
    config = work / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "inputs": [str(inputs)],
                "styles": [{"name": "starry", "images": [str(STYLE)]}],
                "output": {"dir": str(work / "out")},
                "optimize": {"size": 256, "iterations": 100},
                "devices": [DEVICE],
                "workers_per_device": 2,
                "cache_dir": str(work / "cache"),
            }
        )
    )
    seconds, tail, code = _command([sys.executable, "-m", "pipeline", "run", str(config)], 300)
    records = (
        json.loads((work / "out" / "manifest.json").read_text())["jobs"]
        if (work / "out" / "manifest.json").is_file()
        else {}
    )
    return {
        "seconds": round(seconds, 1),
        "exit": code,
        "done": sum(r["state"] == "done" for r in records.values()),
        "workers": len({r["pid"] for r in records.values()}),
        "said": tail.strip().splitlines()[-1:],
    }


def peak_memory(sizes: tuple[int, ...] = (512, 1024, 2048)) -> list[dict]:
    """Peak CUDA memory of one render per size (one scale, 20 iterations), in-process, against the plan's estimate."""
    from pipeline.core.optimize import Settings
    from pipeline.render.memory import needed_bytes
    from pipeline.render.renderer import Renderer

    rows = []
    for size in sizes:
        renderer = Renderer(Settings(size=size, scales=1, iterations=20), device=DEVICE, tiling="off")
        if DEVICE.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        renderer.render(CONTENT, [(STYLE, 1.0)], Path(tempfile.mkdtemp()) / "out.png")
        shape = tuple(renderer.read_content(CONTENT).shape[-2:])
        rows.append(
            {
                "size": size,
                "seconds": round(time.perf_counter() - start, 2),
                "precision": renderer.precision,
                "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if DEVICE.startswith("cuda") else None,
                "estimate_gib": round(needed_bytes(shape, "lbfgs", 1, renderer.precision) / 2**30, 3),
            }
        )
        del renderer
        if DEVICE.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def precision_scores(size: int = 512, iterations: int = 200) -> dict:
    """The fixed evaluator's three figures for bf16 and for fp32 outputs of the same job."""
    from bench.evaluator import Evaluator

    evaluator, scores = Evaluator(), {}
    for precision in ("bf16", "fp32"):
        out = Path(tempfile.mkdtemp()) / f"{precision}.png"
        _command(
            image_command(CONTENT, STYLE, out, size, iterations, "--device", DEVICE, "--precision", precision), 300
        )
        scores[precision] = vars(evaluator.score(out, CONTENT, STYLE)) if out.is_file() else None
    return scores


STEPS: dict[str, Callable[[], object]] = {
    "gpu_tests": gpu_tests,
    "image_512x500": lambda: image_seconds(512, 500),
    "image_512x500_fp32": lambda: image_seconds(512, 500, "--precision", "fp32"),
    "floor_512": floor_ratio,
    "tiled_4096": lambda: image_seconds(4096, 50, "--tile", "auto"),
    "two_workers": two_workers,
    "peak_memory": peak_memory,
    "bf16_vs_fp32": precision_scores,
}


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("bench.gpu_check: no CUDA device here (run it where the device tool lends a GPU)")
    sys.path.insert(0, str(REPO / "tests"))
    results: dict[str, object] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for name, step in STEPS.items():
        start = time.perf_counter()
        try:
            results[name] = step()
        except Exception as exc:  # noqa: BLE001  one failed step ends only itself
            results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        print(f"{name} ({time.perf_counter() - start:.0f} s): {json.dumps(results[name])[:400]}", flush=True)
        (HERE / "gpu_check.json").write_text(json.dumps(results, indent=1))  # what finished survives a timeout
    lines = [f"# GPU check on {results['device']} (torch {results['torch']})", ""]
    lines += [f"- **{k}**: `{json.dumps(v)[:600]}`" for k, v in results.items() if k not in ("device", "torch")]
    (HERE / "gpu_check.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
