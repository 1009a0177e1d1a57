"""Batch-run behaviour: the run lock and the on-disk style cache."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import gpu, photo_crops, run_with_hooks, write_config
from PIL import Image
from typer.testing import CliRunner

from pipeline.batch.lock import LOCK_NAME, run_lock
from pipeline.ui.cli import app

runner = CliRunner()


def _config(tmp_path: Path, inputs: Path, out: str, style: Path) -> Path:
    path = write_config(
        tmp_path / f"{out}.yaml", [inputs], out, style=style, optimize={"size": 48, "iterations": 2, "scales": 1}
    )
    return path


def _manifest(out: Path) -> list[dict]:
    return list(json.loads((out / "manifest.json").read_text())["jobs"].values())


def test_second_run_on_a_locked_output_dir_exits_75_at_once(shared, tmp_path):
    config = _config(tmp_path, shared / "content", "out", shared / "style/wave.jpg")
    out = tmp_path / "out"
    with run_lock(out):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pipeline", "run", str(config)], capture_output=True, text=True)
        elapsed = time.perf_counter() - start
    assert done.returncode == 75, done.stderr
    assert "another stylize run" in done.stderr and str(os.getpid()) in done.stderr
    assert elapsed < 20  # no model was loaded, no job ran
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing else touched


def test_stale_lock_from_a_killed_run_does_not_block(shared, tmp_path):
    inputs = photo_crops(shared / "content/coffee.png", tmp_path / "in", 1)
    config = _config(tmp_path, inputs, "out", shared / "style/wave.jpg")
    out = tmp_path / "out"
    out.mkdir()
    killed = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import time, pipeline.batch.lock as l\nwith l.run_lock(__import__('pathlib').Path({str(out)!r})): time.sleep(60)",
        ]
    )
    deadline = time.monotonic() + 60  # its start-up takes seconds on a loaded machine (torch, under make test-cpu)
    while not (out / LOCK_NAME).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # the lock is taken once the file exists
    killed.kill()
    killed.wait()
    assert (out / LOCK_NAME).exists()
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    assert (out / "stylize.log").read_text().count("finished:") == 1


@pytest.mark.slow
def test_style_is_encoded_once_across_runs_and_corrupt_entries_are_recomputed(shared, tmp_path):
    style = shared / "style/wave.jpg"
    first = _config(tmp_path, photo_crops(shared / "content/coffee.png", tmp_path / "a", 3), "out_a", style)
    result = runner.invoke(app, ["run", str(first)])
    assert result.exit_code == 0, result.output
    records = _manifest(tmp_path / "out_a")
    assert sum(r["style_misses"] for r in records) == 1 and sum(r["style_hits"] for r in records) == 2

    # New content, same style and size, new process state: zero encodes.
    second = _config(tmp_path, photo_crops(shared / "content/coffee.png", tmp_path / "b", 3, offset=5), "out_b", style)
    result = runner.invoke(app, ["run", str(second)])
    assert result.exit_code == 0, result.output
    assert "style targets: 0 encoded, 3 from cache" in result.output
    assert all(r["style_misses"] == 0 for r in _manifest(tmp_path / "out_b"))

    entries = list((tmp_path / "cache" / "styles").glob("*.pt"))
    assert len(entries) == 1
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # truncated: must not be trusted
    third = _config(tmp_path, photo_crops(shared / "content/coffee.png", tmp_path / "c", 1, offset=9), "out_c", style)
    result = runner.invoke(app, ["run", str(third)])
    assert result.exit_code == 0, result.output
    assert _manifest(tmp_path / "out_c")[0]["style_misses"] == 1


@pytest.mark.slow
def test_two_cpu_workers_share_the_jobs(shared, tmp_path):
    inputs = photo_crops(shared / "content/chelsea.png", tmp_path / "in", 8)
    fast = {"size": 64, "iterations": 8, "scales": 1}
    config = write_config(tmp_path / "out.yaml", [inputs], "out", optimize=fast, workers_per_device=2)
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    assert "2 workers on cpu" in result.output
    records = _manifest(tmp_path / "out")
    assert len(records) == 8 and all(r["state"] == "done" for r in records)
    assert len({r["pid"] for r in records}) == 2 and os.getpid() not in {r["pid"] for r in records}
    assert all(Image.open(tmp_path / "out" / r["output"]).size == (64, 43) for r in records)


@pytest.mark.slow
def test_a_worker_that_loky_replaces_hands_its_slot_to_its_replacement(shared, tmp_path):
    """loky replaces a worker whose memory grew (forced here after every task): the replacement takes over
    the slot of the worker it replaces, where it used to wait for one for ever."""
    inputs = photo_crops(shared / "content/chelsea.png", tmp_path / "in", 5)
    fast = {"size": 32, "iterations": 2, "scales": 1}
    config = write_config(tmp_path / "out.yaml", [inputs], "out", optimize=fast, workers_per_device=2)
    result = run_with_hooks(config, STYLIZE_TEST_RECYCLE="1")
    assert result.returncode == 0, result.stderr
    records = _manifest(tmp_path / "out")
    assert len(records) == 5 and all(r["state"] == "done" for r in records)
    assert len({r["pid"] for r in records}) >= 3, "workers were replaced"


def test_devices_resolve_without_a_gpu():
    import torch

    from pipeline.run.devices import resolve_devices

    expected = [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]
    assert resolve_devices("auto") == expected
    assert resolve_devices("cpu") == ["cpu"] and resolve_devices(["cpu", "cpu"]) == ["cpu", "cpu"]


@gpu
@pytest.mark.slow
def test_every_gpu_gets_a_worker(shared, tmp_path):
    import torch

    inputs = photo_crops(shared / "content/chelsea.png", tmp_path / "in", 2 * torch.cuda.device_count())
    config = _config(tmp_path, inputs, "out", shared / "style/wave.jpg")
    data = yaml.safe_load(config.read_text())
    data["devices"] = "auto"
    config.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    devices = {r["device"] for r in _manifest(tmp_path / "out")}
    assert devices == {f"cuda:{i}" for i in range(torch.cuda.device_count())}, "every GPU, and only GPUs"


def test_running_out_of_memory_names_the_size_that_failed():
    from pipeline.batch.manifest import reason

    cuda = reason(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nstack"), Path("/in/a.png"), 2048)
    assert cuda.startswith("/in/a.png: out of device memory at size 2048 (") and "\n" not in cuda
    cpu = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 bytes"
    )
    assert reason(cpu, Path("/in/a.png"), 4096).startswith("/in/a.png: out of memory at size 4096 (")
    assert reason(MemoryError(), Path("/in/a.png"), 512).startswith("/in/a.png: out of memory at size 512")
    assert reason(ValueError("/in/a.png: truncated file"), Path("/in/a.png"), 64) == "/in/a.png: truncated file"


@pytest.mark.slow
def test_batched_jobs_equal_their_single_runs_and_a_bad_file_fails_alone(shared, tmp_path):
    """optimize.batch groups same-size images into one Adam batch: the same keys and (to float
    round-off) the same pixels as one job at a time; an unreadable file in the folder fails alone."""
    inputs = photo_crops(shared / "content/coffee.png", tmp_path / "in", 3)
    Image.open(inputs / "photo_a.png").crop((0, 0, 200, 300)).save(inputs / "photo_d.png")  # another shape
    (inputs / "broken.png").write_text("not a png")
    outs = {}
    for batch in (1, 3):
        config = _config(tmp_path, inputs, f"out{batch}", shared / "style/wave.jpg")
        data = yaml.safe_load(config.read_text())
        # fp32 on every CPU kind: the check is the batch's, not bf16's round-off (1.6e-3 of the loss on AMX)
        data["optimize"] |= {"optimizer": "adam", "iterations": 4, "batch": batch, "precision": "fp32"}
        config.write_text(yaml.safe_dump(data))
        result = runner.invoke(app, ["run", str(config), "--verbose"])
        assert result.exit_code == 1, result.output  # the broken file
        outs[batch] = {r["output"]: r for r in _manifest(tmp_path / f"out{batch}")}
    assert re.search(r"cpu pid \d+: photo_a\.wave\.png \+2 scale 1/1 iteration \d/4 loss", result.output), (
        result.output
    )  # live: one Tick names the batch
    assert outs[1].keys() == outs[3].keys() and len(outs[1]) == 5
    for name, record in outs[3].items():
        assert record["key"] == outs[1][name]["key"]
        if name.startswith("broken"):
            assert record["state"] == "failed" and "broken.png" in record["error"]
            continue
        assert record["state"] == "done"
        a, b = (np.asarray(Image.open(tmp_path / f"out{n}" / name), dtype=float) for n in (1, 3))
        assert np.abs(a - b).mean() < 0.5  # 8-bit levels
        assert record["losses"]["loss"] == pytest.approx(outs[1][name]["losses"]["loss"], rel=1e-3)
    together = [r["seconds"] for n, r in outs[3].items() if n[:7] in ("photo_a", "photo_b", "photo_c")]
    assert len(together) == 3 and len(set(together)) == 1  # one batch: its time shared equally


def test_batch_needs_adam(shared, tmp_path):
    config = _config(tmp_path, shared / "content", "out", shared / "style/wave.jpg")
    data = yaml.safe_load(config.read_text())
    data["optimize"]["batch"] = 4
    config.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 2
    assert "optimize.batch" in result.output or "batch 4 needs optimizer: adam" in result.output
