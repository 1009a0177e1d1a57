"""The run report: `report.html` and `contact_sheet.png` in the output dir.

Built from the config, the plan and the manifest alone, never from a run's
memory, so `stylize report` works after the fact and on a partly failed run.
Rows are the plan's sources, columns its styles. The page is one
self-contained file: thumbnails are base64 JPEG, video previews animated WebP
and loss curves inline SVG. The contact sheet is the same grid as one PNG.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from pipeline.batch.config import Config, StyleConfig
from pipeline.batch.discover import Source
from pipeline.batch.manifest import REPORT_NAME, SHEET_NAME, Manifest, Record
from pipeline.batch.plan import Clip, Job, Plan, VideoOut, frame_folder, relative_output
from pipeline.media.images import ImageError, atomic_path, read_preview
from pipeline.media.plates import PLATE_SUFFIXES
from pipeline.media.scene import SceneColor

THUMB = 160  # px, the longest side of every thumbnail
PREVIEW_FRAMES = 24  # at most, in a video's animated preview
SEQUENCE_FPS = Fraction(12)  # the pace of a frame sequence's preview (it has no frame rate of its own)
PAD, LABEL = 4, 16  # px around each contact sheet thumbnail, and under it for its caption
CELL_WIDTH = THUMB + 2 * PAD  # of a contact sheet column
CURVES = {"loss": "#222", "content": "#1f77b4", "style": "#d62728"}  # a loss curve's series and colours


@dataclass(frozen=True)
class Cell:
    """One source in one style: an image's job, or a video's or sequence's frames."""

    source: Source
    jobs: tuple[Job, ...]
    outputs: tuple[str, ...]  # each job's output, relative to the output dir
    states: tuple[str, ...]  # done | failed | pending, per job
    records: tuple[Record | None, ...]  # per job; None while pending (a record for another key is stale)
    clip: Record | None = None  # a clip's warp error measurement
    video: Record | None = None  # a video's reassembly
    fps: Fraction = SEQUENCE_FPS  # a clip's pace: its video's frame rate

    @property
    def is_clip(self) -> bool:
        return self.source.kind != "image"

    @property
    def done(self) -> list[Path]:
        return [j.output for j, s in zip(self.jobs, self.states) if s == "done"]

    @property
    def failures(self) -> list[tuple[str, str]]:
        """(output, reason) of each failed job, measurement and reassembly."""
        jobs = [(o, r.error or "") for o, s, r in zip(self.outputs, self.states, self.records) if s == "failed" and r]
        return jobs + [(r.output, r.error or "") for r in (self.clip, self.video) if r and r.state == "failed"]

    @property
    def state(self) -> str:
        """failed if anything failed, done if every job is, else pending."""
        if self.failures:
            return "failed"
        return "done" if all(s == "done" for s in self.states) else "pending"

    @property
    def content(self) -> Path:
        """The content image that stands for the cell: the image, or a clip's middle frame."""
        return self.jobs[len(self.jobs) // 2].content

    @property
    def output(self) -> Path | None:
        """The output that stands for the cell: the image, or a clip's middle done frame."""
        done = self.done
        return done[len(done) // 2] if done else None


def _cells(config: Config, plan: Plan, manifest: Manifest) -> list[list[Cell]]:
    """One row per source (in plan order), one cell per style (in config order)."""
    out_dir = config.output.dir
    groups: dict[Path, dict[str, list[Job]]] = {}
    for job in plan.jobs:
        groups.setdefault(job.source.path, {}).setdefault(job.style.name, []).append(job)
    clips = {c.output: c for c in plan.clips}
    videos = {v.clip.output: v for v in plan.videos}

    def look_up(item: Job | Clip | VideoOut) -> tuple[str, str, Record | None]:
        """(output, state, record): no record while pending."""
        rel = relative_output(item, out_dir)
        state = manifest.state(rel, item.key, item.output.exists())
        return rel, state, manifest.records[rel] if state != "pending" else None

    def extra(item: Clip | VideoOut | None) -> Record | None:
        return look_up(item)[2] if item is not None else None

    rows = []
    for by_style in groups.values():
        row = []
        for style in config.styles:
            jobs = tuple(by_style[style.name])
            outputs, states, records = zip(*map(look_up, jobs))
            folder = frame_folder(jobs[0].source, style.name, out_dir)
            video = videos.get(folder)
            row.append(
                Cell(
                    jobs[0].source,
                    jobs,
                    outputs,
                    states,
                    records,
                    clip=extra(clips.get(folder)),
                    video=extra(video),
                    fps=video.fps if video else SEQUENCE_FPS,
                )
            )
        rows.append(row)
    return rows


class _Thumbs:
    """Thumbnails, each file read once per report: PIL images for the sheet, data URIs for the page."""

    def __init__(self, scene: SceneColor | None = None) -> None:
        self.scene = scene  # EXR and DPX files are seen through the view the optimiser sees (see media.scene)
        self._images: dict[Path, Image.Image | None] = {}
        self._uris: dict[Path, str] = {}

    def image(self, path: Path | None) -> Image.Image | None:
        """The file upright per EXIF, scaled to THUMB px on its longest side; None when unreadable."""
        if path is None:
            return None
        if path not in self._images and path.suffix.lower() in PLATE_SUFFIXES:
            try:
                self._images[path] = read_preview(path, THUMB, self.scene)
            except ImageError:
                self._images[path] = None
        if path not in self._images:
            try:
                with Image.open(path) as im:
                    thumb = ImageOps.contain(
                        ImageOps.exif_transpose(im).convert("RGB"), (THUMB, THUMB), Image.Resampling.LANCZOS
                    )
            except (OSError, SyntaxError, ValueError):
                thumb = None
            self._images[path] = thumb
        return self._images[path]

    def img(self, path: Path | None, alt: str, missing: str = "unreadable") -> str:
        """An <img> of the file's thumbnail as a JPEG data URI, or a placeholder saying why there is none."""
        thumb = self.image(path)
        if path is None or thumb is None:
            return f'<div class="missing">{html.escape(missing)}</div>'
        if path not in self._uris:
            buffer = io.BytesIO()
            thumb.save(buffer, "JPEG", quality=82)
            self._uris[path] = _uri(buffer.getvalue(), "jpeg")
        return _img(self._uris[path], alt, thumb.size)

    def preview(self, frames: Sequence[Path], fps: Fraction, alt: str) -> str:
        """An animated WebP <img> of at most PREVIEW_FRAMES of the frames, evenly spaced, at the clip's pace."""
        step = max(1, math.ceil(len(frames) / PREVIEW_FRAMES))
        images = [t for t in map(self.image, frames[::step]) if t is not None]
        if not images:
            return self.img(None, alt, "no frame done")
        buffer = io.BytesIO()
        images[0].save(
            buffer,
            "WEBP",
            save_all=True,
            append_images=images[1:],
            loop=0,
            quality=75,
            duration=round(1000 * step / fps),
        )
        return _img(_uri(buffer.getvalue(), "webp"), alt, images[0].size)


def _uri(data: bytes, kind: str) -> str:
    return f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}"


def _img(uri: str, alt: str, size: tuple[int, int]) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}" width="{size[0]}" height="{size[1]}">'


