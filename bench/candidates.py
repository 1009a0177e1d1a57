"""`make bench-candidates`: does a setting move stylize's quality front on the pair set, and at what cost in time?

Each variant (a few settings changed from the defaults) renders every pair of `bench.quality` at three style
weights (the default, 3x and 10x: the stretch of the front where the peers' defaults lie), in-process, 256 px, 100
iterations, seed 0, in the default precision. Every output is scored by the fixed evaluator. A variant's
front is compared with the defaults' as a shift: for each default point, the variant's style figure at the
same content error (interpolated log-log along its three points, extrapolated from the nearest two), as a
ratio to the default's style figure. The geometric mean of those ratios over every pair and weight says
whether the front moved down (< 1: less style error for the same content error) or up, for the Gram and
the sliced Wasserstein figures each; time is the median render time per point, against the defaults'.

    python -m bench.candidates                          # every variant, 8 pairs (make bench-candidates)
    python -m bench.candidates --variants coarse-half --pairs 2
    python -m bench.candidates --keep --variants scales-2   # add a variant to those measured

Writes bench/candidates.json and bench/candidates.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

from bench import machine
from bench.evaluator import Evaluator
from bench.quality import HERE, pairs
from pipeline.batch.config import OptimizeConfig, StyleConfig
from pipeline.render.renderer import Renderer

OUT = HERE / "out" / "candidates"
WEIGHTS = (1.0, 3.0, 10.0)  # times the default style weight
VARIANTS: dict[str, dict] = {  # name: OptimizeConfig fields changed from the defaults
    "default": {},
    "coarse-half": {"coarse_iterations": 0.5},
    "scales-2": {"scales": 2},
    "wasserstein": {"style_loss": "wasserstein"},
    "tolerance": {"tolerance": 1e-3},
    "tv-0.1": {"tv_weight": 0.1},
    "history-20": {"history": 20},
    "history-10": {"history": 10},
    "history-5": {"history": 5},
    "layer-balance": {"style_balance": "layer"},
}


def render_points(variant: str, chosen: list, size: int, iterations: int, evaluator: Evaluator) -> list[dict]:
    """Render and score one variant on every chosen pair at each of WEIGHTS."""
    base = OptimizeConfig(size=size, iterations=iterations, seed=0, **VARIANTS[variant])
    points = []
    for cname, content, sname, style in chosen:
        folder = OUT / variant / f"{cname}-{sname}"
        folder.mkdir(parents=True, exist_ok=True)
        for factor in WEIGHTS:
            opts = base.model_copy(update={"style_weight": OptimizeConfig().style_weight * factor})
            renderer = Renderer(opts.settings(), device="cpu", precision=opts.precision)
            out = folder / f"{factor:g}.png"
            result = renderer.render(content, StyleConfig(name=sname, images=[style]).blend, out)
            scores = evaluator.score(out, content, style)
            points.append(
                {
                    "variant": variant,
                    "pair": f"{cname} × {sname}",
                    "factor": factor,
                    "seconds": round(result.seconds, 2),
                    "content": scores.content,
                    "gram": scores.gram,
                    "swd": scores.swd,
                }
            )
            print(
                f"{variant:14} {cname + ' × ' + sname:32} {factor:4g} {result.seconds:6.1f} s  content "
                f"{scores.content:.4g}  gram {scores.gram:.4g}  swd {scores.swd:.4g}",
                flush=True,
            )
    return points


def style_at(front: list[dict], content: float, figure: str) -> float:
    """The front's `figure` at `content`, interpolated log-log between its points (extrapolated at the ends)."""
    pts = sorted((math.log(p["content"]), math.log(p[figure])) for p in front)
    x = math.log(content)
    i = next((k for k in range(1, len(pts) - 1) if x < pts[k][0]), len(pts) - 1)
    (x0, y0), (x1, y1) = pts[i - 1], pts[i]
    return math.exp(y0 + (y1 - y0) * (x - x0) / (x1 - x0)) if x1 != x0 else math.exp(min(y0, y1))


def shift(points: list[dict], variant: str, figure: str) -> float:
    """Geometric mean over the defaults' points of the variant's `figure` at equal content, over the default's."""
    logs = []
    for base in (p for p in points if p["variant"] == "default"):
        front = [p for p in points if p["variant"] == variant and p["pair"] == base["pair"]]
        if len(front) >= 2:
            logs.append(math.log(style_at(front, base["content"], figure) / base[figure]))
    return math.exp(sum(logs) / len(logs)) if logs else float("nan")


def markdown(points: list[dict], size: int, iterations: int) -> str:
    names = list(dict.fromkeys(p["variant"] for p in points))
    pair_count = len({p["pair"] for p in points})
    lines = [
        f"# Candidates against the default front ({size} px, {iterations} iterations, {pair_count} pairs, "
        f"style weight × {', '.join(f'{w:g}' for w in WEIGHTS)}; {machine()}, {os.cpu_count()} cores)",
        "",
        "Style error at equal content error, as a ratio to the defaults' (geometric mean; < 1 is better), "
        "and the median render time per point (a median: some points ran beside other work), against the "
        "defaults' rendered in the same run (— where that run rendered no defaults).",
        "",
        "| variant | settings | Gram | SWD | time | time ÷ default |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        mine = [p for p in points if p["variant"] == name]
        seconds = statistics.median(p["seconds"] for p in mine)
        base = [p["seconds"] for p in points if p["variant"] == "default" and p.get("run") == mine[0].get("run")]
        ratio = "1.00" if name == "default" else f"{seconds / statistics.median(base):.2f}" if base else "—"
        settings = ", ".join(f"{k}: {v}" for k, v in VARIANTS[name].items()) or "(the defaults)"
        lines.append(
            f"| {name} | {settings} | {shift(points, name, 'gram'):.3f} | {shift(points, name, 'swd'):.3f} "
            f"| {seconds:.1f} s | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the variants bench/candidates.json has already")
    args = parser.parse_args()
    names = ["default"] + [n for n in args.variants.split(",") if n != "default"]
    chosen, evaluator, points = pairs()[: args.pairs], Evaluator(), []
    record = HERE / "candidates.json"
    if args.keep and record.is_file():  # variants measured before (same pairs and sizes) are not rendered again
        points = json.loads(record.read_text())
    start, run = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M")
    for name in names:
        if any(p["variant"] == name for p in points):
            continue
        points += [dict(p, run=run) for p in render_points(name, chosen, args.size, args.iterations, evaluator)]
        record.write_text(json.dumps(points, indent=1))
    (HERE / "candidates.md").write_text(markdown(points, args.size, args.iterations))
    print(f"{len(points)} points in {time.perf_counter() - start:.0f} s: bench/candidates.md")


if __name__ == "__main__":
    main()
