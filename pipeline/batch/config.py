"""YAML config to validated settings.

Every error is one line naming the file, the key path and the problem; an
unknown key comes with the nearest valid one. Relative paths resolve against
the config file's folder.
"""

from __future__ import annotations

import collections.abc
import difflib
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline.batch.frames import PatternError, frame_range, is_pattern
from pipeline.core.optimize import Settings
from pipeline.media.images import probe_writable
from pipeline.media.scene import BUILTIN, SceneColor, SceneError


class ConfigError(ValueError):
    """A config cannot be used; the message is one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StyleConfig(_Strict):
    """One named style: several images are blended by their weights."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="used in output names: letters, digits, _ . -"
    )
    images: list[Path] = Field(min_length=1, description="style image files; several are blended")
    weights: list[float] | None = Field(default=None, description="blend weights, one per image (default equal)")
    scale: float = Field(
        default=1.0,
        ge=0.1,
        le=4.0,
        description="the style images' size relative to the output's (neural-style's -style_scale): at each level they are rescaled to scale² times its pixel area, so 2 doubles their side and the size of their strokes in the result",
    )

    @model_validator(mode="after")
    def _weights_match(self) -> StyleConfig:
        if self.weights is not None:
            if len(self.weights) != len(self.images):
                raise ValueError(f"weights has {len(self.weights)} entries for {len(self.images)} images")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights must be non-negative with a positive sum")
        return self

    @property
    def blend(self) -> list[tuple[Path, float]]:
        weights = self.weights or [1.0] * len(self.images)
        return list(zip(self.images, weights))


class OutputConfig(_Strict):
    dir: Path = Field(description="output folder; images mirror the input tree as {rel dir}/{stem}.{style}.{ext}")
    format: Literal["png", "jpg", "same"] = Field(
        default="png",
        description="png | jpg | same (the input's format; video and animation frames and a still GIF's output are png)",
    )
    alpha: Literal["keep", "drop"] = Field(
        default="keep",
        description="keep | drop: an input's transparency, resized, goes into PNG, WebP and TIFF outputs (JPEG has none); the optimiser works on RGB",
    )
    depth: Literal["same", 8, 16, "half", "float"] = Field(
        default="same",
        description="same | 8 | 16 | half | float: samples of image outputs; same keeps each input's (EXR half or float, DPX 10-bit, PNG and TIFF 16-bit, float TIFF), else 8. PNG and TIFF hold 8 and 16 (half: 16), TIFF also float; EXR half and float (8, 16: half); DPX 8, 10 and 16 (half, float: 16); JPEG and WebP stay 8-bit, with a warning",
    )
    color: Literal["srgb", "source"] = Field(
        default="srgb",
        description="srgb | source: the colour space of 8-bit image outputs. Inputs with an embedded ICC profile are converted into sRGB to be stylised; srgb writes every output in sRGB, tagged so; source converts each output back into its input's RGB profile and embeds it (untagged, sRGB, grey and CMYK inputs stay sRGB)",
    )
    size: Literal["optimize", "original"] = Field(
        default="optimize",
        description="optimize (the longest side is optimize.size) | original: each output at its source's own resolution, videos and frame sequences too; above optimize.size the result is refined at full resolution, level by level (see optimize.refine_iterations), in tiles where it does not fit",
    )


class ColorConfig(_Strict):
    """Scene-linear plates (EXR) through OpenColorIO: see docs/plates-and-colour.md."""

    config: str = Field(
        default="",
        description=f"an OCIO config: a file, an ocio:// URI or a built-in config's name; empty: $OCIO, else the built-in {BUILTIN}",
    )
    input: str = Field(default="scene_linear", description="the colour space (or role) of EXR inputs, in that config")
    output: str = Field(default="", description="the colour space EXR outputs are written in; empty: color.input's")

    def scene(self) -> SceneColor:
        return SceneColor(self.config, self.input, self.output)


