"""The run report: report.html and contact_sheet.png after a real (tiny) run with a bad input and a frame sequence."""

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import missing, photo_crops
from PIL import Image
from typer.testing import CliRunner

from pipeline.core.optimize import Progress
from pipeline.render.renderer import TRACE_POINTS, compact_trace
from pipeline.ui.cli import app
from pipeline.ui.report import CELL_WIDTH, LABEL, PAD, REPORT_NAME, SHEET_NAME, trace_svg

runner = CliRunner()
CHROMIUM = Path("/usr/bin/chromium")
STYLES = ("wave", "the_scream")


@pytest.fixture(scope="module")
def run(shared, tmp_path_factory) -> tuple[Path, Path, str]:
    """(config, output dir, CLI output) of a run over two photos, a text file named .jpg and a
    three-frame sequence, in two styles, at 32 px, two iterations: exit 1."""
    tmp = tmp_path_factory.mktemp("report")
    inputs = photo_crops(shared / "content/chelsea.png", tmp / "in", 2)
    (inputs / "broken.jpg").write_text("this is not a jpeg")
    (inputs / "shot").mkdir()
    pan = Image.open(shared / "content/coffee.png").convert("RGB")
    for i in range(3):
        pan.crop((6 * i, 0, 6 * i + 300, 200)).resize((60, 40)).save(inputs / "shot" / f"frame_{i + 1:04d}.png")
    config = tmp / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "inputs": [str(inputs)],
                "styles": [{"name": n, "images": [str(shared / f"style/{n}.jpg")]} for n in STYLES],
                "output": {"dir": "out"},
                "optimize": {"size": 32, "iterations": 2, "scales": 1},
                "devices": "cpu",
                "cache_dir": str(tmp / "cache"),
            }
        )
    )
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 1, result.output
    return config, tmp / "out", result.output


def _records(out: Path) -> list[dict]:
    return list(json.loads((out / "manifest.json").read_text())["jobs"].values())


def test_run_writes_a_self_contained_report(run):
    _, out, output = run
    page = (out / REPORT_NAME).read_text()
    assert f"report: {out / REPORT_NAME}" in output
    links = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert links and all(link.startswith("data:image/") for link in links)
    assert "<script" not in page and "<link" not in page and "url(" not in page


def test_report_names_failures_and_shows_each_output_and_curve(run):
    _, out, _ = run
    page = (out / REPORT_NAME).read_text()
    records = _records(out)
    images = [r for r in records if r["state"] == "done" and re.fullmatch(r"photo_.\.\w+\.png", r["output"])]
    assert len(images) == 4 and all([row[:2] for row in r["trace"]] == [[1, 1], [1, 2]] for r in images)
    assert page.count('alt="output"') == 4  # a thumbnail per stylised image
    assert page.count('alt="preview"') == 2  # an animated preview per clip
    assert page.count('<svg class="curve"') == 4 + 2  # a loss curve per image job, one across frames per clip
    assert page.count("broken.jpg: not a readable image") == 2 * 2  # per style: a row of the failures list, a card
    assert page.count("warp error") == 2
    preview = re.search(r'src="data:image/webp;base64,([^"]+)" alt="preview"', page).group(1)
    assert Image.open(io.BytesIO(base64.b64decode(preview))).n_frames == 3


def test_loss_curve_is_compact_and_marks_each_scale():
    trace = [
        Progress(s, 2, (8, 8), i, n, 10.0 / i, 1.0, 0.1 * s / i, 0.0)
        for s, n in ((1, 100), (2, 30))
        for i in range(1, n + 1)
    ]
    rows = compact_trace(trace)
    assert [r[:2] for r in rows if r[0] == 1][::23] == [(1, 1), (1, 100)] and len(rows) == TRACE_POINTS * 2
    assert rows[-1] == (2, 30, 0.3333, 1.0, 0.006667)
    svg = trace_svg([list(r) for r in rows])
    assert svg.count("<polyline") == 3 and svg.count('class="break"') == 1  # loss, content, style; scale 2 starts


def test_contact_sheet_is_the_grid(run):
    _, out, _ = run
    sheet = Image.open(out / SHEET_NAME)
    # Rows as tall as their tallest thumbnail: the style images (the_scream is portrait), then broken.jpg
    # (a 3:2 placeholder), photo_a, photo_b and the sequence (3:2 crops at 160 px wide).
    tallest = [160, 106, 107, 107, 107]
    assert sheet.size == ((1 + len(STYLES)) * CELL_WIDTH, sum(h + 2 * PAD + LABEL for h in tallest))


def test_report_command_rebuilds_it_after_the_fact(run, tmp_path):
    config, out, _ = run
    shutil.copy(config, tmp_path / config.name)
    shutil.copytree(out, tmp_path / out.name, ignore=shutil.ignore_patterns(REPORT_NAME, SHEET_NAME, "shot.wave"))
    result = runner.invoke(app, ["report", str(tmp_path / config.name)])  # one clip's frames are lost: pending again
    assert result.exit_code == 0, result.output
    page = (tmp_path / out.name / REPORT_NAME).read_text()
    assert (tmp_path / out.name / SHEET_NAME).is_file()
    assert "3 pending" in page and page.count('alt="preview"') == 1 and page.count('alt="output"') == 4


def test_quiet_rerun_shows_only_failures_and_the_summary(run):
    config, out, _ = run
    result = runner.invoke(app, ["run", str(config), "--quiet"])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert (
        len(lines) == 3
        and "finished: 12 jobs: 2 run, 10 already done, 2 failed" in lines[0]
        and all("FAILED broken.jpg" in line for line in lines[1:])
    )
    assert "report: " in (out / "stylize.log").read_text().splitlines()[-4]  # the log file still gets every line


def test_quiet_and_verbose_exclude_each_other():
    result = runner.invoke(app, ["run", "config.yaml", "--quiet", "--verbose"])
    assert result.exit_code == 2 and "exclude each other" in result.output


def test_report_loads_in_chromium_with_every_image(run, tmp_path):
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is missing (Debian package chromium; .ci/run installs it)")
    _, out, _ = run
    check = """<script>const errors = [];
addEventListener("error", e => errors.push(String(e.message || e.target.src || e.target.tagName)), true);
addEventListener("load", () => {
  const broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  document.body.dataset.check = JSON.stringify({images: document.images.length, broken, errors});
});</script>"""
    page = tmp_path / "checked.html"
    page.write_text((out / REPORT_NAME).read_text().replace("<head>", "<head>" + check, 1))
    dom = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    found = re.search(r'data-check="([^"]*)"', dom)
    assert found, dom[:500]
    check = json.loads(found.group(1).replace("&quot;", '"'))
    per_style = 1 + 2 * 2 + 2  # the style image; two photos and their outputs; the sequence's middle frame and preview
    assert check == {"images": 2 * per_style, "broken": [], "errors": []}
