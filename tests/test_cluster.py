"""`executor: dask` through `stylize run`: the same jobs as the local executor, faults, shared storage."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import photo_crops
from test_temporal_pipeline import _pan
from typer.testing import CliRunner

from pipeline.ui.cli import app

distributed = pytest.importorskip("distributed")
runner = CliRunner()
DASK = str(Path(sys.executable).parent / "dask")
DONE_LINE = re.compile(r"\] done .* -> (\S+) \(")


@dataclass
class Farm:
    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen]


@contextmanager
def _farm(folder: Path, workers: int = 2, wrap: tuple[str, ...] = ()) -> Iterator[Farm]:
    """A dask scheduler and worker processes on this machine, one thread each. No nanny: a killed
    worker stays dead. `wrap` goes before each worker's command line."""
    folder.mkdir(parents=True, exist_ok=True)
    info = folder / "scheduler.json"
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    procs = [
        subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(info)],
            **quiet,
        )
    ]
    try:
        while not info.is_file():
            assert procs[0].poll() is None, "the dask scheduler did not start"
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        procs += [
            subprocess.Popen(
                [*wrap, DASK, "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard"], **quiet
            )
            for _ in range(workers)
        ]
        with distributed.Client(address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=60)
        yield Farm(address, procs[0], procs[1:])
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def farm(tmp_path_factory) -> Iterator[Farm]:
    with _farm(tmp_path_factory.mktemp("farm")) as running:
        yield running


def _config(tmp_path: Path, inputs: list[Path], out: str, style: Path, **top) -> Path:
    path = tmp_path / f"{Path(out).name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "inputs": [str(i) for i in inputs],
                "styles": [{"name": "wave", "images": [str(style)]}],
                "output": {"dir": out},
                "optimize": {"size": 48, "iterations": 2, "scales": 1},
                "devices": "cpu",
                "cache_dir": str(tmp_path / "cache"),
                "executor": "dask",
                **top,
            }
        )
    )
    return path


def _records(out: Path) -> dict[str, dict]:
    return json.loads((out / "manifest.json").read_text())["jobs"]


@contextmanager
def _kill_when(ready: Callable[[], bool], victim: subprocess.Popen) -> Iterator[None]:
    """SIGKILL `victim` from a thread as soon as `ready()` holds."""
    stop = threading.Event()

    def watch() -> None:
        while not ready() and not stop.is_set():
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()


def test_executor_dask_needs_a_scheduler_address(shared, tmp_path):
    config = _config(tmp_path, [shared / "content"], "out", shared / "style/wave.jpg")
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 2 and "scheduler: required with executor: dask" in result.output
    config = _config(tmp_path, [shared / "content"], "out", shared / "style/wave.jpg", scheduler="http://farm:8786")
    result = runner.invoke(app, ["run", str(config)])
    assert (
        result.exit_code == 2 and "scheduler: 'http://farm:8786' is neither local nor tcp://host:port" in result.output
    )


@pytest.mark.slow
def test_local_cluster_runs_the_same_jobs_and_outputs_as_the_local_executor(shared, tmp_path):
    style = shared / "style/wave.jpg"
    photos = photo_crops(shared / "content/chelsea.png", tmp_path / "photos", 3)
    _pan(shared / "content/astronaut.png", tmp_path / "shot", 4)
    video = {"segment_frames": 3, "segment_overlap": 1, "iterations_after_first": 1}  # f001-f003, f003-f004
    runs = {}
    for name, executor in (("local", {"executor": "local"}), ("dask", {"scheduler": "local"})):
        config = _config(
            tmp_path,
            [photos, tmp_path / "shot"],
            name,
            style,
            workers_per_device=2,
            video=video,
            cache_dir=str(tmp_path / f"cache_{name}"),
            **executor,
        )  # seam versions live in the cache
        result = runner.invoke(app, ["run", str(config)])
        assert result.exit_code == 0, result.output
        runs[name] = _records(tmp_path / name)
    assert "dask: 2 workers at tcp://127.0.0.1:" in result.output
    local, dask = runs["local"], runs["dask"]
    assert {k: r["key"] for k, r in dask.items()} == {k: r["key"] for k, r in local.items()}
    assert len(dask) == 3 + 4 + 1 and all(r["state"] == "done" for r in dask.values())  # 3 photos, 4 frames, a clip
    for rel in local:
        if rel.endswith(".png"):
            assert (tmp_path / "dask" / rel).read_bytes() == (tmp_path / "local" / rel).read_bytes(), rel
    # A segment is one task: its own frames come from one worker (f003 is cross-faded by the client).
    assert dask["shot.wave/f001.png"]["pid"] == dask["shot.wave/f002.png"]["pid"] is not None
    assert not list((tmp_path / "dask").rglob(".*.stamp"))  # the client removed each stamp with its record

    outputs = [tmp_path / "dask" / rel for rel in dask if rel.endswith(".png")]
    written = [p.stat().st_mtime_ns for p in outputs]
    rerun = runner.invoke(app, ["run", str(config)])
    assert rerun.exit_code == 0 and ": 0 run, " in rerun.output
    assert "dask:" not in rerun.output  # nothing to do: no cluster started
    assert [p.stat().st_mtime_ns for p in outputs] == written


