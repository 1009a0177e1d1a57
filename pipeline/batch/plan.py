"""Sources × styles to Jobs (one per output image or frame) and the videos and animations to reassemble."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

from pipeline.batch.config import Config, StyleConfig, VideoConfig
from pipeline.batch.discover import Source
from pipeline.batch.manifest import Manifest
from pipeline.core.vgg import pooling_identity
from pipeline.media.animation import AnimationError, AnimationInfo
from pipeline.media.animation import probe as probe_animation
from pipeline.media.digest import file_digest, value_digest
from pipeline.media.images import NAME_MAX, WRITABLE, converted_space, image_digest, output_bits
from pipeline.media.video import VideoError, VideoInfo, probe
from pipeline.media.weights import weights_identity


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
class Clip:
    """The frames of one video or sequence × style, in order: what temporal consistency is measured on."""

    source: Source
    frames: tuple[Job, ...]
    output: Path  # the frame folder; its manifest record carries the measurements

    @property
    def name(self) -> str:
        return f"{self.source.relative} × {self.frames[0].style.name}"

    @property
    def key(self) -> str:
        """Changes whenever any frame's key does."""
        return value_digest([j.key for j in self.frames])


@dataclass(frozen=True)
class VideoOut:
    """A stylised video, assembled from its clip's frames once all of them are done."""

    clip: Clip
    output: Path
    fps: Fraction
    key: str

    @property
    def name(self) -> str:
        return f"{self.clip.name} (video)"


@dataclass(frozen=True)
class AnimationOut(VideoOut):
    """A stylised animated GIF or WebP (by its output's suffix), with its source's frame durations and loop
    count; `fps` is the average rate."""

    durations: tuple[int, ...] = ()  # milliseconds, per frame
    loop: int | None = None  # None: the source has no loop count

    @property
    def name(self) -> str:
        return f"{self.clip.name} (animation)"


@dataclass(frozen=True)
class ChainFrame:
    """One frame of a Segment: the job it renders and where this segment writes it."""

    job: Job
    path: Path  # job.output for the segment's own frames; a version in the cache for cross-faded ones
    key: str  # the chain's key at this frame: it depends on every earlier frame of the segment

    @property
    def own(self) -> bool:
        """Whether this segment writes the frame's output (else a version to cross-fade)."""
        return self.path == self.job.output


@dataclass(frozen=True)
class Segment:
    """Consecutive frames of one clip × style, rendered in order by one worker, each from the one before."""

    frames: tuple[ChainFrame, ...]


@dataclass(frozen=True)
class Seam:
    """A frame two segments both render; its output cross-fades the two versions."""

    job: Job
    earlier: Path  # the earlier segment's version
    later: Path  # the later segment's version
    weight: float  # of the later version


@dataclass(frozen=True)
class Plan:
    jobs: list[Job]
    videos: list[VideoOut]
    segments: list[Segment] = field(default_factory=list)
    seams: list[Seam] = field(default_factory=list)
    clips: list[Clip] = field(default_factory=list)
    rejected: list[tuple[Source, str]] = field(default_factory=list)  # inputs whose outputs would clash, and why

    def chained(self) -> set[Path]:
        """Outputs of the jobs that segments (and seams) render, not single-job tasks."""
        return {f.job.output for s in self.segments for f in s.frames} | {s.job.output for s in self.seams}


def _safe(rel: Path) -> Path:
    """`rel` with control characters (a newline in a file name) replaced by `_`, so that output names
    stay one line in logs; `rel` is relative to its source's root, so it holds no `..` and no root."""
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"{rel}: not a path inside the input folder")
    return Path(*(re.sub(r"[\x00-\x1f\x7f]", "_", part) for part in rel.parts))


def fit_name(name: str, tail: str) -> str:
    """`name + tail`, or, when that passes NAME_MAX bytes, `name` cut short and marked with a hash of
    all of it (`<start>~<hash>`), so that the name stays unique."""
    whole = name + tail
    if len(whole.encode()) <= NAME_MAX:
        return whole
    mark = "~" + hashlib.sha256(whole.encode()).hexdigest()[:12]
    room = max(NAME_MAX - len((mark + tail).encode()), 1)
    return name.encode()[:room].decode(errors="ignore") + mark + tail


def _short(source: Source, ext: str) -> bool:
    """Whether the output drops the input's suffix: only when the suffix is the output's extension exactly
    (`a.png` as png); `a.jpg` keeps it (`a.jpg.<style>.png`), so that no two inputs share an output."""
    return source.kind == "sequence" or source.relative.suffix == ext


def _image_ext(path: Path, fmt: str) -> str:
    """An image output's extension: `.<fmt>`, or with `same` the input's suffix in lower case where images
    are written in it (a still GIF's output is PNG)."""
    ext = path.suffix.lower() if fmt == "same" else f".{fmt}"
    return ext if ext in WRITABLE else ".png"


