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
from conftest import photo_crops, write_config
from PIL import Image


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
    config = write_config(
        tmp_path / "config.yaml", [inputs], "out", optimize={"size": 64, "iterations": 6, "scales": 1}
    )
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


def _group(pgid: int) -> list[int]:
    """The live processes of process group `pgid` (from /proc: pgrep may not be installed)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_ctrl_c_with_two_workers_says_interrupted_and_loses_nothing(shared, tmp_path):
    """Ctrl-C reaches the whole process group, as a terminal sends it: one `interrupted` line, exit 130,
    no thread's traceback, no worker left running, and a rerun finishes the rest."""
    inputs = photo_crops(shared / "content/astronaut.png", tmp_path / "in", 4)
    config = write_config(
        tmp_path / "config.yaml",
        [inputs],
        "out",
        optimize={"size": 64, "iterations": 300, "scales": 1},
        workers_per_device=2,
    )
    cmd = [sys.executable, "-m", "pipeline", "run", str(config)]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not list((tmp_path / "cache" / "styles").glob("*.pt")) and time.monotonic() < deadline:
        time.sleep(0.2)  # a worker is rendering: it has encoded the style
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.count("stylize: error: interrupted: the jobs in hand were abandoned") == 1
    assert "Exception in thread" not in err and "KeyboardInterrupt" not in err
    time.sleep(1)
    assert not _group(proc.pid), "every worker ended with the run"
    config.write_text(config.read_text().replace("iterations: 300", "iterations: 2"))
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0 and len(_done(tmp_path / "out")) == 4, rerun.stderr