def loss_svg(
    series: dict[str, list[tuple[float, float]]], breaks: Sequence[float] = (), width: int = 320, height: int = 64
) -> str:
    """A small inline SVG: each series' positive values as a polyline on one log axis (x fitted to the
    width), dashed lines at `breaks` (where a scale starts), the axis' ends labelled in a left gutter."""
    points = [(x, math.log10(y)) for values in series.values() for x, y in values if y > 0]
    if not points:
        return ""
    (x0, x1), (y0, y1) = ((min(v), max(v)) for v in zip(*points))
    gutter = 48

    def fx(x: float) -> float:
        return gutter + (width - gutter - 2) * ((x - x0) / (x1 - x0) if x1 > x0 else 0.5)

    def fy(y: float) -> float:
        return height - 3 - (height - 6) * ((math.log10(y) - y0) / (y1 - y0) if y1 > y0 else 0.5)

    parts = [f'<rect x="{gutter - 2}" y="1" width="{width - gutter + 1}" height="{height - 2}"/>']
    parts += [f'<line x1="{fx(b):.1f}" y1="1" x2="{fx(b):.1f}" y2="{height - 1}" class="break"/>' for b in breaks]
    for name, values in series.items():
        line = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in values if y > 0)
        parts.append(f'<polyline points="{line}" stroke="{CURVES[name]}"><title>{name}</title></polyline>')
    labels = (
        f'<text x="{gutter - 5}" y="9" text-anchor="end">{10**y1:.2g}</text>'
        f'<text x="{gutter - 5}" y="{height - 2}" text-anchor="end">{10**y0:.2g}</text>'
    )
    return f'<svg class="curve" viewBox="0 0 {width} {height}" width="{width}" height="{height}">{labels}{"".join(parts)}</svg>'


def trace_svg(trace: list[list[float]]) -> str:
    """A job's loss curve: its scales end to end, a dashed line where each next one starts."""
    series: dict[str, list[tuple[float, float]]] = {name: [] for name in CURVES}
    breaks, offset, scale, last = [], 0.0, None, 0.0
    for s, iteration, *losses in trace:
        if scale is not None and s != scale:
            offset += last
            breaks.append(offset)
        scale, last = s, iteration
        for name, value in zip(CURVES, losses):
            series[name].append((offset + iteration, value))
    return loss_svg(series, breaks)


