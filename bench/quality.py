"""`make bench-quality`: stylize against neural-style-pt and pastiche, as fronts over many content × style pairs.

Each tool sweeps its style weight on every pair, at one size and iteration count (for stylize, iterations at
the finest scale), seed 0, each in its default precision; stylize also runs a few weights at `LONGER` times the
iterations: the work a user can buy with the time the peers take. Every output is scored by the fixed evaluator
(`bench/evaluator.py`: content, Gram and sliced Wasserstein), and its wall time, start-up included, is taken
as a user sees it. A peer point counts as beaten when a stylize point of the same pair is no worse on all
three figures and took no more wall time.

    python -m bench.quality                  # every pair, every tool (make bench-quality)
    python -m bench.quality --pairs 2 --tools stylize   # a quick look while tuning
    python -m bench.quality --reuse-peers    # keep peer outputs already made (their recorded wall times too)
    python -m bench.quality --reuse-peers --reuse-ours   # add sweep points: only the new ones are rendered
    python -m bench.quality --defaults       # each tool at its default only: wall-time ratios and the grid
    python -m bench.quality --only rocket-composition_vii   # one pair's fronts again (to quality_only.*)

Writes bench/quality.json, bench/quality.md, bench/quality_front.png and docs/quality_grid.jpg.
Peers come from ../shared/peers (set up offline by its setup.sh).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import BIN, image_command, machine
from bench.evaluator import Evaluator, Scores
from pipeline.batch.config import OptimizeConfig

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared"
PEERS = Path("/tmp/peers")
OUT = HERE / "out" / "quality"


def skimage_image(name: str) -> Path:
    """A photo from scikit-image's wheel (public domain or CC0; see data/README.md), by file name."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("bench-quality needs scikit-image for its extra photos: pip install -e '.[bench]'")
    return Path(spec.submodule_search_locations[0]) / "data" / name


def pairs() -> list[tuple[str, Path, str, Path]]:
    """(content name, path, style name, path): six photos, each with two of the four paintings, every painting thrice."""
    content = {n: SHARED / "data" / "content" / f"{n}.png" for n in ("astronaut", "chelsea", "coffee")}
    content |= {
        "rocket": skimage_image("rocket.jpg"),
        "motorcycle": skimage_image("motorcycle_left.png"),
        "hubble": skimage_image("hubble_deep_field.jpg"),
    }
    style = {
        n: SHARED / "data" / "style" / f"{n}.jpg" for n in ("starry_night", "the_scream", "wave", "composition_vii")
    }
    chosen = [
        ("astronaut", "starry_night"),
        ("motorcycle", "the_scream"),
        ("rocket", "starry_night"),
        ("chelsea", "wave"),
        ("coffee", "composition_vii"),
        ("motorcycle", "wave"),
        ("rocket", "composition_vii"),
        ("chelsea", "the_scream"),
        ("coffee", "starry_night"),
        ("hubble", "wave"),
        ("astronaut", "composition_vii"),
        ("hubble", "the_scream"),
    ]
    return [(c, content[c], s, style[s]) for c, s in chosen]


@dataclass(frozen=True)
class Point:
    pair: str
    tool: str
    weight: float
    default: bool
    seconds: float
    scores: Scores
    path: str
    iterations: int


def _stylize(content: Path, style: Path, out: Path, weight: float, size: int, iterations: int) -> list[str]:
    return image_command(content, style, out, size, iterations, "--style-weight", str(weight), "--seed", "0")


def _neural_style(content: Path, style: Path, out: Path, weight: float, size: int, iterations: int) -> list[str]:
    return [
        sys.executable,
        str(SHARED / "peers" / "run_neural_style.py"),
        "-content_image",
        str(content),
        "-style_image",
        str(style),
        "-image_size",
        str(size),
        "-num_iterations",
        str(iterations),
        "-gpu",
        "c",
        "-model_file",
        str(PEERS / "vgg19-d01eb7cb.pth"),
        "-disable_check",
        "-print_iter",
        "0",
        "-save_iter",
        "0",
        "-seed",
        "0",
        "-style_weight",
        str(weight),
        "-output_image",
        str(out),
    ]


