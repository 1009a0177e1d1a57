"""Sources × styles to Jobs (one per output image or frame) and the videos to reassemble."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from pipeline.config import Config, StyleConfig
from pipeline.discover import Source
from pipeline.keys import file_digest, value_digest
from pipeline.model import weights_identity
from pipeline.video import VideoError, probe


@dataclass(frozen=True)
class Job:
    """One output image. `key` changes whenever anything that changes its pixels does.

    `content` is the image to stylise: the source itself, a frame of a
    sequence, or a frame of a video (decoded by execute before dispatch). A
    job with an `error` fails with it without running.
    """

    source: Source
    style: StyleConfig
    content: Path
    output: Path
    key: str
    error: str | None = None

    @property
    def name(self) -> str:
        frame = f" [{self.content.name}]" if self.source.kind != "image" else ""
        return f"{self.source.relative} × {self.style.name}{frame}"


@dataclass(frozen=True)
class VideoOut:
    """A stylised video, assembled from its frame jobs once all of them are done."""

    source: Source
    frames: tuple[Job, ...]
    output: Path
    fps: Fraction
    key: str

    @property
    def name(self) -> str:
        return f"{self.source.relative} × {self.frames[0].style.name} (video)"


@dataclass(frozen=True)
class Plan:
    jobs: list[Job]
    videos: list[VideoOut]


def output_path(source: Source, style: str, out_dir: Path, fmt: str, full_name: bool = False) -> Path:
    """`<relative dir>/<stem>.<style>.<ext>` under `out_dir`; `fmt` same keeps the input's suffix.

    `full_name` keeps the input's suffix in the name (`a.jpg.<style>.png`), for
    inputs whose stems clash.
    """
    rel = source.relative
    suffix = rel.suffix.lower() if fmt == "same" else f".{fmt}"
    stem = rel.name if full_name else rel.stem
    return out_dir / rel.parent / f"{stem}.{style}{suffix}"


def frame_folder(source: Source, style: str, out_dir: Path) -> Path:
    """`clip.mp4` and a sequence folder `shot010` become `clip.<style>/` and `shot010.<style>/`."""
    rel = source.relative
    stem = rel.stem if source.kind == "video" else rel.name
    return out_dir / rel.parent / f"{stem}.{style}"


def video_output(source: Source, style: str, out_dir: Path) -> Path:
    """`clip.mp4` becomes `clip.<style>.mp4`, beside its frame folder."""
    return Path(f"{frame_folder(source, style, out_dir)}.mp4")


def video_frames_dir(cache_dir: Path, video_digest: str) -> Path:
    """Where a video's decoded frames live (shared by every style and run)."""
    return cache_dir / "frames" / video_digest


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


class _Planner:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = pixel_settings(config)
        self.styles = [(s, [(file_digest(p), w) for p, w in s.blend]) for s in config.styles]
        self.taken: set[Path] = set()

    def _key(self, content: object, style_digest: list, suffix: str) -> str:
        return value_digest({"content": content, "style": style_digest, "settings": self.settings, "format": suffix})

    def image(self, source: Source) -> list[Job]:
        cfg = self.config.output
        content = _digest_or_unreadable(source.path)
        jobs = []
        for style, style_digest in self.styles:
            out = output_path(source, style.name, cfg.dir, cfg.format)
            if out in self.taken:  # photo.jpg and photo.png in one folder
                out = output_path(source, style.name, cfg.dir, cfg.format, full_name=True)
            self.taken.add(out)
            jobs.append(Job(source, style, source.path, out, self._key(content, style_digest, out.suffix)))
        return jobs

    def sequence(self, source: Source) -> list[Job]:
        fmt = self.config.output.format
        digests = [_digest_or_unreadable(f) for f in source.frames]
        jobs = []
        for style, style_digest in self.styles:
            folder = frame_folder(source, style.name, self.config.output.dir)
            for frame, digest in zip(source.frames, digests):
                out = folder / (frame.name if fmt == "same" else f"{frame.stem}.{fmt}")
                jobs.append(Job(source, style, frame, out, self._key(digest, style_digest, out.suffix)))
        return jobs

    def video(self, source: Source) -> tuple[list[Job], list[VideoOut]]:
        cfg = self.config
        suffix = ".png" if cfg.output.format == "same" else f".{cfg.output.format}"
        try:
            info = probe(source.path)
            digest = file_digest(source.path)
        except (VideoError, OSError) as exc:
            error = str(exc) if isinstance(exc, VideoError) else f"{source.path}: cannot read video ({exc.strerror})"
            jobs = [
                Job(source, style, source.path, video_output(source, style.name, cfg.output.dir),
                    key="unreadable", error=error)
                for style, _ in self.styles
            ]
            return jobs, []
        frames_dir = video_frames_dir(cfg.cache_dir, digest)
        jobs, videos = [], []
        for style, style_digest in self.styles:
            folder = frame_folder(source, style.name, cfg.output.dir)
            style_jobs = tuple(
                Job(source, style, frames_dir / f"frame_{i:06d}.png", folder / f"frame_{i:06d}{suffix}",
                    self._key((digest, i), style_digest, suffix))
                for i in range(1, info.frames + 1)
            )
            jobs.extend(style_jobs)
            if cfg.video.reassemble:
                key = value_digest({"frames": [j.key for j in style_jobs], "fps": str(info.fps), "audio": digest})
                out = video_output(source, style.name, cfg.output.dir)
                videos.append(VideoOut(source, style_jobs, out, info.fps, key))
        return jobs, videos


def plan(config: Config, sources: list[Source]) -> Plan:
    """Jobs for every source and style, in source order, and the videos to reassemble."""
    planner = _Planner(config)
    jobs: list[Job] = []
    videos: list[VideoOut] = []
    for source in sources:
        if source.kind == "video":
            more, vids = planner.video(source)
            jobs.extend(more)
            videos.extend(vids)
        elif source.kind == "sequence":
            jobs.extend(planner.sequence(source))
        else:
            jobs.extend(planner.image(source))
    return Plan(jobs, videos)