class OptimizeConfig(_Strict):
    size: int = Field(default=Settings.size, ge=32, le=8192, description="longest side of the output, px")
    scales: Annotated[int, Field(ge=1, le=6)] = Field(
        default=Settings.scales,
        description="coarse-to-fine levels, each twice the previous; levels under 64 px are dropped",
    )
    iterations: int = Field(default=Settings.iterations, ge=1, le=100_000, description="iterations at the finest scale")
    coarse_iterations: float = Field(
        default=Settings.coarse_iterations,
        gt=0,
        le=8,
        description="each coarser level runs this many times the iterations of the next finer one",
    )
    refine_iterations: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="with output.size: original, iterations at each level above size (each doubles the last, up to the source's own size); null: a quarter of iterations",
    )
    tolerance: float = Field(
        default=Settings.tolerance,
        ge=0,
        lt=1,
        description="early stop: a level ends once its total loss has changed by less than this fraction of it over the last tolerance_window iterations (as artistic-videos does); 0: off, every level runs its iterations. Needs batch: 1",
    )
    tolerance_window: int = Field(
        default=Settings.tolerance_window, ge=1, le=10_000, description="iterations the tolerance looks back over"
    )
    tile: Literal["auto", "off"] | Annotated[int, Field(ge=64, le=16384)] = Field(
        default="auto",
        description="auto: a level too large for the device's free memory (measured when the job starts) is encoded in tiles sized to fit, with the same loss and gradient as whole | off: never tile (too large fails the job) | N: tiles of at most N px (256 or more keeps the gradient within 0.2 %). Not part of job keys",
    )
    optimizer: Literal["lbfgs", "adam"] = Field(default=Settings.optimizer, description="lbfgs | adam")
    history: int = Field(
        default=Settings.history,
        ge=1,
        le=200,
        description="L-BFGS: the (s, y) pairs kept, each two image-sized float32 vectors that every iteration reads twice (a tiled image may keep fewer)",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="auto | fp32 | bf16 | fp16: the precision of the VGG layers; losses are fp32, Grams too (those of bf16 layers multiply the bf16 features, accumulating in fp32), and fp16 runs its backward pass through a dynamic loss scale. auto: bf16 on CPUs with AVX-512 BF16 or AMX and on CUDA devices that support it, else fp32 (the manifest records which)",
    )
    batch: int = Field(
        default=1,
        ge=1,
        le=256,
        description="optimise up to this many same-size images together (optimizer adam only; for GPUs, where one small image leaves the device idle)",
    )
    learning_rate: float = Field(default=Settings.learning_rate, gt=0, description="Adam step size (image in [0, 1])")
    content_weight: float = Field(default=Settings.content_weight, ge=0, description="weight of the content term")
    style_weight: float = Field(default=Settings.style_weight, ge=0, description="weight of the style term")
    tv_weight: float = Field(default=Settings.tv_weight, ge=0, description="total variation weight")
    style_loss: Literal["gram", "wasserstein"] = Field(
        default=Settings.style_loss,
        description="gram (relative Gram matrix error) | wasserstein (the 2-Wasserstein distance between Gaussian fits of each style layer's features, relative to the style's; see The losses)",
    )
    style_balance: Literal["total", "layer"] = Field(
        default=Settings.style_balance,
        description="how the Gram style loss weighs its layers: total (neural-style's balance: the summed Gram error, Grams over C·H·W, relative to the style's; layers count by the size of their activations) | layer (each layer's relative error counts alike, the balance before 0.2)",
    )
    content_layers: list[str] = Field(
        default=list(Settings.content_layers), min_length=1, description="VGG-19 layers of the content term"
    )
    style_layers: dict[str, float] = Field(
        default_factory=lambda: dict(Settings().style_layers),
        min_length=1,
        description="VGG-19 layer: weight, for the style term",
    )
    init: str = Field(default="content", description="content | noise | style | PATH to an image")
    preserve_colors: bool = Field(default=False, description="luminance-only transfer: keep the content's colours")
    seed: int = Field(default=0, ge=0, description="random seed (noise init); results are deterministic on the CPU")

    @field_validator("content_layers", "style_layers")
    @classmethod
    def _known_layers(cls, value: Any) -> Any:
        """Layers of VGG-19, whose names hold VGG-16's (model.arch is checked against them in Config)."""
        from pipeline.core.vgg import layer_error

        error = layer_error(value)
        if error:
            raise ValueError(error)
        return value

    @model_validator(mode="after")
    def _batch_needs_adam(self) -> OptimizeConfig:
        if self.batch > 1 and self.optimizer != "adam":
            raise ValueError(f"batch {self.batch} needs optimizer: adam (L-BFGS would couple the batch's images)")
        if self.batch > 1 and self.tolerance > 0:
            raise ValueError(
                f"batch {self.batch} needs tolerance: 0 (a batch would stop on its summed loss, "
                "so an image's result would depend on the others)"
            )
        return self

    def settings(self) -> Settings:
        """The core's settings for this section (an init path becomes init 'image'; precision is the model's)."""
        data = self.model_dump(exclude={"batch", "tile", "precision"})
        data["content_layers"] = tuple(data["content_layers"])
        if data["init"] not in ("content", "noise", "style"):
            data["init"] = "image"
        return Settings(**data)

    @property
    def init_path(self) -> Path | None:
        return None if self.init in ("content", "noise", "style") else Path(self.init)