def _losses(losses: dict[str, float]) -> str:
    rest = ", ".join(f"{k} {v:.3g}" for k, v in losses.items() if k != "loss")
    return f"loss {losses['loss']:.4g} ({rest})"


def _facts(records: Sequence[Record]) -> str:
    """Iterations, devices and seconds of done records, summed."""
    iterations = sum(r.iterations or 0 for r in records)
    devices = ", ".join(sorted({r.device for r in records if r.device})) or "no device"
    return f"{iterations} iterations · {html.escape(devices)} · {sum(r.seconds or 0 for r in records):.1f} s"


def _image_card(cell: Cell, thumbs: _Thumbs) -> str:
    record = cell.records[0]
    body = [
        f'<div class="pair">{thumbs.img(cell.content, "content")}{thumbs.img(cell.output, "output", cell.state)}</div>'
    ]
    if cell.state == "done" and record is not None:
        losses = [f"<p>{_losses(record.losses)}</p>"] if record.losses else []
        body += [*losses, f"<p>{_facts([record])}</p>", trace_svg(record.trace or [])]
    elif cell.state == "failed":
        body += [f'<p class="error">{html.escape(reason)}</p>' for _, reason in cell.failures]
    else:
        body.append("<p>pending</p>")
    return _card(cell, str(cell.source.relative), body)


def _clip_card(cell: Cell, thumbs: _Thumbs) -> str:
    done = [(j, r) for j, s, r in zip(cell.jobs, cell.states, cell.records) if s == "done" and r]
    preview = thumbs.preview([j.output for j, _ in done], cell.fps, "preview")
    body = [
        f'<div class="pair">{thumbs.img(cell.content, "content")}{preview}</div>',
        f"<p>{len(done)} of {len(cell.jobs)} frames done · {_facts([r for _, r in done])}</p>",
    ]
    metrics = cell.clip.metrics if cell.clip and cell.clip.metrics else None
    if metrics:
        body.append(
            f"<p>warp error {metrics['warp_error']:.3g} (content {metrics['warp_error_content']:.3g}: the floor)</p>"
        )
    if cell.video and cell.video.state == "done":
        body.append(f"<p>video {html.escape(cell.video.output)}</p>")
    body += [f'<p class="error">{html.escape(reason)}</p>' for _, reason in cell.failures[:3]]
    if len(cell.failures) > 3:
        body.append(f'<p class="error">… and {len(cell.failures) - 3} more failures (listed above)</p>')
    series = {name: [(i, r.losses[name]) for i, (j, r) in enumerate(done, 1) if r.losses] for name in CURVES}
    body.append(loss_svg(series))
    rows = "".join(
        f"<tr><td>{html.escape(j.content.name)}</td><td>{s}</td><td>{_losses(r.losses) if r and r.losses else ''}</td>"
        f"<td>{_facts([r]) if r and s == 'done' else html.escape(r.error or '') if r else ''}</td></tr>"
        for j, s, r in zip(cell.jobs, cell.states, cell.records)
    )
    body.append(f"<details><summary>each frame</summary><table>{rows}</table></details>")
    return _card(cell, f"{cell.source.relative} ({len(cell.jobs)} frames)", body)


def _card(cell: Cell, title: str, body: list[str]) -> str:
    return f'<article class="card {cell.state}"><h3>{html.escape(title)}</h3>{"".join(body)}</article>'


