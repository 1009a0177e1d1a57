"""`make bench-faults`: the real-world inputs that used to be lost, overwritten or misreported, run as cron runs them.

Each case builds its own inputs in a fresh folder, runs `stylize run` as a separate process (tiny size,
two iterations) and checks the exit code, the one line that must be said and what happened to the outputs:
every output that was done before a case's second run must keep its name and its bytes, and every input
must have its own output or a failure that names it.

    python -m bench.faults          # writes bench/faults.md and bench/faults.json
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import yaml
from PIL import Image

from bench import machine
from pipeline.batch.manifest import RUN_FILES
from pipeline.media.animation import probe

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
STYLE = SHARED / "style" / "wave.jpg"


@dataclass
class Case:
    """One fault: what was injected, what had to happen and what did."""

    name: str
    inputs: int = 0  # distinct input files made
    expected: str = ""
    got: str = ""
    ok: bool = False
    lost: int = 0  # outputs done earlier that vanished, changed or moved
    notes: list[str] = field(default_factory=list)


def _config(root: Path, inputs: list[Path], out: Path | None = None, **extra) -> Path:
    data = {
        "inputs": [str(i) for i in inputs],
        "styles": [{"name": "wave", "images": [str(STYLE)]}],
        "output": {"dir": str(out or root / "out")},
        "optimize": {"size": 40, "iterations": 2, "scales": 1},
        "devices": "cpu",
        "cache_dir": str(root / "cache"),
        **extra,
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _default_sigint() -> None:
    """In the child: Ctrl-C back to its default (a shell's background job would ignore it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(config: Path, interrupt_after: float | None = None) -> tuple[int, str]:
    """`stylize run CONFIG` in its own process group: exit code and everything it printed."""
    command = [sys.executable, "-m", "pipeline", "run", str(config)]
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    proc = subprocess.Popen(command, **output, start_new_session=True, preexec_fn=_default_sigint)
    if interrupt_after is not None:
        time.sleep(interrupt_after)
        os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=900)
    return proc.returncode, out