def output_path(source: Source, style: str, out_dir: Path, fmt: str) -> Path:
    """`<relative dir>/<stem>.<style>.<ext>` under `out_dir` when the input's suffix is `ext`, else
    `<relative dir>/<name>.<style>.<ext>`; `fmt` same keeps the input's suffix (in lower case)."""
    rel = _safe(source.relative)
    ext = _image_ext(rel, fmt)
    return out_dir / rel.parent / fit_name(rel.stem if _short(source, ext) else rel.name, f".{style}{ext}")


def _assembled_ext(source: Source) -> str:
    """The extension of a clip's assembled file: `.mp4` for a video, an animation's own suffix (lower case)."""
    return source.relative.suffix.lower() if source.kind == "animation" else ".mp4"


def frame_folder(source: Source, style: str, out_dir: Path) -> Path:
    """`clip.mp4` and a sequence folder `shot010` become `clip.<style>/` and `shot010.<style>/`; a video of
    another container and an animation keep their suffix (`clip.mov.<style>/`, `loop.gif.<style>/`), so
    that `loop.gif` beside `loop.webp` or `loop.mp4` never shares a folder."""
    rel = _safe(source.relative)
    stem = rel.stem if _short(source, ".mp4") else rel.name
    return out_dir / rel.parent / fit_name(stem, f".{style}")


def video_output(source: Source, style: str, out_dir: Path) -> Path:
    """`clip.mp4` becomes `clip.<style>.mp4`, `loop.gif` `loop.gif.<style>.gif`, beside its frame folder."""
    return Path(f"{frame_folder(source, style, out_dir)}{_assembled_ext(source)}")


def video_frames_dir(cache_dir: Path, video_digest: str) -> Path:
    """Where a video's decoded frames live (shared by every style and run)."""
    return cache_dir / "frames" / video_digest


def pixel_settings(config: Config) -> dict:
    """Every setting that changes an output's pixels (paths replaced by their bytes' digests)."""
    # A batch's images equal their own runs; a tiled result is the same job as an untiled one (see tile in docs/config.md).
    optimize = config.optimize.model_dump(mode="json", exclude={"batch", "tile"})
    # Settings added since keys were first made join them only where they change pixels: earlier jobs stay done.
    if optimize["style_loss"] == "gram":
        del optimize["style_loss"]
    if optimize["tolerance"] == 0:  # off: the window changes nothing either
        del optimize["tolerance"], optimize["tolerance_window"]
    if config.optimize.init_path is not None:
        optimize["init"] = file_digest(config.optimize.init_path)
    return {
        "optimize": optimize,
        "pooling": pooling_identity(config.model.pooling),
        "alpha": config.output.alpha,
        "size": config.output.size,
        "weights": weights_identity(config.model.weights, config.model.arch),
    }


def _style_digest(style: StyleConfig) -> list:
    """The style part of its jobs' keys: its images' digests and blend weights, and its scale unless 1 (the
    keys of jobs done before there was a scale)."""
    digest: list = [(image_digest(p), w) for p, w in style.blend]
    return digest if style.scale == 1.0 else [*digest, ("scale", style.scale)]


def _digest_or_unreadable(path: Path) -> str:
    """The content digest; an unreadable file still gets a job, which then fails with the reason."""
    try:
        return file_digest(path)
    except OSError:
        return "unreadable"


def split_segments(
    frames: tuple[Job, ...], video: VideoConfig, cache_dir: Path
) -> tuple[tuple[Job, ...], list[Segment], list[Seam]]:
    """Split a clip's frame jobs into segments of `video.segment_frames`, each starting `segment_overlap`
    frames early; those frames become Seams that cross-fade the two segments' versions.

    Returns the frames with chain keys (a frame's key covers every frame its segment rendered before it),
    the segments and the seams.
    """
    n, size, overlap = len(frames), video.segment_frames, video.segment_overlap
    temporal = video.model_dump(mode="json", exclude={"measure", "reassemble"})
    starts = list(range(0, n, size))
    renders: list[list[tuple[int, str]]] = []  # per segment: (frame index, split_segments key)
    for start in starts:
        begin = max(0, start - overlap)
        key = value_digest({"temporal": temporal, "begins": frames[begin].key})
        renders.append([])
        for i in range(begin, min(n, start + size)):
            key = value_digest({"previous": key, "frame": frames[i].key})
            renders[-1].append((i, key))
    seam_parts: dict[int, list[str]] = {}
    for seg in renders:
        for i, key in seg:
            seam_parts.setdefault(i, []).append(key)
    seam_dir = cache_dir / "seams"
    final, seams = list(frames), []
    for i, keys in seam_parts.items():
        if len(keys) == 1:
            final[i] = replace(frames[i], key=keys[0])
            continue
        start = next(s for s in starts if s > i)  # two segments render frame i: a seam
        weight = (i - (start - overlap) + 1) / (overlap + 1)
        final[i] = replace(frames[i], key=value_digest({"seam": keys, "weight": weight}))
        seams.append(Seam(final[i], seam_dir / f"{keys[0]}.png", seam_dir / f"{keys[1]}.png", weight))
    segments = [
        Segment(
            tuple(
                ChainFrame(final[i], final[i].output if len(seam_parts[i]) == 1 else seam_dir / f"{key}.png", key)
                for i, key in seg
            )
        )
        for seg in renders
    ]
    return tuple(final), segments, seams


