"""One job end to end on one device: read the inputs, build style targets, optimise, write."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch

from pipeline.core.optimize import (
    Callback,
    Held,
    Progress,
    Result,
    Settings,
    levels,
    resize,
    stack_targets,
    stylize,
    tile_for,
)
from pipeline.core.packed import available as packed_convs_available
from pipeline.core.vgg import VGGFeatures
from pipeline.media.color import source_profile
from pipeline.media.images import (
    converted_space,
    input_note,
    output_bits,
    read_alpha,
    read_image,
    working_shape,
    write_image,
    write_plate_image,
)
from pipeline.media.plates import PLATE_SUFFIXES
from pipeline.media.scene import SceneColor
from pipeline.media.weights import resolve_weights
from pipeline.render.memory import check_fits, free_bytes, tile_plan
from pipeline.render.style_cache import StyleCache
from pipeline.render.styles import StyleSource

TRACE_POINTS = 24  # per scale, in a job's loss curve (it lives in the manifest: keep it small)
TraceRow = tuple[int, int, float, float, float]  # scale, iteration, loss, content, style


@dataclass(frozen=True)
class Follow:
    """A video frame that follows an earlier stylised one: one scale, warped init, temporal loss."""

    init: torch.Tensor  # the previous stylised frame warped onto this one, (1, 3, H, W)
    held: Held  # (earlier stylised frame warped onto this one, reliability mask) pairs
    iterations: int
    temporal_weight: float


@dataclass(frozen=True)
class Rendered:
    """What a finished job reports."""

    content: float
    style: float
    tv: float
    temporal: float
    loss: float
    iterations: int
    seconds: float
    device: str
    style_hits: int  # style target sets found in the cache
    style_misses: int  # style target sets encoded for this job
    style_seconds: float  # time spent getting style targets
    image: torch.Tensor  # the output, (1, 3, H, W) RGB [0, 1] on the device
    tile_side: int = 0  # the tile side of its tiled levels (0: none was tiled)
    precision: str = "fp32"  # the VGG layers' precision (see resolve_precision)
    trace: tuple[TraceRow, ...] = ()  # the loss curve, at most TRACE_POINTS per scale (see compact_trace)
    color: str | None = None  # the colour space the input was converted from into sRGB (see images.converted_space)
    note: str | None = None  # a warning for the log and the manifest (see images.input_note)


def compact_trace(trace: Sequence[Progress]) -> tuple[TraceRow, ...]:
    """At most TRACE_POINTS evenly spaced rows per scale (its first and last kept), to 4 significant digits."""

    def fig(value: float) -> float:
        return float(f"{value:.4g}")

    rows: list[TraceRow] = []
    for scale in sorted({p.scale for p in trace}):
        points = [p for p in trace if p.scale == scale]
        picks = sorted({round(i * (len(points) - 1) / (TRACE_POINTS - 1)) for i in range(TRACE_POINTS)})
        rows += [
            (p.scale, p.iteration, fig(p.loss), fig(p.content), fig(p.style)) for p in map(points.__getitem__, picks)
        ]
    return tuple(rows)


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """`precision` (auto | fp32 | bf16 | fp16) for `device`. auto is bf16 where bf16 convolutions are fast:
    CPUs with AVX-512 BF16 or AMX (a job takes about 0.6x its float32 time there; without them bf16 is
    many times slower) and CUDA devices that support bf16 natively; float32 elsewhere."""
    if precision not in ("auto", *PRECISIONS):
        raise ValueError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    if precision != "auto":
        return precision
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities()
        return "bf16" if caps.get("avx512_bf16") or caps.get("amx_bf16") else "fp32"
    if device.type == "cuda":  # this device's own capability (not the current one's): bf16 from Ampere (8.x) on
        return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp32"
    return "fp32"


def _tune_cuda(device: torch.device) -> None:
    """Make `device` this process's current CUDA device, and run convs in TF32; matmuls, hence the Grams,
    stay full float32. (cuDNN's search for its fastest conv is set per job, see `_search_convs`.)"""
    torch.cuda.set_device(device)
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = False


def _search_convs(device: torch.device, repeats: bool) -> None:
    """cuDNN searches once per input shape for its fastest conv: worth it where the shapes repeat (a job's
    few scales, a video's frames), not for tiled levels, whose edge crops change shape at every evaluation,
    nor for `output.size: original`, whose shapes are each image's own."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = repeats


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is the device or the host running out of memory."""
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(exc).lower()


def device_fault(exc: BaseException) -> bool:
    """Whether `exc` is a device error other than running out of memory: CUDA's illegal addresses, ECC and
    launch failures, a GPU fallen off the bus; after one, every later kernel of the process fails."""
    text = str(exc)
    return not out_of_memory(exc) and any(
        sign in text for sign in ("CUDA error", "CUBLAS_STATUS", "CUDNN_STATUS", "cudaError", "device-side assert")
    )


def release_memory(device: torch.device) -> None:
    """Give what a failed attempt held back to the device (call it outside the handler that caught the
    failure: the traceback keeps the attempt's tensors alive)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Renderer:
    """A worker's state: the model on its device, loaded once, and warm style targets."""

    def __init__(
        self,
        settings: Settings,
        device: str = "cpu",
        weights: str = "bundled",
        pooling: str = "max",
        arch: str = "vgg19",
        init_path: Path | None = None,
        cache: StyleCache | None = None,
        keep_alpha: bool = True,
        depth: str | int = "same",
        color: str = "srgb",
        scene: SceneColor | None = None,
        full_size: bool = False,
        tiling: int | str = "auto",
        precision: str = "auto",
        memory_share: float = 1.0,
    ) -> None:
        self.settings = settings
        self.cache = cache or StyleCache(None)
        self.device = torch.device(device)
        if self.device.type == "cuda":
            _tune_cuda(self.device)
        self.precision = resolve_precision(precision, self.device)
        resolved = resolve_weights(weights, arch)
        # cuDNN picks its own algorithms (Winograd among them) on GPUs; our Winograd layers are float32 only, and
        # in float32 packed convs lose to them and to torch's own (docs/performance.md): packed is bf16's.
        winograd = self.device.type == "cpu" and self.precision == "fp32"
        packed = self.device.type == "cpu" and not winograd and packed_convs_available(PRECISIONS[self.precision])
        self.model = VGGFeatures(resolved, settings.layers, pooling, winograd, PRECISIONS[self.precision], packed).to(
            self.device
        )
        self.init_path = init_path
        self.keep_alpha = keep_alpha  # an input's transparency goes into its output (see images.write_image)
        self.depth = depth  # output.depth: same | 8 | 16 (see images.output_bits)
        self.color = color  # output.color: srgb | source (each output back in its input's RGB profile)
        self.scene = scene or SceneColor()  # color: where EXR inputs come from and their outputs go (OCIO)
        self.full_size = full_size  # output.size: original: content is read, and its result written, at its own size
        self.tiling = tiling  # auto | off | a tile side in px (optimize.tile)
        self.memory_share = memory_share  # of the device's free memory, this worker's (workers that share it split it)
        self.styles = StyleSource(self.model, settings, self.cache, self.device)
        self.on_progress: Callable[[Path, Progress], None] | None = (
            None  # each render's progress (with its output) when it has no callback
        )

    def _write(self, image: torch.Tensor, content_path: Path, output: Path, bits: int) -> None:
        """`image` written to `output` with `bits` per sample, the content's alpha (output.alpha: keep), and, with
        output.color: source, in the content's own RGB profile."""
        if output.suffix.lower() in PLATE_SUFFIXES:
            write_plate_image(image, output, content_path, self.depth, self.scene)
            return
        alpha = read_alpha(content_path) if self.keep_alpha else None
        icc = source_profile(content_path) if self.color == "source" and bits == 8 else None
        write_image(image, output, alpha, bits, icc)

    @property
    def read_size(self) -> int | None:
        """The longest side content is read at: optimize.size, or None (its own) with output.size: original."""
        return None if self.full_size else self.settings.size

    def read_content(self, path: Path, images: int = 1) -> torch.Tensor:
        """A content image at the working size, on the device. With tiling off, on the CPU, an image (or a
        batch of `images` like it) that would not fit in RAM raises MemoryError before it is decoded."""
        if self.tiling == "off" and self.device.type == "cpu" and (shape := working_shape(path, self.read_size)):
            check_fits(shape, self.settings.optimizer, images, self.precision, self.settings.history)
        return read_image(path, self.read_size, self.scene).to(self.device)

    def _tiled(self, s: Settings, shape: tuple[int, int], images: int = 1) -> Settings:
        """`s` with this job's tile side and L-BFGS history: optimize.tile, or with auto, from the memory free now."""
        if self.tiling == "off":
            return s
        tile, history = tile_plan(
            free_bytes(self.device, self.memory_share),
            shape,
            s.optimizer,
            images,
            None if self.tiling == "auto" else int(self.tiling),
            self.precision,
            s.history,
        )
        return replace(s, tile_side=tile, history=history)

    def render(
        self,
        content_path: Path,
        blend: Sequence[tuple[Path, float]],
        output: Path,
        callback: Callback | None = None,
        follow: Follow | None = None,
        content: torch.Tensor | None = None,
        style_scale: float = 1.0,
    ) -> Rendered:
        """Stylise `content_path` with the blended styles, `style_scale` times the output's size, and write
        `output` atomically.

        `content` is the image already read by `read_content`, when the caller has it. With `tile: auto`, a
        job that runs out of memory (other processes took it meanwhile, or the estimate fell short) is tried
        once more, planned on half the memory, before it fails.
        """
        args = (content_path, blend, output, callback, follow, content, style_scale)
        try:
            return self._render(*args)
        except Exception as exc:  # noqa: BLE001  re-raised unless it is the one failure a retry can mend
            if self.tiling != "auto" or not out_of_memory(exc):
                raise
        release_memory(self.device)  # out here, the failed attempt's tensors are free
        share, self.memory_share = self.memory_share, self.memory_share / 2
        try:
            return self._render(*args)
        finally:
            self.memory_share = share

    def _render(
        self,
        content_path: Path,
        blend: Sequence[tuple[Path, float]],
        output: Path,
        callback: Callback | None,
        follow: Follow | None,
        content: torch.Tensor | None,
        style_scale: float,
    ) -> Rendered:
        start = time.perf_counter()
        s = self.settings
        if content is None:
            content = self.read_content(content_path)
        shape = tuple(content.shape[-2:])
        if follow is not None:  # one level, at the frame's own size
            s = replace(
                s,
                size=max(shape),
                scales=1,
                iterations=follow.iterations,
                init="image",
                temporal_weight=follow.temporal_weight,
            )
            init = follow.init
        else:
            init = self._init([blend], shape)
        s = self._tiled(s, shape)
        _search_convs(self.device, repeats=not s.tile_side and not self.full_size)
        targets, *counts = self.styles.counted(blend, [lv.shape for lv in levels(shape, s)], s.tile_side, style_scale)
        held = follow.held if follow is not None else ()
        if callback is None and self.on_progress is not None:
            callback = partial(self.on_progress, output)
        result = stylize(self.model, content, targets, s, init_image=init, callback=callback, held=held)
        bits = output_bits(content_path, output, self.depth)
        self._write(result.image, content_path, output, bits)
        return self._rendered(result, 0, time.perf_counter() - start, *counts, tile_for(shape, s), content_path, bits)

    def render_batch(
        self,
        contents: Sequence[Path],
        blends: Sequence[Sequence[tuple[Path, float]]],
        outputs: Sequence[Path],
        style_scales: Sequence[float] | None = None,
    ) -> list[Rendered]:
        """Stylise same-size images together as one Adam batch, each with its own styles (and style scale,
        default 1), and write each output.

        Each image's seconds are the batch's shared equally.
        """
        start = time.perf_counter()
        s = self.settings
        images = [self.read_content(p, len(contents)) for p in contents]
        shape = tuple(images[0].shape[-2:])
        if any(tuple(i.shape[-2:]) != shape for i in images):
            raise ValueError(f"a batch needs images of one size, got {sorted({tuple(i.shape[-2:]) for i in images})}")
        init = self._init(blends, shape)
        s = self._tiled(s, shape, len(images))
        _search_convs(self.device, repeats=not s.tile_side and not self.full_size)
        shapes = [lv.shape for lv in levels(shape, s)]
        counted = [
            self.styles.counted(b, shapes, s.tile_side, sc)
            for b, sc in zip(blends, style_scales or [1.0] * len(blends))
        ]
        callback = None
        if self.on_progress is not None:  # the batch's progress (its summed loss), named by its first output
            callback = partial(self.on_progress, outputs[0].with_name(f"{outputs[0].name} +{len(outputs) - 1}"))
        result = stylize(
            self.model, torch.cat(images), stack_targets([c[0] for c in counted]), s, init_image=init, callback=callback
        )
        bits = [output_bits(c, o, self.depth) for c, o in zip(contents, outputs)]
        for i, output in enumerate(outputs):
            self._write(result.image[i : i + 1], contents[i], output, bits[i])
        seconds = (time.perf_counter() - start) / len(images)
        return [
            self._rendered(result, i, seconds, *c[1:], tile_for(shape, s), contents[i], bits[i])
            for i, c in enumerate(counted)
        ]

    def _init(self, blends: Sequence[Sequence[tuple[Path, float]]], shape: tuple[int, int]) -> torch.Tensor | None:
        """The init image(s) `settings.init` asks for: each blend's first style image, or the init file."""
        if self.settings.init == "style":
            return torch.cat([resize(self.styles.image(b[0][0]), shape) for b in blends])
        if self.settings.init == "image" and self.init_path is not None:
            return read_image(self.init_path)
        return None

    def _rendered(
        self,
        result: Result,
        index: int,
        seconds: float,
        hits: int,
        misses: int,
        style_seconds: float,
        tile_side: int,
        source: Path,
        bits: int,
    ) -> Rendered:
        final = result.finals[index]
        return Rendered(
            content=final.content,
            style=final.style,
            tv=final.tv,
            temporal=final.temporal,
            loss=final.loss,
            iterations=len(result.trace),
            seconds=seconds,
            device=str(self.device),
            style_hits=hits,
            style_misses=misses,
            style_seconds=style_seconds,
            image=result.image[index : index + 1],
            trace=compact_trace(result.traces[index]),
            tile_side=tile_side,
            precision=self.precision,
            color=converted_space(source, self.scene),
            note=input_note(source, bits),
        )
