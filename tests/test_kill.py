"""kill -9 at random moments, then rerun: nothing lost, nothing half-written, nothing redone or duplicated."""

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


def _stamps(out: Path, names: set[str]) -> dict[str, int]:
    """The modification times of the outputs `names`: a finished output is never written again."""
    return {n: (out / n).stat().st_mtime_ns for n in names}


def _done(out: Path) -> set[str]:
    try:
        jobs = json.loads((out / "manifest.json").read_text())["jobs"]
    except FileNotFoundError:
        return set()
    return {k for k, v in jobs.items() if v["state"] == "done"}


@pytest.mark.slow
def test_kill_9_six_times_then_rerun(shared, tmp_path):
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
    stamps: dict[str, int] = {}
    for _ in range(6):  # from start-up (model loading) to the middle of a job or a manifest write
        before = _done(out)
        assert _stamps(out, set(stamps)) == stamps  # no finished output was rewritten
        stamps = _stamps(out, before)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.5, 6.0))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        ran = set(re.findall(r"\] done .* -> (\S+) \(", err))
        redone += sorted(ran & before)
    before = _done(out)
    stamps = _stamps(out, before)
    final = subprocess.run(cmd, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    redone += sorted(set(re.findall(r"\] done .* -> (\S+) \(", final.stderr)) & before)
    assert not redone, f"jobs recorded done were run again: {redone}"
    assert _stamps(out, before) == stamps
    outputs = sorted(out.glob("*.wave.png"))
    assert len(outputs) == 10 and _done(out) == {p.name for p in outputs}  # none lost
    records = json.loads((out / "manifest.json").read_text())["jobs"]
    assert sorted(records) == [p.name for p in outputs]  # none duplicated: one record and one file per input
    assert sorted(p.name for p in out.glob("photo_*")) == [p.name for p in outputs]  # and no second name for one
    for path in outputs:
        with Image.open(path) as im:
            im.load()  # decodes completely
            assert im.size == (64, 43)
    assert not list(out.rglob("*.part*"))