class ModelConfig(_Strict):
    arch: Literal["vgg19", "vgg16"] = Field(
        default="vgg19",
        description="vgg19 | vgg16 (the bundled weights are VGG-19 only: vgg16 takes torchvision's or a file)",
    )
    weights: str = Field(default="bundled", description="bundled | torchvision | PATH to a .pth state dict")
    pooling: Literal["max", "avg"] = Field(
        default="max", description="max | avg (average pooling, rescaled to keep max pooling's activation scale)"
    )


class VideoConfig(_Strict):
    temporal: bool = Field(
        default=True,
        description="temporal consistency for videos and frame sequences: each frame starts from the previous stylised frame warped by optical flow, with a temporal loss",
    )
    temporal_weight: float = Field(
        default=50.0,
        ge=0,
        description="weight of the temporal loss (mean squared difference to the warped previous frame, [0, 1] RGB, where the flow is reliable)",
    )
    long_term: list[Annotated[int, Field(ge=2, le=64)]] = Field(
        default=[],
        description="earlier frames also held by the temporal loss besides t-1, e.g. [2, 4] (Ruder et al.'s long-term consistency)",
    )
    iterations_after_first: int | None = Field(
        default=None,
        ge=1,
        description="iterations for each frame after the first of a shot (one scale, warped init); null: a quarter of optimize.iterations",
    )
    flow: Literal["dis", "farneback"] = Field(
        default="dis", description="optical flow: OpenCV DIS (fast, accurate) or Farneback"
    )
    segment_frames: int = Field(
        default=100, ge=2, description="frames per segment: segments render in parallel, each a sequential chain"
    )
    segment_overlap: int = Field(
        default=8,
        ge=0,
        description="frames each segment renders before its start and cross-fades with the previous segment, so no seam shows",
    )
    measure: bool = Field(
        default=True,
        description="record the warp error of each stylised clip (and of its content, the floor) in the manifest",
    )
    reassemble: bool = Field(default=True, description="write {clip}.{style}.mp4 once every frame of a video is done")

    def after_first(self, iterations: int) -> int:
        """Iterations for frames that follow an earlier stylised frame."""
        return self.iterations_after_first or max(1, round(iterations / 4))

    @model_validator(mode="after")
    def _overlap_fits(self) -> VideoConfig:
        if self.segment_overlap >= self.segment_frames:
            raise ValueError(
                f"segment_overlap ({self.segment_overlap}) must be below segment_frames ({self.segment_frames})"
            )
        return self


class InputEntry(_Strict):
    """A frame pattern with its frame range apart."""

    path: str = Field(description="a frame pattern: plate.####.png, plate.%04d.png (see docs/plates-and-colour.md)")
    frames: str = Field(description="its frames, in fileseq's syntax: 1001-1100, 1001-1100x2, 1001-1010,1020-1030")

    @model_validator(mode="after")
    def _a_pattern_and_a_range(self) -> InputEntry:
        if not is_pattern(self.path):
            raise ValueError(f"{self.path}: frames needs a frame pattern in the file name (#, @, %04d or $F4)")
        try:
            frame_range(self.frames)
        except PatternError as exc:
            raise ValueError(str(exc)) from None
        return self