def _pastiche(content: Path, style: Path, out: Path, weight: float, size: int, iterations: int) -> list[str]:
    return [
        str(BIN / "pastiche"),
        "--seed",
        "0",
        "--num-steps",
        str(iterations),
        "--size",
        str(size),
        "--content",
        str(content),
        "--styles",
        str(style),
        "--style-weights",
        str(weight),
        "--output",
        str(out),
        "--no-verbose",
    ]


_OURS = OptimizeConfig().style_weight
TOOLS = {  # name: (command, swept style weights, default weight)
    "stylize": (
        _stylize,
        tuple(_OURS * f for f in (0.3, 0.4, 0.5, 0.7, 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 7, 10, 15, 17.5, 20, 30)),
        _OURS,
    ),
    "neural-style-pt": (_neural_style, (33.0, 100.0, 300.0), 100.0),
    "pastiche": (_pastiche, (0.3, 1.0, 3.0), 1.0),
}
LONGER = 2  # stylize's longer runs: this many times the sweep's iterations, at the weights below
LONGER_WEIGHTS = tuple(_OURS * f for f in (2.5, 4, 7, 15))


def settings(tool: str, iterations: int, defaults: bool) -> list[tuple[float, int]]:
    """The (style weight, iterations) a tool's points are made at: the default only with `defaults`."""
    _, weights, default = TOOLS[tool]
    if defaults:
        return [(default, iterations)]
    longer = [(w, iterations * LONGER) for w in LONGER_WEIGHTS] if tool == "stylize" else []
    return [(w, iterations) for w in weights] + longer


def render_point(
    tool: str, content: Path, style: Path, out: Path, weight: float, size: int, iterations: int, reuse: bool
) -> float:
    """Make one output (or reuse it) and return its wall time in seconds."""
    record = out.with_suffix(".json")
    if reuse and out.is_file() and record.is_file():
        return json.loads(record.read_text())["seconds"]
    command = TOOLS[tool][0](content, style, out, weight, size, iterations)
    env = {**os.environ, "PYTHONPATH": str(PEERS / "ns")} if tool == "neural-style-pt" else None
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=out.parent)
    seconds = time.perf_counter() - start
    if done.returncode != 0 or not out.is_file():
        raise SystemExit(f"{tool} failed on {content.name} × {style.name}:\n{done.stderr[-2000:]}")
    record.write_text(json.dumps({"seconds": seconds}))
    return seconds


def sweep(
    chosen: list, tools: list[str], size: int, iterations: int, reuse: set[str], defaults: bool = False
) -> list[Point]:
    """Every tool's points on every pair, pair by pair (each pair's tools minutes apart); only the defaults
    with `defaults`."""
    evaluator, points = Evaluator(), []
    for cname, content, sname, style in chosen:
        pair = f"{cname} × {sname}"
        folder = OUT / f"{cname}-{sname}"
        folder.mkdir(parents=True, exist_ok=True)
        for tool in tools:
            default = TOOLS[tool][2]
            for weight, its in settings(tool, iterations, defaults):
                out = folder / (f"{tool}-{weight:g}.png" if its == iterations else f"{tool}-{weight:g}-{its}it.png")
                seconds = render_point(tool, content, style, out, weight, size, its, tool in reuse)
                scores = evaluator.score(out, content, style)
                usual = weight == default and its == iterations
                points.append(Point(pair, tool, weight, usual, round(seconds, 1), scores, str(out), its))
                print(
                    f"{pair:32} {tool:16} {weight:8g} {its:4d} it {seconds:6.1f} s  content {scores.content:.4g}"
                    f"  gram {scores.gram:.4g}  swd {scores.swd:.4g}",
                    flush=True,
                )
    return points


def beaten_by(peer: Point, points: list[Point]) -> Point | None:
    """The fastest stylize point of `peer`'s pair that matches or beats it on all three figures in no more time."""
    ours = [
        p
        for p in points
        if p.pair == peer.pair and p.tool == "stylize" and p.seconds <= peer.seconds and p.scores.dominates(peer.scores)
    ]
    return min(ours, key=lambda p: p.seconds, default=None)