def test_a_bad_input_fails_only_its_own_job(shared, tmp_path, farm):
    photos = photo_crops(shared / "content/coffee.png", tmp_path / "in", 2)
    (photos / "broken.png").write_bytes(b"not a png")
    config = _config(tmp_path, [photos], "out", shared / "style/wave.jpg", scheduler=farm.address)
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 1, result.output
    records = _records(tmp_path / "out")
    assert {k: r["state"] for k, r in records.items()} == {
        "broken.wave.png": "failed",
        "photo_a.wave.png": "done",
        "photo_b.wave.png": "done",
    }
    assert "broken.png: not a readable image" in records["broken.wave.png"]["error"]
    worker_pids = {w.pid for w in farm.workers}
    assert {records[k]["pid"] for k in ("photo_a.wave.png", "photo_b.wave.png")} <= worker_pids


def test_workers_send_live_progress_to_the_client(shared, tmp_path, farm):
    """With --verbose, each worker's iterations reach the client as they happen (events of the scheduler)."""
    photos = photo_crops(shared / "content/coffee.png", tmp_path / "in", 2)
    config = _config(tmp_path, [photos], "out", shared / "style/wave.jpg", scheduler=farm.address)
    result = runner.invoke(app, ["run", str(config), "--verbose"])
    assert result.exit_code == 0, result.output
    ticks = re.findall(r"cpu pid (\d+): (photo_\w)\.wave\.png scale 1/1 iteration (\d)/2 loss", result.output)
    assert {name for _, name, _ in ticks} == {"photo_a", "photo_b"}, result.output
    assert {int(pid) for pid, _, _ in ticks} <= {w.pid for w in farm.workers}


def test_a_retried_task_returns_the_record_its_killed_attempt_stamped(shared, tmp_path, farm):
    from pipeline.batch.config import load_config
    from pipeline.batch.discover import discover
    from pipeline.batch.plan import plan
    from pipeline.run.cluster import run_task

    inputs = photo_crops(shared / "content/coffee.png", tmp_path / "in", 1)
    config = load_config(_config(tmp_path, [inputs], "out", shared / "style/wave.jpg", scheduler=farm.address))
    job = plan(config, discover(config.inputs, exclude=config.output.dir).sources).jobs[0]
    with distributed.Client(farm.address) as client:
        first = client.submit(run_task, config, job, frozenset(), config.output.dir, pure=False).result()
        written = job.output.stat().st_mtime_ns
        # As if the worker died after writing, before its result reached the client: the task runs again.
        again = client.submit(run_task, config, job, frozenset(), config.output.dir, pure=False).result()
    assert again == first and first[0][1].state == "done"
    assert job.output.stat().st_mtime_ns == written  # not rendered, not written again


def _six_photos_config(tmp_path: Path, inputs: Path, shared: Path, scheduler: str) -> Path:
    """The killing tests' config: `inputs` in wave at 64 px, 6 iterations, on `scheduler`."""
    fast = {"size": 64, "iterations": 6, "scales": 1}
    return _config(tmp_path, [inputs], "out", shared / "style/wave.jpg", scheduler=scheduler, optimize=fast)