_INPUT_KIND = Discriminator(lambda v: "file" if isinstance(v, str) else "pattern")  # a mapping is a pattern and range


class Config(_Strict):
    """The whole batch config."""

    inputs: list[Annotated[Annotated[str, Tag("file")] | Annotated[InputEntry, Tag("pattern")], _INPUT_KIND]] = Field(
        min_length=1,
        description="image files, video files, folders (recursive; numbered frame folders become sequences), globs, frame patterns (plate.####.png, plate.1001-1100#.png) and {path: pattern, frames: range}",
    )
    styles: list[StyleConfig] = Field(min_length=1, description="one or more named styles")
    output: OutputConfig
    color: ColorConfig = ColorConfig()
    optimize: OptimizeConfig = OptimizeConfig()
    model: ModelConfig = ModelConfig()
    video: VideoConfig = VideoConfig()
    devices: Literal["auto", "cpu"] | list[Annotated[str, Field(pattern=r"^(cpu|cuda:\d+)$")]] = Field(
        default="auto", description="auto (every GPU, else the CPU) | cpu | [cuda:0, cuda:1]"
    )
    workers_per_device: int = Field(default=1, ge=1, le=64, description="worker processes per device")
    executor: Literal["local", "dask"] = Field(
        default="local",
        description="local (worker processes on this machine) | dask (a Dask distributed cluster: see Render farm)",
    )
    scheduler: str | None = Field(
        default=None,
        validate_default=True,
        description="with executor: dask: local (a LocalCluster on this machine, one worker process per device slot) | tcp://host:port of a running dask scheduler",
    )
    cache_dir: Path = Field(
        default=Path("~/.cache/stylize"), description="style Gram cache and decoded video frames, shared by runs"
    )

    @field_validator("styles")
    @classmethod
    def _unique_names(cls, styles: list[StyleConfig]) -> list[StyleConfig]:
        names = [s.name for s in styles]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise ValueError(f"style name {dup!r} is used twice")
        return styles

    @field_validator("model")
    @classmethod
    def _layers_in_arch(cls, model: ModelConfig, info: ValidationInfo) -> ModelConfig:
        from pipeline.core.vgg import layer_error

        optimize = info.data.get("optimize")
        if optimize is not None:
            for key, layers in (("content_layers", optimize.content_layers), ("style_layers", optimize.style_layers)):
                error = layer_error(layers, model.arch, f"optimize.{key}")
                if error:
                    raise ValueError(f"arch {model.arch}: {error}")
        return model

    @field_validator("scheduler")
    @classmethod
    def _scheduler_address(cls, scheduler: str | None, info: ValidationInfo) -> str | None:
        if scheduler is None:
            if info.data.get("executor") == "dask":
                raise ValueError("required with executor: dask (local, or tcp://host:port of a dask scheduler)")
        elif not re.fullmatch(r"local|tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):\d{1,5}", scheduler):
            raise ValueError(f"{scheduler!r} is neither local nor tcp://host:port")
        return scheduler


def reference() -> str:
    """The config reference as a markdown table, generated from the schema (docs/config.md carries it)."""
    rows = ["| key | default | meaning |", "|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            nested = next(
                (
                    a
                    for a in getattr(field.annotation, "__args__", (field.annotation,))
                    if isinstance(a, type) and issubclass(a, BaseModel)
                ),
                None,
            )
            key = f"{prefix}{name}"
            if nested is not None:
                walk(nested, f"{key}[]." if "list" in str(field.annotation) else f"{key}.")
                continue
            if field.is_required():
                default = "required"
            else:
                value = field.get_default(call_default_factory=True)
                default = "`" + json.dumps(value, default=str) + "`" if value is not None else "`null`"
            meaning = (field.description or "").replace("|", "\\|")
            rows.append(f"| `{key}` | {default} | {meaning} |")

    walk(Config, "")
    return "\n".join(rows)


def _key_path(loc: tuple[Any, ...]) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")