def _photo(path: Path, name: str = "chelsea.png", size: tuple[int, int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(SHARED / "content" / name).convert("RGB")
    (image.resize(size) if size else image).save(path)
    return path


def _video(path: Path, frames: int = 3, durations: list[int] | None = None, audio: list[str] = ()) -> Path:
    """A tiny H.264 clip; `durations` in 1/90 s ticks make its frame rate variable; one AAC track per language."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 90)
        tracks = []
        for language in audio:
            track = out.add_stream("aac", rate=8000)
            track.metadata["language"] = language
            tracks.append(track)
        pts = 0
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 48, 3), 30 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 90)
            pts += (durations or [3])[i % len(durations or [3])]
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
        for track in tracks:
            samples = np.zeros((1, int(8000 * pts / 90)), np.float32)
            sound = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            sound.sample_rate, sound.pts = 8000, 0
            out.mux(track.encode(sound))
            out.mux(track.encode())
    return path


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in {".png", ".jpg", ".mp4", ".gif", ".webp"} and p.name not in RUN_FILES
    }


def _lost(before: dict[str, str], after: dict[str, str]) -> int:
    return sum(after.get(name) != digest for name, digest in before.items())


def _check(
    case: Case, code: int, log: str, want: int, says: list[str], absent: tuple[str, ...] = ("Traceback",)
) -> None:
    case.got = f"exit {code}"
    missing = [s for s in says if s not in log]
    present = [s for s in absent if s in log]
    case.ok = code == want and not missing and not present
    case.notes += [f"missing: {m!r}" for m in missing] + [f"unwanted: {p!r}" for p in present]


def stems(root: Path) -> Case:
    case = Case("1. clip.mp4 and clip.mov in one folder", 2, "exit 0; two frame folders, two videos")
    for name in ("clip.mp4", "clip.mov"):
        _video(root / "in" / name)
    code, log = _run(_config(root, [root / "in"], video={"temporal": False}))
    videos = sorted(p.name for p in (root / "out").glob("*.mp4"))
    _check(case, code, log, 0, [])
    case.ok &= videos == ["clip.mov.wave.mp4", "clip.wave.mp4"]
    case.got += f"; {', '.join(videos)}"
    return case


def sibling(root: Path) -> Case:
    case = Case("2. b.jpg, then b.jpg.png, beside a finished b.png", 3)
    case.expected = "exit 0, then exit 1 naming b.jpg; b.png's output keeps its name and bytes"
    _photo(root / "in" / "b.png")
    config = _config(root, [root / "in"])
    first = _run(config)
    before = _hashes(root / "out")
    _photo(root / "in" / "b.jpg", "coffee.png")
    code, log = _run(config)
    _check(case, code, log, 0, ["1 run, 1 already done"])
    _photo(root / "in" / "b.jpg.png", "astronaut.png")
    code2, log2 = _run(config)
    ok = case.ok and first[0] == 0
    _check(case, code2, log2, 1, ["FAILED b.jpg: ", "would also be written for"])
    case.ok &= ok and (root / "out" / "b.jpg.wave.png").is_file()
    case.lost = _lost(before, _hashes(root / "out"))
    case.got = f"exit {code}, then exit {code2}"
    return case


def nothing(root: Path) -> Case:
    case = Case("3. output.dir = the input folder; only unsupported files; some unsupported", 7)
    case.expected = "exit 2, exit 2 naming the types, exit 0 with one warning line"
    _photo(root / "a" / "a.png")
    code1, log1 = _run(_config(root, [root / "a"], out=root / "a"))
    (root / "b").mkdir()
    for name in ("x.txt", "y.psd", "z.psd"):
        (root / "b" / name).write_text("x")
    code2, log2 = _run(_config(root, [root / "b"]))
    _photo(root / "c" / "c.png")
    (root / "c" / "notes.txt").write_text("x")
    code3, log3 = _run(_config(root, [root / "c"]))
    _check(case, code1, log1, 2, ["is this folder or lies inside it"])
    ok = case.ok and sorted(p.name for p in (root / "a").iterdir()) == ["a.png"]
    _check(case, code2, log2, 2, ["skipped 3 files of unsupported types: 2 .psd, 1 .txt"])
    ok &= case.ok
    _check(case, code3, log3, 0, ["warning: skipped 1 files of unsupported types: 1 .txt"])
    case.ok &= ok
    case.got = f"exit {code1}, {code2}, {code3}"
    return case


def gap(root: Path) -> Case:
    case = Case("4. a sequence with frames 4 and 7-8 missing, and an unrelated image", 7)
    case.expected = "exit 0; one sequence under its frame names, a warning naming 4, 7-8"
    numbers = (1, 2, 3, 5, 6, 9)
    for n in numbers:
        _photo(root / "in" / "shot" / f"frame_{n:04d}.png", size=(60, 40))
    _photo(root / "in" / "shot" / "reference.png", "coffee.png")
    code, log = _run(_config(root, [root / "in"]))
    _check(case, code, log, 0, ["frames 4, 7-8 missing from frame_####.png"])
    frames = sorted(p.name for p in (root / "out" / "shot.wave").glob("*.png"))
    case.ok &= (
        frames == [f"frame_{n:04d}.png" for n in numbers] and (root / "out" / "shot" / "reference.wave.png").is_file()
    )
    return case


def read_only_cache(root: Path) -> Case:
    case = Case("5. cache_dir not writable, with a video (a file where its folder should be)", 1)
    case.expected = "exit 2 naming cache_dir, no traceback"
    config = _config(root, [_video(root / "in" / "clip.mp4")])
    (root / "blocker").write_text("x")
    data = yaml.safe_load(config.read_text())
    data["cache_dir"] = str(root / "blocker" / "cache")
    config.write_text(yaml.safe_dump(data))
    code, log = _run(config)
    _check(case, code, log, 2, ["cache_dir: cannot write to"])
    return case


def duplicate_key(root: Path) -> Case:
    case = Case("6. a key twice in the YAML", 1, "exit 2 naming the key and its lines")
    config = _config(root, [_photo(root / "in" / "a.png")])
    config.write_text(config.read_text().replace("  iterations: 2\n", "  iterations: 2\n  iterations: 9\n"))
    code, log = _run(config)
    _check(case, code, log, 2, ["duplicate key 'iterations'"])
    return case


def long_names(root: Path) -> Case:
    case = Case("7. 236- and 254-character file names", 2, "exit 0; the first as is, the second shortened with a hash")
    _photo(root / "in" / ("f" * 232 + ".png"))
    _photo(root / "in" / ("t" * 250 + ".png"))
    code, log = _run(_config(root, [root / "in"]))
    _check(case, code, log, 0, [])
    names = [p.name for p in (root / "out").glob("*.wave.png")]
    case.ok &= len(names) == 2 and any("~" in n for n in names)
    return case


def strip(root: Path) -> Case:
    case = Case("8. a 2000×12 strip", 1, "exit 0; a 40×1 output (its scaled shape)")
    Image.new("RGB", (2000, 12), (200, 90, 30)).save(root / "strip.png")
    code, log = _run(_config(root, [root / "strip.png"]))
    _check(case, code, log, 0, [])
    out = root / "out" / "strip.wave.png"
    case.ok &= out.is_file() and Image.open(out).size == (40, 1)
    return case


def animated(root: Path) -> Case:
    case = Case("9. an animated GIF (3 frames, 100/200/150 ms, loop 2) and an animated WebP", 2)
    case.expected = "exit 0; each comes back animated in its own format, durations and loop kept"
    base = Image.open(SHARED / "content" / "chelsea.png").convert("RGB").resize((48, 32))
    frames = [base.rotate(10 * i) for i in range(3)]
    (root / "in").mkdir(parents=True)
    for name in ("loop.gif", "loop.webp"):
        frames[0].save(root / "in" / name, save_all=True, append_images=frames[1:], duration=[100, 200, 150], loop=2)
    code, log = _run(_config(root, [root / "in"]))
    _check(case, code, log, 0, [])
    for name in ("loop.gif.wave.gif", "loop.webp.wave.webp"):
        if (out := root / "out" / name).is_file():
            info = probe(out)  # what a player reads: the frames' durations and the loop count
            case.got += f"; {name}: {len(info.durations)} frames, {list(info.durations)} ms, loop {info.loop}"
            case.ok &= list(info.durations) == [100, 200, 150] and info.loop == 2
    case.ok &= case.got.count("frames") == 2
    return case


def streams(root: Path) -> Case:
    case = Case("10. two audio tracks (eng, fra) and a variable frame rate", 1)
    case.expected = "exit 0; both tracks with their languages; the duration within a frame"
    clip = _video(root / "in" / "clip.mp4", frames=8, durations=[3, 9], audio=["eng", "fra"])
    code, log = _run(_config(root, [clip], video={"temporal": False}))
    _check(case, code, log, 0, [])
    out = root / "out" / "clip.wave.mp4"
    if out.is_file():
        with av.open(str(clip)) as a, av.open(str(out)) as b:
            languages = [s.language for s in b.streams.audio]
            drift = abs(a.duration - b.duration) / av.time_base
        case.ok &= languages == ["eng", "fra"] and drift <= 0.1
        case.got += f"; audio {languages}, duration off by {drift:.3f} s"
    else:
        case.ok = False
    return case


def smaller(root: Path) -> Case:
    case = Case(
        "11. float TIFF, 16-bit PNG, old outputs among the inputs, a corrupt style, a pattern matching nothing", 7
    )
    case.expected = "exit 0 with two depth warnings and the old outputs passed over; exit 2 naming the style; exit 2 naming the config"
    _photo(root / "in" / "a.png")
    pixels = np.asarray(Image.open(SHARED / "content" / "coffee.png").convert("RGB").resize((60, 40)))
    import cv2  # noqa: PLC0415  the deep files are written the way a compositor would

    cv2.imwrite(str(root / "in" / "float.tif"), (pixels[..., ::-1] / 255).astype(np.float32))
    cv2.imwrite(str(root / "in" / "deep.png"), pixels[..., ::-1].astype(np.uint16) * 257)
    _run(_config(root, [root / "in" / "a.png"], out=root / "in" / "old"))  # an earlier run wrote into the input folder
    code, log = _run(_config(root, [root / "in"]))
    _check(
        case,
        code,
        log,
        0,
        [
            "16-bit input written as 8-bit",
            "float input written as 8-bit",
            "an earlier stylize run wrote",
            "finished: 3 jobs: 3 run",
        ],
    )
    ok = case.ok
    bad = root / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    config = _config(root, [root / "in" / "a.png"])
    data = yaml.safe_load(config.read_text())
    data["styles"][0]["images"] = [str(bad)]
    config.write_text(yaml.safe_dump(data))
    code2, log2 = _run(config)
    _check(case, code2, log2, 2, ["styles[0].images[0]"])
    ok &= case.ok
    code3, log3 = _run(_config(root, [root / "nothing" / "*.png"]))
    _check(case, code3, log3, 2, ["config.yaml: inputs[0]", "matches no files"])
    case.ok &= ok
    case.got = f"exit {code}, {code2}, {code3}"
    return case


def interrupt(root: Path) -> Case:
    case = Case("11. Ctrl-C with two workers", 3, "exit 130 with one 'interrupted' line, no thread traceback")
    for name in ("astronaut.png", "chelsea.png", "coffee.png"):
        _photo(root / "in" / name, name)
    config = _config(root, [root / "in"], workers_per_device=2)
    data = yaml.safe_load(config.read_text())
    data["optimize"].update(size=96, iterations=300)
    config.write_text(yaml.safe_dump(data))
    code, log = _run(config, interrupt_after=20)
    _check(case, code, log, 130, ["interrupted: the jobs in hand were abandoned"], absent=("Exception in thread",))
    if "Traceback" in log:
        case.notes.append("joblib's resource tracker printed its KeyError (joblib#1243)")
    return case


CASES: list[Callable[[Path], Case]] = [
    stems,
    sibling,
    nothing,
    gap,
    read_only_cache,
    duplicate_key,
    long_names,
    strip,
    animated,
    streams,
    smaller,
    interrupt,
]


def main() -> None:
    results = []
    for make in CASES:
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            case = make(Path(folder))
            print(
                f"{'ok  ' if case.ok else 'FAIL'} {case.name}: {case.got} ({time.perf_counter() - start:.0f} s) {case.notes}",
                flush=True,
            )
            results.append(case)
    rows = [
        f"| {c.name} | {c.inputs} | {c.expected} | {c.got} | {'yes' if c.ok else 'NO'} | {c.lost} |" for c in results
    ]
    table = "\n".join(
        ["| case | inputs | must | did | held | outputs lost or overwritten |", "|---|---|---|---|---|---|", *rows]
    )
    summary = (
        f"{len(results)} faults, {sum(c.inputs for c in results)} distinct inputs, {sum(c.ok for c in results)} held, "
        f"{sum(c.lost for c in results)} outputs lost or overwritten; {machine()}"
    )
    (HERE / "faults.md").write_text(f"{table}\n\n{summary}\n")
    (HERE / "faults.json").write_text(
        json.dumps({"machine": machine(), "cases": [asdict(c) for c in results]}, indent=1)
    )
    print(summary)


if __name__ == "__main__":
    main()
