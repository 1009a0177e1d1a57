"""Sources × styles to Jobs, each with an output path and a content key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config, StyleConfig
from pipeline.discover import Source
from pipeline.keys import file_digest, value_digest
from pipeline.model import weights_identity


@dataclass(frozen=True)
class Job:
    """One output to make. `key` changes whenever anything that changes its pixels does."""

    source: Source
    style: StyleConfig
    output: Path
    key: str

    @property
    def name(self) -> str:
        return f"{self.source.relative} × {self.style.name}"


def output_path(source: Source, style: str, out_dir: Path, fmt: str, full_name: bool = False) -> Path:
    """`<relative dir>/<stem>.<style>.<ext>` under `out_dir`; `fmt` same keeps the input's suffix.

    `full_name` keeps the input's suffix in the name (`a.jpg.<style>.png`), for
    inputs whose stems clash.
    """
    rel = source.relative
    suffix = rel.suffix.lower() if fmt == "same" else f".{fmt}"
    stem = rel.name if full_name else rel.stem
    return out_dir / rel.parent / f"{stem}.{style}{suffix}"


def pixel_settings(config: Config) -> dict:
    """Every setting that changes an output's pixels (paths replaced by their bytes' digests)."""
    optimize = config.optimize.model_dump(mode="json")
    if config.optimize.init_path is not None:
        optimize["init"] = file_digest(config.optimize.init_path)
    return {
        "optimize": optimize,
        "pooling": config.model.pooling,
        "weights": weights_identity(config.model.weights),
    }


def _digest_or_unreadable(path: Path) -> str:
    """The content digest; an unreadable file still gets a job, which then fails with the reason."""
    try:
        return file_digest(path)
    except OSError:
        return "unreadable"


def plan(config: Config, sources: list[Source]) -> list[Job]:
    """One job per source and style, in source order."""
    settings = pixel_settings(config)
    styles = [
        (style, [(file_digest(p), w) for p, w in style.blend]) for style in config.styles
    ]
    jobs: list[Job] = []
    taken: set[Path] = set()
    for source in sources:
        content = _digest_or_unreadable(source.path)
        for style, style_digest in styles:
            out = output_path(source, style.name, config.output.dir, config.output.format)
            if out in taken:  # photo.jpg and photo.png in one folder
                out = output_path(source, style.name, config.output.dir, config.output.format, full_name=True)
            taken.add(out)
            key = value_digest({"content": content, "style": style_digest, "settings": settings, "format": out.suffix})
            jobs.append(Job(source=source, style=style, output=out, key=key))
    return jobs