def _valid_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid keys of the section that `loc` points into."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        inner = getattr(annotation, "__args__", (annotation,))
        nested = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


def _format_error(path: Path, exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = tuple(p for i, p in enumerate(err["loc"]) if not (i == 2 and err["loc"][0] == "inputs"))  # the tag
    where = _key_path(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        near = difflib.get_close_matches(str(loc[-1]), _valid_keys(Config, loc), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        return f"{path}: {where}: unknown key{hint}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{path}: {where}: {msg}"


def _resolve(base: Path, p: Path) -> Path:
    """`p` made absolute against `base`, with `..` folded (symlinks are left alone)."""
    return Path(os.path.normpath(base / p.expanduser()))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names one key twice (where YAML lets the last one win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, collections.abc.Hashable):
                continue  # the safe loader's own error names it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key]})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _read_yaml(text: str) -> object:
    """The one document in `text`, read with the safe loader that refuses duplicate keys."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_config(path: Path) -> Config:
    """Read, validate and resolve a YAML config; raise ConfigError with a one-line message."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    try:
        raw = _read_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(path, exc)) from None
    if config.executor == "dask" and importlib.util.find_spec("distributed") is None:
        raise ConfigError(f"{path}: executor: dask needs the distributed package (pip install 'stylize[dask]')")
    base = path.resolve().parent
    styles = [s.model_copy(update={"images": [_resolve(base, p) for p in s.images]}) for s in config.styles]
    for i, style in enumerate(styles):
        for j, image in enumerate(style.images):
            if not image.is_file():
                raise ConfigError(f"{path}: styles[{i}].images[{j}]: file not found: {image}")
    optimize = config.optimize
    if optimize.init_path is not None:
        init = _resolve(base, optimize.init_path)
        if not init.is_file():
            raise ConfigError(f"{path}: optimize.init: not content, noise, style or an existing file: {init}")
        optimize = optimize.model_copy(update={"init": str(init)})
    model = config.model
    if model.weights not in ("bundled", "torchvision"):
        weights = _resolve(base, Path(model.weights))
        if not weights.is_file():
            raise ConfigError(f"{path}: model.weights: not bundled, torchvision or an existing file: {weights}")
        model = model.model_copy(update={"weights": str(weights)})
    color = config.color
    if color.config and not color.config.startswith("ocio://") and Path(color.config).suffix == ".ocio":
        color = color.model_copy(update={"config": str(_resolve(base, Path(color.config)))})
    try:
        color.scene().check()
    except SceneError as exc:
        raise ConfigError(f"{path}: color: {exc}") from None
    inputs = [
        str(_resolve(base, Path(p)))
        if isinstance(p, str)
        else p.model_copy(update={"path": str(_resolve(base, Path(p.path)))})
        for p in config.inputs
    ]
    return config.model_copy(
        update={
            "inputs": inputs,
            "styles": styles,
            "optimize": optimize,
            "model": model,
            "color": color,
            "output": config.output.model_copy(update={"dir": _resolve(base, config.output.dir)}),
            "cache_dir": _resolve(base, config.cache_dir),
        }
    )


def check_output_dir(config_path: Path, config: Config) -> None:
    """Create `output.dir` and `cache_dir` and write a probe file in each; raise ConfigError naming the key
    of the one that fails (a read-only mount, say), before any work."""
    for key, folder in (("output.dir", config.output.dir), ("cache_dir", config.cache_dir)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe_writable(folder)
        except OSError as exc:
            raise ConfigError(f"{config_path}: {key}: cannot write to {folder} ({exc.strerror or exc})") from None


def check_styles(config_path: Path, config: Config) -> None:
    """Decode every style image once; raise ConfigError naming the first that cannot be read, before any
    work (else every job that uses it would fail, one by one)."""
    from pipeline.media.images import ImageError, read_image

    for i, style in enumerate(config.styles):
        for j, image in enumerate(style.images):
            try:
                read_image(image, 64)
            except (ImageError, OSError) as exc:
                raise ConfigError(f"{config_path}: styles[{i}].images[{j}]: {str(exc).splitlines()[0]}") from None
