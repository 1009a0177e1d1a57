"""The run manifest: one JSON record per output, written atomically."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.media.images import atomic_path

MANIFEST_NAME = "manifest.json"
REPORT_NAME = "report.html"
SHEET_NAME = "contact_sheet.png"
LOG_NAME = "stylize.log"
RUN_FILES = frozenset({MANIFEST_NAME, REPORT_NAME, SHEET_NAME, LOG_NAME})  # what a run writes beside its outputs


@dataclass(frozen=True)
class Record:
    """The state of one job's output."""

    output: str  # relative to the output dir
    source: str
    style: str
    key: str
    state: str  # done | failed
    error: str | None = None
    losses: dict[str, float] | None = None
    iterations: int | None = None
    device: str | None = None
    precision: str | None = None  # the VGG layers' precision it ran in (optimize.precision, auto resolved)
    pid: int | None = None  # the worker process that made it
    seconds: float | None = None
    style_hits: int | None = None  # style target sets read from the cache
    style_misses: int | None = None  # style target sets encoded
    style_seconds: float | None = None
    metrics: dict[str, float] | None = None  # a clip's warp errors (see pipeline.render.warp_error)
    tile: int | None = None  # the tile side its largest levels were encoded in, when they did not fit whole
    trace: list[list[float]] | None = (
        None  # an image's loss curve: [scale, iteration, loss, content, style] rows (see render.compact_trace)
    )
    color: str | None = None  # the colour space its input was converted from into sRGB (an embedded ICC profile's)
    warning: str | None = (
        None  # what the job did not do as asked, in one line (an input over 8 bits per sample written as 8-bit)
    )


def reason(exc: BaseException, path: Path, size: int | None = None) -> str:
    """A failed job's one-line error, naming its file (and, when it ran out of memory, the size that did)."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if size is not None and (
        isinstance(exc, MemoryError) or "out of memory" in message.lower() or "can't allocate memory" in message
    ):
        return f"{path}: out of {'device ' if 'CUDA' in message else ''}memory at size {size} ({message})"
    return message if str(path) in message else f"{path}: {message}"


class Manifest:
    """Records keyed by output path, loaded from and saved to `<out_dir>/manifest.json`."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / MANIFEST_NAME
        self.records: dict[str, Record] = {}
        self._saved = float("-inf")  # time.monotonic() of the last write
        try:
            data: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
            self.records = {k: Record(**v) for k, v in data.get("jobs", {}).items()}
        except (OSError, ValueError, TypeError):
            self.records = {}  # no manifest (or an unreadable one): nothing counts as done

    def is_done(self, output: str, key: str, exists: bool) -> bool:
        record = self.records.get(output)
        return exists and record is not None and record.state == "done" and record.key == key

    def state(self, output: str, key: str, exists: bool) -> str:
        """done | failed | pending: a record for another key (a changed input or setting) counts as pending."""
        if self.is_done(output, key, exists):
            return "done"
        record = self.records.get(output)
        return "failed" if record is not None and record.state == "failed" and record.key == key else "pending"

    def adopt(self, out_dir: Path, wanted: list[tuple[str, str, str]]) -> list[str]:
        """Move outputs made under an earlier naming rule to the names they have now.

        `wanted` holds (output, source, key) for every output planned. A done
        record of the same source and key under a name that nothing planned
        takes is the same render: its file (unless one is at the new name
        already) and its record move there. Returns the old names.
        """
        planned = {rel for rel, _, _ in wanted}
        old = {(r.source, r.key): rel for rel, r in self.records.items() if r.state == "done" and rel not in planned}
        moved = []
        for rel, source, key in wanted:
            if (was := old.get((source, key))) is None or (rel in self.records and self.records[rel].key == key):
                continue
            src, dst = out_dir / was, out_dir / rel
            if not src.exists() and not dst.exists():
                continue
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
            self.records[rel] = replace(self.records.pop(was), output=rel)
            moved.append(was)
        return moved

    def put(self, record: Record) -> None:
        self.records[record.output] = record

    def save(self, at_most_every: float = 0.0) -> None:
        """Write the manifest atomically; skipped when the last write is less than `at_most_every` s old.

        A long clip on many workers finishes frames faster than its manifest
        (thousands of records) can be rewritten; a run that is killed loses
        at most that many seconds of records, whose jobs a rerun redoes.
        """
        now = time.monotonic()
        if now - self._saved < at_most_every:
            return
        self._saved = now
        payload = {"version": 1, "jobs": {k: asdict(v) for k, v in sorted(self.records.items())}}
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
