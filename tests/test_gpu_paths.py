"""What the CUDA paths do, simulated on the CPU: device choice, precision per device, memory retries."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import write_config
from PIL import Image
from typer.testing import CliRunner

from pipeline.core.optimize import Settings
from pipeline.render import renderer as render
from pipeline.render.renderer import Renderer, resolve_precision
from pipeline.run.cluster import check_gpus
from pipeline.run.devices import DeviceError
from pipeline.ui.cli import app


def test_auto_precision_asks_each_cuda_device_itself(monkeypatch):
    capability = {0: (9, 0), 1: (7, 5)}  # an H100 beside a T4: bf16 on the first only
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability[torch.device(device).index])
    assert resolve_precision("auto", torch.device("cuda:0")) == "bf16"
    assert resolve_precision("auto", torch.device("cuda:1")) == "fp32"


def test_a_job_that_runs_out_of_memory_is_tried_once_more_on_half_the_memory(shared, tmp_path, monkeypatch):
    renderer = Renderer(Settings(size=32, iterations=2, scales=1), tiling="auto")
    real, calls = render.stylize, []

    def stylize(*args, **kwargs):
        calls.append((renderer.memory_share, sys.exc_info()[0]))
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(render, "stylize", stylize)
    out = tmp_path / "out.png"
    renderer.render(shared / "content/chelsea.png", [(shared / "style/wave.jpg", 1.0)], out)
    assert calls == [(1.0, None), (0.5, None)], (
        "the retry runs on half the memory, outside the failed attempt's handler"
    )
    assert renderer.memory_share == 1.0 and Image.open(out).size == (32, 21)


def test_without_auto_tiling_running_out_of_memory_fails_at_once(shared, tmp_path, monkeypatch):
    renderer = Renderer(Settings(size=32, iterations=2, scales=1), tiling="off")
    calls = []

    def stylize(*args, **kwargs):
        calls.append(1)
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(render, "stylize", stylize)
    with pytest.raises(torch.OutOfMemoryError):
        renderer.render(shared / "content/chelsea.png", [(shared / "style/wave.jpg", 1.0)], tmp_path / "out.png")
    assert calls == [1]


def test_a_failed_batch_is_retried_job_by_job_outside_its_handler(shared, tmp_path, monkeypatch):
    for name in ("a", "b"):
        Image.open(shared / "content/chelsea.png").convert("RGB").save(tmp_path / f"{name}.png")
    config = write_config(
        tmp_path / "config.yaml",
        [tmp_path / "a.png", tmp_path / "b.png"],
        tmp_path / "out",
        optimize={"size": 32, "iterations": 2, "scales": 1, "optimizer": "adam", "batch": 2},
    )
    seen = []
    real = Renderer.render

    def render_batch(self, *args, **kwargs):
        raise MemoryError("out of memory")

    def single(self, *args, **kwargs):
        seen.append(sys.exc_info()[0])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Renderer, "render_batch", render_batch)
    monkeypatch.setattr(Renderer, "render", single)
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    assert seen == [None, None], "each job alone, with the batch's failure (and its tensors) gone"


def test_two_workers_of_one_host_never_share_a_gpu():
    check_gpus({"tcp://a:1": ("box1", "GPU-0"), "tcp://a:2": ("box1", "GPU-1"), "tcp://b:1": ("box2", "GPU-0")})
    with pytest.raises(DeviceError, match="would both use GPU GPU-0 of box1"):
        check_gpus({"tcp://a:1": ("box1", "GPU-0"), "tcp://a:2": ("box1", "GPU-0")})
    with pytest.raises(DeviceError, match="worker tcp://a:3: all 2 GPUs"):
        check_gpus({"tcp://a:3": ("box1", "error: all 2 GPUs of this host are held")})


CLAIM = textwrap.dedent("""
    import sys, torch
    from types import SimpleNamespace
    torch.cuda.get_device_properties = lambda i: SimpleNamespace(uuid=f"GPU-{i}")
    from pipeline.run.cluster import claim_gpu
    from pipeline.run.devices import DeviceError
    try:
        print(claim_gpu(2, __import__("pathlib").Path(sys.argv[1])), flush=True)
    except DeviceError as exc:
        print(f"error: {exc}", flush=True)
    sys.stdin.read()  # hold the claim until the test lets go
""")


def test_each_worker_process_claims_a_gpu_of_its_own(tmp_path):
    """Remote Dask workers that see two GPUs (no CUDA_VISIBLE_DEVICES): the first takes cuda:0, the second
    cuda:1, a third none; a claim dies with its process."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    workers, said = [], []
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", CLAIM, str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        workers.append(proc)
        said.append(proc.stdout.readline().strip())
    assert said[:2] == ["cuda:0", "cuda:1"] and said[2].startswith("error: all 2 GPUs of this host are held")
    workers[0].communicate("")
    again = subprocess.run(
        [sys.executable, "-c", CLAIM, str(tmp_path)], input="", capture_output=True, text=True, env=env
    )
    assert again.stdout.strip() == "cuda:0", "the first worker's GPU came free when it ended"
    for proc in workers[1:]:
        proc.communicate("")


def _fault_run(tmp_path: Path, shared: Path, workers: int) -> tuple[subprocess.CompletedProcess, dict]:
    """Four photos, one of which meets a device fault (tests/hooks: STYLIZE_TEST_FAULT)."""
    import json

    from conftest import photo_crops, run_with_hooks

    inputs = photo_crops(shared / "content/chelsea.png", tmp_path / "in", 4)
    config = write_config(
        tmp_path / "config.yaml",
        [inputs],
        tmp_path / "out",
        optimize={"size": 32, "iterations": 2, "scales": 1},
        workers_per_device=workers,
    )
    result = run_with_hooks(config, STYLIZE_TEST_FAULT="photo_b.png")
    return result, json.loads((tmp_path / "out" / "manifest.json").read_text())["jobs"]


@pytest.mark.slow
def test_a_device_fault_ends_its_worker_and_the_others_take_the_rest(shared, tmp_path):
    result, records = _fault_run(tmp_path, shared, workers=2)
    assert result.returncode == 1, result.stderr
    failed = {k: r for k, r in records.items() if r["state"] == "failed"}
    assert list(failed) == ["photo_b.wave.png"] and failed["photo_b.wave.png"]["device"] == "cpu"
    assert "device cpu failed: its worker ended, the other jobs run elsewhere" in failed["photo_b.wave.png"]["error"]
    assert sum(r["state"] == "done" for r in records.values()) == 3


def test_on_a_single_device_a_fault_fails_the_rest_without_running_them(shared, tmp_path):
    result, records = _fault_run(tmp_path, shared, workers=1)
    assert result.returncode == 1
    states = {k.split(".")[0]: (r["state"], r["error"] or "") for k, r in sorted(records.items())}
    assert states["photo_a"][0] == "done" and states["photo_b"][0] == "failed"
    assert all(
        s == "failed" and "not run: device cpu failed on" in e for s, e in (states["photo_c"], states["photo_d"])
    )