def verdicts(points: list[Point]) -> dict:
    """Which peer points are beaten, whether a peer's default dominates ours, and the default wall-time ratios."""
    peers = [p for p in points if p.tool != "stylize"]
    rows = [(p, beaten_by(p, points)) for p in peers]
    defaults = {(p.pair, p.tool): p for p in points if p.default}
    dominated, ratios = [], {}
    for (pair, tool), peer in defaults.items():
        ours = defaults.get((pair, "stylize"))
        if tool == "stylize" or ours is None:
            continue
        if peer.scores.dominates(ours.scores) and peer.scores != ours.scores:
            dominated.append(f"{pair}: by {tool}")
        ratios.setdefault(tool, []).append(ours.seconds / peer.seconds)
    return {
        "beaten": sum(b is not None for _, b in rows),
        "peer_points": len(rows),
        "missed": [f"{p.pair}: {p.tool} {p.weight:g}" for p, b in rows if b is None],
        "default_dominated": dominated,
        "default_time_ratio": {t: [round(min(r), 2), round(max(r), 2)] for t, r in ratios.items()},
    }


def markdown(points: list[Point], verdict: dict, size: int, iterations: int) -> str:
    lines = [
        f"# Quality fronts ({size} px, {iterations} iterations, seed 0; {machine()}, {os.cpu_count()} cores)",
        "",
        f"Peer points matched or beaten on content, Gram and SWD in no more wall time: "
        f"**{verdict['beaten']} of {verdict['peer_points']}**.",
        "",
    ]
    if verdict["missed"]:
        lines += ["Not matched: " + "; ".join(verdict["missed"]) + ".", ""]
    if any(p.iterations != iterations for p in points):
        lines += [
            f"stylize's points: its weight sweep at {iterations} iterations and, at a few weights, "
            f"{iterations * LONGER} (the iterations column).",
            "",
        ]
    lines += [
        "Our default dominated by a peer's default: " + ("; ".join(verdict["default_dominated"]) or "never") + ".",
        "",
        "Default wall time ÷ each peer's default (min–max over pairs): "
        + ", ".join(f"{t} {lo}–{hi}×" for t, (lo, hi) in verdict["default_time_ratio"].items())
        + ".",
        "",
    ]
    for pair in dict.fromkeys(p.pair for p in points):
        lines += [
            f"## {pair}",
            "",
            "| tool | style weight | iterations | content | Gram | SWD | wall | beaten by |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in (q for q in points if q.pair == pair):
            mark = " (default)" if p.default else ""
            b = beaten_by(p, points) if p.tool != "stylize" else None
            win = "" if p.tool == "stylize" else f"stylize {b.weight:g}, {b.iterations} it" if b else "**none**"
            lines.append(
                f"| {p.tool} | {p.weight:g}{mark} | {p.iterations} | {p.scores.content:.3g} | {p.scores.gram:.3g} | "
                f"{p.scores.swd:.4g} | {p.seconds:.1f} s | {win} |"
            )
        lines.append("")
    return "\n".join(lines)


COLOURS = {"stylize": "tab:red", "neural-style-pt": "tab:blue", "pastiche": "tab:green"}


def scatter(points: list[Point], path: Path) -> None:
    """Content against each style figure, a column per pair, one colour per tool; defaults ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(p.pair for p in points))
    sweep_iterations = min(p.iterations for p in points)  # the longer runs are drawn dashed
    fig, axes = plt.subplots(2, len(names), figsize=(2.6 * len(names), 5.2), squeeze=False)
    for col, pair in enumerate(names):
        for row, figure in enumerate(("gram", "swd")):
            ax = axes[row][col]
            for tool, colour in COLOURS.items():
                here = [p for p in points if p.pair == pair and p.tool == tool]
                for its in sorted({p.iterations for p in here}):
                    mine = sorted((p for p in here if p.iterations == its), key=lambda p: p.weight)
                    longer = its != sweep_iterations
                    ax.plot(
                        [p.scores.content for p in mine],
                        [getattr(p.scores, figure) for p in mine],
                        "o--" if longer else "o-",
                        color=colour,
                        ms=3,
                        lw=1,
                        label=f"{tool}, {its} it" if longer else tool,
                    )
                    ax.scatter(
                        [p.scores.content for p in mine if p.default],
                        [getattr(p.scores, figure) for p in mine if p.default],
                        s=60,
                        facecolors="none",
                        edgecolors=colour,
                    )
            ax.set_xscale("log"), ax.set_yscale("log")
            ax.tick_params(labelsize=6)
            ax.set_title(pair if row == 0 else "", fontsize=7)
            ax.set_xlabel("content" if row == 1 else "", fontsize=7)
            ax.set_ylabel(figure if col == 0 else "", fontsize=7)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def grid(points: list[Point], chosen: list, path: Path, side: int = 200) -> None:
    """content | stylize | neural-style-pt | pastiche at each tool's default, one row per pair, labelled."""
    from PIL import Image, ImageDraw

    tools = [t for t in TOOLS if any(p.tool == t for p in points)]
    head = 18
    sheet = Image.new("RGB", (side * (len(tools) + 1), head + len(chosen) * (side + head)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, title in enumerate(["content", *tools]):
        draw.text((i * side + 4, 3), title, fill="black")
    for row, (cname, content, sname, _) in enumerate(chosen):
        pair = f"{cname} × {sname}"
        top = head + row * (side + head)
        draw.text((4, top + 2), pair.replace("×", "x"), fill="black")  # the default bitmap font has no ×
        cells = [
            content,
            *(next((p.path for p in points if p.pair == pair and p.tool == t and p.default), None) for t in tools),
        ]
        for col, cell in enumerate(cells):
            if cell is not None:
                image = Image.open(cell).convert("RGB")
                image.thumbnail((side - 4, side - 4))
                sheet.paste(image, (col * side + 2, top + head))
    sheet.save(path, quality=88)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8, help="how many of the pairs (in order)")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated: " + ", ".join(TOOLS))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--reuse-peers", action="store_true", help="keep peer outputs (and wall times) already made")
    parser.add_argument(
        "--reuse-ours", action="store_true", help="also keep ours (when the code has not changed since)"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="CONTENT-STYLE",
        help="this pair only (repeatable, e.g. rocket-composition_vii): to bench/quality_only.json and .md",
    )
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="each tool at its default weight only: the wall-time ratios, dominance and the grid "
        "(bench/quality_defaults.json and .md; the sweep's files are kept)",
    )
    args = parser.parse_args()
    subprocess.run(["bash", str(SHARED / "peers" / "setup.sh"), sys.executable], check=True)
    chosen = pairs()[: args.pairs]
    if args.only:
        chosen = [p for p in pairs() if f"{p[0]}-{p[2]}" in args.only]
        if len(chosen) != len(set(args.only)):
            sys.exit(
                f"bench.quality: --only names pairs as content-style, of: {[f'{c}-{s}' for c, _, s, _ in pairs()]}"
            )
    reuse = ({"neural-style-pt", "pastiche"} if args.reuse_peers else set()) | (
        {"stylize"} if args.reuse_ours else set()
    )
    points = sweep(chosen, args.tools.split(","), args.size, args.iterations, reuse, args.defaults)
    verdict = verdicts(points)
    name = "quality_defaults" if args.defaults else "quality_only" if args.only else "quality"
    (HERE / f"{name}.json").write_text(
        json.dumps(
            {
                "size": args.size,
                "iterations": args.iterations,
                "verdict": verdict,
                "points": [asdict(p) for p in points],
            },
            indent=1,
        )
    )
    (HERE / f"{name}.md").write_text(markdown(points, verdict, args.size, args.iterations))
    if not (args.defaults or args.only):
        scatter(points, HERE / "quality_front.png")
    if not args.only:
        grid(points, chosen, REPO / "docs" / "quality_grid.jpg")
    print(json.dumps(verdict, indent=1))


if __name__ == "__main__":
    main()