class _Planner:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = pixel_settings(config)
        self.styles = [(s, _style_digest(s)) for s in config.styles]
        self.segments: list[Segment] = []
        self.seams: list[Seam] = []
        self.clips: list[Clip] = []

    def _clip(self, source: Source, frames: tuple[Job, ...], folder: Path) -> Clip:
        """Chain a clip's frames when temporal and note it for measurement."""
        video = self.config.video
        if video.temporal and len(frames) > 1:
            chained: list[Job] = []
            bounds = [0, *source.gaps, len(frames)]  # the chain restarts after each gap of a sequence
            for begin, end in zip(bounds, bounds[1:]):
                part, segments, seams = split_segments(frames[begin:end], video, self.config.cache_dir)
                chained += part
                self.segments += segments
                self.seams += seams
            frames = tuple(chained)
        clip = Clip(source, frames, folder)
        if video.measure and len(frames) > 1:
            self.clips.append(clip)
        return clip

    def _key(self, content: object, style_digest: list, output: Path, source: Path) -> str:
        """The job key; a 16-bit output's holds its depth, and an ICC-tagged input's the colour space it is
        converted from (and output.color: source), so that the keys of jobs made before either stay."""
        parts = {"content": content, "style": style_digest, "settings": self.settings, "format": output.suffix}
        bits = output_bits(source, output, self.config.output.depth)
        if bits is None or bits > 8:
            parts["bits"] = bits if bits is not None else str(self.config.output.depth)  # a plate's: output.depth
        if space := converted_space(source, self.config.color.scene()):  # (jobs made before there was colour stay)
            parts["color"] = space if self.config.output.color == "srgb" else [space, "source"]
        return value_digest(parts)

    def image(self, source: Source) -> list[Job]:
        cfg = self.config.output
        content = _digest_or_unreadable(source.path)
        jobs = []
        for style, style_digest in self.styles:
            out = output_path(source, style.name, cfg.dir, cfg.format)
            jobs.append(Job(source, style, source.path, out, self._key(content, style_digest, out, source.path)))
        return jobs

    def sequence(self, source: Source) -> list[Job]:
        fmt = self.config.output.format
        digests = [_digest_or_unreadable(f) for f in source.frames]
        jobs = []
        for style, style_digest in self.styles:
            folder = frame_folder(source, style.name, self.config.output.dir)
            frames = []
            for frame, digest in zip(source.frames, digests):
                same = fmt == "same" and frame.suffix.lower() in WRITABLE  # the frame's own name
                out = folder / (frame.name if same else fit_name(frame.stem, _image_ext(frame, fmt)))
                frames.append(Job(source, style, frame, out, self._key(digest, style_digest, out, frame)))
            jobs.extend(self._clip(source, tuple(frames), folder).frames)
        return jobs

    def _unreadable(self, source: Source, error: str) -> list[Job]:
        """One failing job per style, at the assembled file's place, for a clip whose file cannot be read."""
        out = self.config.output.dir
        return [
            Job(source, style, source.path, video_output(source, style.name, out), key="unreadable", error=error)
            for style, _ in self.styles
        ]

    def _frames(self, source: Source, style: StyleConfig, style_digest: list, digest: str, count: int) -> Clip:
        """The clip of a decoded video's or animation's `count` frames in one style (frames decoded to
        `cache_dir/frames/<digest>/`, outputs in its frame folder)."""
        cfg = self.config
        suffix = ".png" if cfg.output.format == "same" else f".{cfg.output.format}"
        frames_dir = video_frames_dir(cfg.cache_dir, digest)
        folder = frame_folder(source, style.name, cfg.output.dir)
        jobs = tuple(
            Job(source, style, frame, out, self._key((digest, i), style_digest, out, frame))
            for i in range(1, count + 1)
            for frame, out in [(frames_dir / f"frame_{i:06d}.png", folder / f"frame_{i:06d}{suffix}")]
        )
        return self._clip(source, jobs, folder)

    def video(self, source: Source) -> tuple[list[Job], list[VideoOut]]:
        """Frame jobs for a video or an animated GIF or WebP, and the files to assemble from them."""
        animated = source.kind == "animation"
        try:
            info = probe_animation(source.path) if animated else probe(source.path)
            digest = file_digest(source.path)
        except (VideoError, AnimationError, OSError) as exc:
            what = "animated image" if animated else "video"
            error = f"{source.path}: cannot read {what} ({exc.strerror})" if isinstance(exc, OSError) else str(exc)
            return self._unreadable(source, error), []
        jobs: list[Job] = []
        videos: list[VideoOut] = []
        for style, style_digest in self.styles:
            clip = self._frames(source, style, style_digest, digest, info.frames)
            jobs.extend(clip.frames)
            out = video_output(source, style.name, self.config.output.dir)
            if isinstance(info, VideoInfo) and info.claimed:  # the stream breaks: frames stylised, video failed
                error = (
                    f"{source.path}: the video stream breaks after frame {info.frames} of {info.claimed}; "
                    f"those frames are stylised in {clip.output}, no video is assembled"
                )
                jobs.append(Job(source, style, source.path, out, key="broken", error=error))
            elif self.config.video.reassemble:
                videos.append(_assembled(clip, out, info, digest))
        return jobs, videos


