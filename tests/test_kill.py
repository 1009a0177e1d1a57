"""kill -9 at random moments, then rerun: nothing lost, nothing half-written, nothing redone."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import photo_crops


def _done(out: Path) -> set[str]:
    try:
        jobs = json.loads((out / "manifest.json").read_text())["jobs"]
    except FileNotFoundError:
        return set()
    return {k for k, v in jobs.items() if v["state"] == "done"}


@pytest.mark.slow
def test_kill_9_five_times_then_rerun(shared, tmp_path):
    inputs = photo_crops(shared / "content/astronaut.png", tmp_path / "in", 10)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "inputs": [str(inputs)], "styles": [{"name": "wave", "images": [str(shared / "style/wave.jpg")]}],
        "output": {"dir": "out"}, "optimize": {"size": 64, "iterations": 6, "scales": 1},
        "devices": "cpu", "cache_dir": str(tmp_path / "cache"),
    }))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline", "run", str(config)]
    rng = random.Random(0)
    redone: list[str] = []
    for _ in range(5):
        before = _done(out)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(2.0, 6.0))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        ran = set(re.findall(r"\] done .* -> (\S+) \(", err))
        redone += sorted(ran & before)
    before = _done(out)
    final = subprocess.run(cmd, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    redone += sorted(set(re.findall(r"\] done .* -> (\S+) \(", final.stderr)) & before)
    assert not redone, f"jobs recorded done were run again: {redone}"
    outputs = sorted(out.glob("*.wave.png"))
    assert len(outputs) == 10 and _done(out) == {p.name for p in outputs}
    for path in outputs:
        with Image.open(path) as im:
            im.load()  # decodes completely
            assert im.size == (64, 43)
    assert not list(out.rglob("*.part*"))