@pytest.mark.slow
def test_a_worker_killed_mid_run_has_its_job_retried_and_each_output_recorded_once(shared, tmp_path):
    inputs = photo_crops(shared / "content/astronaut.png", tmp_path / "in", 6)
    with _farm(tmp_path / "farm") as farm:
        config = _six_photos_config(tmp_path, inputs, shared, farm.address)
        victim = farm.workers[0]
        with _kill_when(lambda: len(list((tmp_path / "out").glob("*.wave.png"))) >= 2, victim):  # two outputs landed
            result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    outputs = sorted(p.name for p in (tmp_path / "out").glob("*.wave.png"))
    records = _records(tmp_path / "out")
    landed = Counter(DONE_LINE.findall(result.output))
    assert len(outputs) == 6 and sorted(records) == outputs and all(r["state"] == "done" for r in records.values())
    assert sorted(landed) == outputs and set(landed.values()) == {1}, landed  # each job recorded once
    pids = Counter(r["pid"] for r in records.values())
    assert set(pids) <= {victim.pid, farm.workers[1].pid} and pids[farm.workers[1].pid] >= 3  # the survivor took over
    print(
        f"\nkilled worker {victim.pid} after 2 outputs: {len(outputs)} outputs, {len(records)} records, "
        f"{sum(landed.values())} done lines, {pids[victim.pid]} by the killed worker"
    )


def test_an_unreachable_scheduler_is_a_one_line_error_and_a_rerun_resumes(shared, tmp_path, farm, monkeypatch):
    import pipeline.run.cluster

    monkeypatch.setattr(pipeline.run.cluster, "CONNECT_TIMEOUT", 1.0)
    inputs = photo_crops(shared / "content/coffee.png", tmp_path / "in", 2)
    config = _config(tmp_path, [inputs], "out", shared / "style/wave.jpg", scheduler="tcp://127.0.0.1:9")
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if "error" in line]
    assert error == [error[0]] and error[0].startswith("stylize: error: scheduler tcp://127.0.0.1:9: cannot connect")
    assert not list((tmp_path / "out").glob("*.png"))
    config.write_text(config.read_text().replace("tcp://127.0.0.1:9", farm.address))
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0 and ": 2 run, " in result.output


@pytest.mark.slow
def test_losing_the_scheduler_mid_run_stops_with_one_line_and_a_rerun_resumes(shared, tmp_path, farm):
    inputs = photo_crops(shared / "content/astronaut.png", tmp_path / "in", 6)
    with _farm(tmp_path / "doomed") as doomed:
        config = _six_photos_config(tmp_path, inputs, shared, doomed.address)
        with _kill_when((tmp_path / "out" / "manifest.json").is_file, doomed.scheduler):  # a record reached the client
            result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"stylize: error: scheduler {doomed.address}: lost the connection after \d+ of 6 tasks; a rerun resumes", last
    ), result.output
    before = {k for k, r in _records(tmp_path / "out").items() if r["state"] == "done"}
    assert before and len(before) == len(_records(tmp_path / "out"))  # what finished is in the manifest; no job failed
    config.write_text(config.read_text().replace(doomed.address, farm.address))
    rerun = runner.invoke(app, ["run", str(config)])
    assert rerun.exit_code == 0, rerun.output
    assert not set(DONE_LINE.findall(rerun.output)) & before  # nothing recorded done was run again
    assert len(_records(tmp_path / "out")) == 6 and len(list((tmp_path / "out").glob("*.wave.png"))) == 6


@pytest.mark.skipif(
    shutil.which("unshare") is None, reason="needs unshare (util-linux) for a worker with its own mounts"
)
def test_an_output_dir_the_workers_cannot_see_is_refused_before_any_work(shared, tmp_path):
    hidden = tmp_path / "storage"  # the workers get an empty tmpfs here: not the client's disk
    hidden.mkdir()
    if subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs tmpfs {hidden}"], capture_output=True).returncode:
        pytest.skip("unshare cannot mount here (no user namespaces)")
    wrap = ("unshare", "-rm", "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"', str(hidden))
    inputs = photo_crops(shared / "content/coffee.png", tmp_path / "in", 1)
    with _farm(tmp_path / "farm", workers=1, wrap=wrap) as farm:
        config = _config(tmp_path, [inputs], str(hidden / "out"), shared / "style/wave.jpg", scheduler=farm.address)
        result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 2, result.output
    assert re.search(rf"output.dir: {hidden / 'out'} is not the client's folder .* on worker tcp://", result.output)
    assert sorted(p.name for p in (hidden / "out").iterdir()) == [".stylize.lock", "stylize.log"]  # no job ran
