"""The Dask executor against the local one: one config of tiny jobs, run on each with two CPU workers.

    python -m bench.cluster                          # 24 images at 32 px, 2 iterations (about a minute on 2 cores)
    python -m bench.cluster --images 48 --iterations 1

Checks that both runs plan the same job keys and write byte-identical outputs, and measures the
scheduling overhead per job: for consecutive jobs of one worker, the time between their records
reaching the client minus the later job's own render time (what a worker spends per job on anything
but rendering: dispatch, returning the result, the client's bookkeeping), in the steady state. Also
the start-up (until the first record arrives: pool or cluster, torch import, model load, first job)
and the whole run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import yaml
from PIL import Image

from pipeline.batch.config import load_config
from pipeline.batch.discover import discover
from pipeline.batch.manifest import Manifest, Record
from pipeline.batch.plan import plan
from pipeline.run.allocator import keep_freed_memory
from pipeline.run.execute import execute

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
WORKERS = 2


class _Timed:
    """A run report that notes when each record reaches the client."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, Record]] = []

    def log(self, message: str) -> None:
        pass

    def start(self, pending: int) -> None:
        pass

    def finished(self, record: Record) -> None:
        self.arrivals.append((time.perf_counter(), record))


def _inputs(folder: Path, count: int) -> Path:
    """`count` different crops of a real photo (letter names: not a frame sequence)."""
    folder.mkdir(parents=True)
    photo = Image.open(SHARED / "content" / "astronaut.png").convert("RGB")
    for i in range(count):
        x, y = (7 * i) % 380, (11 * i) % 380
        photo.crop((x, y, x + 132, y + 132)).resize((64, 64)).save(
            folder / f"photo_{chr(97 + i // 26)}{chr(97 + i % 26)}.png"
        )
    return folder


def _run(work: Path, inputs: Path, name: str, size: int, iterations: int, executor: dict) -> dict:
    path = work / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "inputs": [str(inputs)],
                "styles": [{"name": "wave", "images": [str(SHARED / "style" / "wave.jpg")]}],
                "output": {"dir": name},
                "optimize": {"size": size, "iterations": iterations, "scales": 1},
                "devices": "cpu",
                "workers_per_device": WORKERS,
                "cache_dir": f"cache_{name}",
                **executor,
            }
        )
    )
    config = load_config(path)
    report = _Timed()
    start = time.perf_counter()
    execute(config, plan(config, discover(config.inputs, exclude=config.output.dir).sources), report)
    total = time.perf_counter() - start
    by_worker: dict[int, list[tuple[float, Record]]] = {}
    for arrival in report.arrivals:
        by_worker.setdefault(arrival[1].pid, []).append(arrival)
    idle = [t1 - t0 - r.seconds for arrivals in by_worker.values() for (t0, _), (t1, r) in zip(arrivals, arrivals[1:])]
    return {
        "total_s": total,
        "first_s": report.arrivals[0][0] - start,
        "render_s": sum(r.seconds for _, r in report.arrivals),
        "idle_median_ms": 1000 * statistics.median(idle),
        "idle_mean_ms": 1000 * statistics.mean(idle),
        "records": Manifest(config.output.dir).records,
        "out": config.output.dir,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=2)
    args = parser.parse_args()
    keep_freed_memory("bench.cluster")  # the same allocator settings as the stylize command
    work = HERE / "out" / "cluster"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    inputs = _inputs(work / "in", args.images)
    runs = {
        name: _run(work, inputs, name, args.size, args.iterations, executor)
        for name, executor in (("local", {"executor": "local"}), ("dask", {"executor": "dask", "scheduler": "local"}))
    }
    local, dask = runs["local"]["records"], runs["dask"]["records"]
    same_keys = {k: r.key for k, r in local.items()} == {k: r.key for k, r in dask.items()}
    same_bytes = all((runs["local"]["out"] / k).read_bytes() == (runs["dask"]["out"] / k).read_bytes() for k in local)
    print(f"{args.images} images at {args.size} px, {args.iterations} iterations, {WORKERS} CPU workers")
    print(f"same job keys: {same_keys} ({len(local)} jobs); byte-identical outputs: {same_bytes}")
    print(
        "| executor | whole run | start-up (first record) | render time, all jobs | overhead per job: median (mean) |"
    )
    print("|---|---|---|---|---|")
    for name, label in (("local", "local (joblib/loky)"), ("dask", "dask (2-worker LocalCluster)")):
        r = runs[name]
        print(
            f"| {label} | {r['total_s']:.1f} s | {r['first_s']:.1f} s | {r['render_s']:.1f} s | "
            f"{r['idle_median_ms']:.0f} ms ({r['idle_mean_ms']:.0f} ms) |"
        )
    if not (same_keys and same_bytes):
        raise SystemExit("bench.cluster: the two executors disagree")


if __name__ == "__main__":
    main()