def _page(config: Config, rows: list[list[Cell]], thumbs: _Thumbs) -> str:
    cells = [c for row in rows for c in row]
    states = [s for c in cells for s in c.states]
    counts = ", ".join(f"{states.count(s)} {s}" for s in ("done", "failed", "pending"))
    done = [r for c in cells for r, s in zip(c.records, c.states) if r and s == "done"]
    failures = [f for c in cells for f in c.failures]
    failed = "".join(f"<tr><td>{html.escape(o)}</td><td>{html.escape(r)}</td></tr>" for o, r in failures)
    sections = []
    for i, style in enumerate(config.styles):
        images = "".join(
            f"<figure>{thumbs.img(p, p.name)}<figcaption>{html.escape(p.name)} × {w:g}</figcaption></figure>"
            for p, w in style.blend
        )
        cards = "".join(
            _clip_card(c, thumbs) if c.is_clip else _image_card(c, thumbs) for c in (row[i] for row in rows)
        )
        sections.append(
            f'<section><h2>{html.escape(style.name)}</h2><div class="style">{images}</div>'
            f'<div class="grid">{cards}</div></section>'
        )
    legend = " ".join(f'<span style="color:{c}">━ {n}</span>' for n, c in CURVES.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>stylize report: {html.escape(str(config.output.dir))}</title>
<style>{_CSS}</style></head><body>
<h1>stylize report</h1>
<p>{html.escape(str(config.output.dir))} · {len(states)} jobs: {counts} · {_facts(done)} ·
written {time.strftime("%Y-%m-%d %H:%M:%S")}</p>
<p class="legend">Loss curves: {legend} on a log axis; dashed: the next, finer scale; for clips, per frame.</p>
{f'<section id="failed"><h2>Failed ({len(failures)})</h2><table>{failed}</table></section>' if failures else ""}
{"".join(sections)}
</body></html>
"""


_CSS = """body{font:13px/1.35 system-ui,sans-serif;margin:16px;color:#222}
h2{margin:24px 0 8px}h3{font-size:13px;margin:0 0 4px;overflow-wrap:anywhere}
.grid{display:grid;grid-template-columns:repeat(auto-fill,340px);gap:10px}
.card{border:1px solid #ccc;border-radius:4px;padding:8px}.card.failed{border-color:#d62728;background:#fff5f5}
.card.pending{opacity:.6}.card p{margin:2px 0}.pair{display:flex;gap:4px;align-items:flex-start}
.style{display:flex;gap:8px}figure{margin:0}figcaption{font-size:11px;color:#555}
.missing{width:160px;height:107px;background:#eee;color:#777;display:flex;align-items:center;justify-content:center}
.error{color:#b00;overflow-wrap:anywhere}table{border-collapse:collapse}td{border-top:1px solid #eee;padding:2px 6px;vertical-align:top}
.curve{display:block;margin-top:4px}.curve rect{fill:none;stroke:#ddd}.curve polyline{fill:none;stroke-width:1.2}.curve line.break{stroke:#999;stroke-dasharray:2 2}
.curve text{font-size:9px;fill:#666}.legend span{font-weight:600}"""


def _sheet(rows: list[list[Cell]], styles: list[StyleConfig], thumbs: _Thumbs) -> Image.Image:
    """The grid as one image: a header row of style images, then per source its content and each style's
    output. Columns are CELL_WIDTH wide, each row as tall as its tallest image (plus PAD around and
    LABEL for captions); images stand on the row's baseline over their caption, and a missing one is a
    box of the content's shape saying why."""
    Tile = tuple[Image.Image | None, str, str, tuple[int, int]]  # image, caption, why it is missing, its box then
    grid: list[list[Tile | None]] = [
        [None, *((thumbs.image(s.images[0]), s.name, "unreadable", (THUMB, THUMB)) for s in styles)]
    ]
    for row in rows:
        content = thumbs.image(row[0].content)
        shape = content.size if content is not None else (THUMB, THUMB * 2 // 3)
        tiles: list[Tile | None] = [(content, str(row[0].source.relative), "unreadable", shape)]
        for cell in row:
            record = cell.records[0]
            caption = (
                f"{len(cell.done)}/{len(cell.jobs)} frames"
                if cell.is_clip
                else (f"loss {record.losses['loss']:.3g}" if record and record.losses else cell.state)
            )
            tiles.append((thumbs.image(cell.output), caption, cell.state, shape))
        grid.append(tiles)
    heights = [max(t[0].height if t[0] else t[3][1] for t in tiles if t) + 2 * PAD + LABEL for tiles in grid]
    sheet = Image.new("RGB", (CELL_WIDTH * len(grid[0]), sum(heights)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    top = 0
    for tiles, height in zip(grid, heights):
        base = top + height - LABEL - PAD  # where images end and captions begin
        for col, tile in enumerate(tiles):
            if tile is None:
                continue
            image, caption, missing, shape = tile
            w, h = image.size if image is not None else shape
            x, y = col * CELL_WIDTH + PAD + (THUMB - w) // 2, base - h
            if image is not None:
                sheet.paste(image, (x, y))
            else:
                failed = missing == "failed"
                draw.rectangle((x, y, x + w - 1, y + h - 1), fill="#fde8e8" if failed else "#eee")
                draw.text((x + w // 2, y + h // 2), missing, fill="#b00" if failed else "#666", font=font, anchor="mm")
            while draw.textlength(caption, font=font) > THUMB:
                caption = caption[:-2] + "…"
            draw.text((col * CELL_WIDTH + PAD, base + 2), caption, fill="#222", font=font)
        top += height
    return sheet


def write_report(config: Config, plan: Plan) -> tuple[Path, Path]:
    """Write `report.html` and `contact_sheet.png` into the output dir (atomically); returns their paths."""
    out_dir = config.output.dir
    rows = _cells(config, plan, Manifest(out_dir))
    thumbs = _Thumbs(config.color.scene())
    page, sheet = out_dir / REPORT_NAME, out_dir / SHEET_NAME
    with atomic_path(sheet) as tmp:
        _sheet(rows, config.styles, thumbs).save(tmp, "PNG")
    with atomic_path(page) as tmp:
        tmp.write_text(_page(config, rows, thumbs), encoding="utf-8")
    return page, sheet