def _assembled(clip: Clip, out: Path, info: VideoInfo | AnimationInfo, digest: str) -> VideoOut:
    """The video, or animated image, to write at `out` once the clip's frames are done."""
    frames = [j.key for j in clip.frames]
    if isinstance(info, AnimationInfo):
        key = value_digest({"frames": frames, "durations": info.durations, "loop": info.loop})
        return AnimationOut(clip, out, info.fps, key, info.durations, info.loop)
    return VideoOut(clip, out, info.fps, value_digest({"frames": frames, "fps": str(info.fps), "audio": digest}))


def _claims(config: Config, source: Source) -> set[Path]:
    """The paths a source's outputs take: its images, or its frame folders and videos (or animated files)."""
    out, fmt = config.output.dir, config.output.format
    if source.kind == "image":
        return {output_path(source, s.name, out, fmt) for s in config.styles}
    folders = {frame_folder(source, s.name, out) for s in config.styles}
    assembled = source.kind in ("video", "animation")
    return folders | ({video_output(source, s.name, out) for s in config.styles} if assembled else set())


def _keeps_name(config: Config, source: Source) -> bool:
    """Whether the source's outputs drop its suffix (see `_short`)."""
    fmt = config.output.format
    return _short(source, _image_ext(source.relative, fmt) if source.kind == "image" else ".mp4")


def clashes(config: Config, sources: list[Source]) -> dict[Source, str]:
    """The sources whose outputs would land on another's (the same path, or inside its frame folder), with
    the reason. Of two, one that keeps its own name (`b.png` as `b.<style>.png`) keeps it and the other,
    which carries its suffix (`b.jpg.png` beside `b.jpg`), fails; where neither or both do, both fail."""
    owners: dict[Path, list[Source]] = defaultdict(list)
    for source in sources:
        for path in _claims(config, source):
            owners[path].append(source)
    rejected: dict[Source, str] = {}
    for path, claimants in owners.items():
        rivals = set(claimants) | {other for p in path.parents if p in owners for other in owners[p]}
        if len(rivals) < 2:
            continue
        keepers = [s for s in rivals if _keeps_name(config, s)]
        for source in rivals - set(keepers if len(keepers) == 1 else []):
            others = ", ".join(sorted(str(o.path) for o in rivals if o != source))
            rejected[source] = (
                f"{source.path}: its output {path.relative_to(config.output.dir)} would also be "
                f"written for {others}; rename one of them"
            )
    return rejected


def plan(config: Config, sources: list[Source]) -> Plan:
    """Jobs for every source and style, in source order, and the videos and animations to reassemble; sources whose
    outputs would clash get no jobs (see `clashes`)."""
    planner = _Planner(config)
    rejected = clashes(config, sources)
    jobs: list[Job] = []
    videos: list[VideoOut] = []
    for source in sources:
        if source in rejected:
            continue
        if source.kind in ("video", "animation"):
            more, vids = planner.video(source)
            jobs.extend(more)
            videos.extend(vids)
        elif source.kind == "sequence":
            jobs.extend(planner.sequence(source))
        else:
            jobs.extend(planner.image(source))
    return Plan(jobs, videos, planner.segments, planner.seams, planner.clips, list(rejected.items()))


def relative_output(job: Job | VideoOut | Clip, out_dir: Path) -> str:
    """Where `job`'s output lies in `out_dir`, as the manifest names it."""
    return job.output.relative_to(out_dir).as_posix()


def is_done(job: Job | VideoOut | Clip, manifest: Manifest, out_dir: Path) -> bool:
    """Done when the output exists and its manifest record has the same key."""
    return manifest.is_done(relative_output(job, out_dir), job.key, job.output.exists())
