"""The `stylize` command line: parses arguments and calls the shell, nothing more."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from pipeline.batch.config import (
    Config,
    ConfigError,
    OptimizeConfig,
    OutputConfig,
    StyleConfig,
    check_output_dir,
    check_styles,
    load_config,
)
from pipeline.batch.discover import InputError, discover
from pipeline.batch.manifest import LOG_NAME
from pipeline.media.images import ImageError
from pipeline.media.weights import WeightsError
from pipeline.ui.progress import timestamped

if TYPE_CHECKING:
    from pipeline.batch.plan import Plan

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 75
EXIT_TERMINATED = 128 + signal.SIGTERM  # what a shell reports for a process that SIGTERM ended
EXIT_INTERRUPTED = 128 + signal.SIGINT  # and for one that Ctrl-C ended

_DEFAULTS = OptimizeConfig()

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Batch neural style transfer (Gatys et al., VGG-19)."
)


def _log(message: str) -> None:
    typer.echo(timestamped(message), err=True)


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    typer.echo(f"stylize: error: {message}", err=True)
    raise typer.Exit(code)


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, so that no job's error handling takes it for the job's failure."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises Terminated in the main thread while inside: the job in hand is abandoned (its atomic
    write leaves nothing), the manifest is saved and the lock released on the way out."""

    def terminate(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _plan(config_path: Path):
    """The config, its plan and the warnings of discovery (files passed over, frames missing)."""
    from pipeline.batch.plan import plan

    try:
        config = load_config(config_path)
        found = discover(config.inputs, exclude=config.output.dir)
        return config, plan(config, found.sources), found.notes()
    except (ConfigError, WeightsError) as exc:
        _fail(str(exc))
    except InputError as exc:
        _fail(f"{config_path}: {exc}")


def _summary(outcomes: list, plan, out_dir: Path) -> tuple[str, list[tuple[str, str]]]:
    """The closing line, counted once per job (the last word on each), and the failures by name."""
    from pipeline.batch.plan import VideoOut

    last = {(type(o.job), o.job.output): o for o in outcomes}
    jobs = [last[(type(j), j.output)] for j in plan.jobs if (type(j), j.output) in last]
    ran = sum(not o.skipped for o in jobs)
    failed = [(o.job.name, o.record.error or "") for o in last.values() if o.record.state == "failed"]
    failed += [(str(source.relative), error) for source, error in plan.rejected]
    encoded = sum(o.record.style_misses or 0 for o in jobs if not o.skipped)
    cached = sum(o.record.style_hits or 0 for o in jobs if not o.skipped)
    videos = sum(o.record.state == "done" for o in last.values() if isinstance(o.job, VideoOut))
    line = (
        f"finished: {len(plan.jobs)} jobs: {ran} run, {sum(o.skipped for o in jobs)} already done, "
        f"{sum(o.record.state == 'failed' for o in jobs)} failed"
        + (f", {len(plan.rejected)} inputs refused" if plan.rejected else "")
        + (f"; {videos} of {len(plan.videos)} videos assembled" if plan.videos else "")
        + f"; style targets: {encoded} encoded, {cached} from cache; manifest in {out_dir}"
    )
    return line, failed


@app.command()
def run(
    config_path: Path = typer.Argument(..., metavar="CONFIG", help="YAML config"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list what would run, run nothing"),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="show only failures, warnings and the summary (the log file still gets every line)"
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="also log each worker's iterations (about ten lines a second per worker at most)"
    ),
) -> None:
    """Run the batch described by CONFIG, then write its report. Exit 0: all done; 1: some jobs failed (or the Dask scheduler is gone); 2: bad config; 75: locked; 143: stopped by SIGTERM."""
    from pipeline.batch.lock import LockHeld, run_lock
    from pipeline.run.cluster import ClusterError, StorageError
    from pipeline.run.devices import DeviceError

    if quiet and verbose:
        _fail("--quiet and --verbose exclude each other")
    config, plan, notes = _plan(config_path)
    if dry_run:
        _show_plan(config, plan, notes)
        return
    try:
        check_output_dir(config_path, config)
        check_styles(config_path, config)
    except ConfigError as exc:
        _fail(str(exc))
    verbosity = "quiet" if quiet else "verbose" if verbose else "normal"
    try:
        with _sigterm_raises(), run_lock(config.output.dir):
            failed = _run_locked(config_path, config, plan, notes, verbosity)
    except LockHeld as exc:
        _fail(str(exc), EXIT_LOCKED)
    except Terminated:
        _fail(
            f"terminated: the job in hand was abandoned; what finished is in {config.output.dir / 'manifest.json'}",
            EXIT_TERMINATED,
        )
    except KeyboardInterrupt:
        _fail(
            f"interrupted: the jobs in hand were abandoned; what finished is in {config.output.dir / 'manifest.json'}",
            EXIT_INTERRUPTED,
        )
    except DeviceError as exc:
        _fail(f"{config_path}: devices: {exc}")
    except StorageError as exc:
        _fail(f"{config_path}: {exc}")
    except ClusterError as exc:  # nothing more can run; what finished is in the manifest
        _fail(str(exc), EXIT_FAILED)
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


def _run_locked(config_path: Path, config: Config, plan: Plan, notes: list[str], verbosity: str) -> list:
    """The run, once it holds the lock: its notes, the jobs, the report and the summary; the failures."""
    from pipeline.run.execute import execute
    from pipeline.ui.progress import RunDisplay

    with RunDisplay(config.output.dir / LOG_NAME, sys.stderr.isatty(), verbosity) as report:
        for note in notes:
            report.log(f"warning: {note}", always=True)
        report.log(f"{len(plan.jobs)} jobs from {config_path}")
        outcomes = execute(config, plan, report, live=report.progress)
        _write_report(config, plan, report.log)
        line, failed = _summary(outcomes, plan, config.output.dir)
        report.log(line, always=True)
        for name, error in failed:
            report.log(f"FAILED {name}: {error}", always=True)
    return failed


def _write_report(config, plan, log: Callable[..., None]) -> None:
    """Write report.html and contact_sheet.png; a failure is one logged line and changes nothing else."""
    from pipeline.batch.manifest import reason
    from pipeline.ui.report import REPORT_NAME, write_report

    try:
        page, _ = write_report(config, plan)
    except Exception as exc:  # noqa: BLE001  the run's outputs and exit code stand
        log(f"warning: no report: {reason(exc, config.output.dir / REPORT_NAME)}", always=True)
        return
    log(f"report: {page}")


def _show_plan(config, plan, notes: list[str]) -> None:
    from pipeline.batch.manifest import Manifest
    from pipeline.batch.plan import relative_output

    manifest = Manifest(config.output.dir)
    for note in notes:
        typer.echo(f"warning: {note}", err=True)
    counts: dict[str, int] = {"failed": len(plan.rejected)} if plan.rejected else {}
    for source, error in plan.rejected:
        typer.echo(f"failed   {source.relative} ({error})")
    for job in [*plan.jobs, *plan.videos]:
        rel = relative_output(job, config.output.dir)
        record = manifest.records.get(rel)
        state = manifest.state(rel, job.key, job.output.exists())
        counts[state] = counts.get(state, 0) + 1
        extra = f"  ({record.error})" if state == "failed" and record else ""
        typer.echo(f"{state:8} {job.name} -> {rel}{extra}")
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    videos = f" and {len(plan.videos)} videos" if plan.videos else ""
    typer.echo(f"{len(plan.jobs)} jobs{videos}: {summary or 'none'}")


@app.command("report")
def report_cmd(config_path: Path = typer.Argument(..., metavar="CONFIG", help="YAML config")) -> None:
    """Write report.html and contact_sheet.png in CONFIG's output dir from its manifest (also after a partial run)."""
    from pipeline.batch.manifest import reason
    from pipeline.ui.report import REPORT_NAME, write_report

    config, plan, _ = _plan(config_path)
    try:
        paths = write_report(config, plan)
    except OSError as exc:
        _fail(reason(exc, config.output.dir / REPORT_NAME), EXIT_FAILED)
    for path in paths:
        typer.echo(path)


@app.command("plan")
def plan_cmd(config_path: Path = typer.Argument(..., metavar="CONFIG", help="YAML config")) -> None:
    """List the jobs of CONFIG as pending, done or failed, without running them."""
    _show_plan(*_plan(config_path))


@app.command()
def image(
    content: Path = typer.Argument(..., metavar="CONTENT", help="content image"),
    styles: list[Path] = typer.Argument(..., metavar="STYLE", help="style image(s), blended equally"),
    output: Path = typer.Option(..., "-o", "--output", help="output image (.png, .jpg, .webp)"),
    size: int = typer.Option(_DEFAULTS.size, help="longest side of the output, px"),
    iterations: int = typer.Option(_DEFAULTS.iterations, help="iterations at the finest scale"),
    tolerance: float = typer.Option(
        _DEFAULTS.tolerance,
        help=f"end a level once its loss changes by less than this fraction in {_DEFAULTS.tolerance_window} iterations (0: off)",
    ),
    scales: int = typer.Option(_DEFAULTS.scales, help="coarse-to-fine levels"),
    style_weight: float = typer.Option(_DEFAULTS.style_weight, help="style loss weight"),
    content_weight: float = typer.Option(_DEFAULTS.content_weight, help="content loss weight"),
    tv_weight: float = typer.Option(_DEFAULTS.tv_weight, help="total variation weight"),
    style_loss: str = typer.Option(_DEFAULTS.style_loss, help="gram | wasserstein (Gaussian fits of the features)"),
    style_balance: str = typer.Option(
        _DEFAULTS.style_balance, help="total (neural-style's layer balance) | layer (every layer alike)"
    ),
    style_scale: float = typer.Option(1.0, help="the style images' size relative to the output's (0.1 to 4)"),
    optimizer: str = typer.Option(_DEFAULTS.optimizer, help="lbfgs | adam"),
    precision: str = typer.Option(
        _DEFAULTS.precision,
        help="auto | fp32 | bf16 | fp16: the VGG layers' precision (auto: bf16 where the device has fast bf16)",
    ),
    init: str = typer.Option(_DEFAULTS.init, help="content | noise | style | PATH"),
    preserve_colors: bool = typer.Option(False, "--preserve-colors", help="keep the content's colours"),
    seed: int = typer.Option(_DEFAULTS.seed, help="random seed"),
    device: str = typer.Option("auto", help="auto | cpu | cuda:N"),
    weights: str = typer.Option("bundled", help="bundled | torchvision | PATH to a .pth"),
    tile: str = typer.Option("auto", help="auto (tiles only when the image does not fit the free memory) | off | N px"),
    original_size: bool = typer.Option(
        False, "--original-size", help="write the output at the content's own resolution, refined above --size"
    ),
    depth: str = typer.Option(
        "same", help="same | 8 | 16 | half | float: the output's samples (same: the content's; see output.depth)"
    ),
) -> None:
    """Stylise one image with one or more style images."""
    from pipeline.run.devices import DeviceError, pick_device

    opts, style = _image_options(locals())
    for path in (content, *styles):
        if not path.is_file():
            _fail(f"{path}: file not found")
    try:
        device = pick_device(device)
    except DeviceError as exc:
        _fail(f"--device: {exc}")
    _render_one(opts, style, content, output, device, weights, original_size, _depth_option(depth))


def _image_options(given: dict) -> tuple[OptimizeConfig, StyleConfig]:
    """`stylize image`'s options as the config's models; an invalid one exits 2, naming its option."""
    from pydantic import ValidationError

    fields = {k: v for k, v in given.items() if k in OptimizeConfig.model_fields}
    tile = fields["tile"]
    try:
        opts = OptimizeConfig(**{**fields, "tile": int(tile) if tile.isdigit() else tile})
    except ValidationError as exc:
        err = exc.errors()[0]
        _fail(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}")
    try:
        style = StyleConfig(name="image", images=given["styles"], scale=given["style_scale"])
    except ValidationError as exc:
        _fail(f"--style-scale: {exc.errors()[0]['msg']}")
    return opts, style


def _depth_option(depth: str) -> str | int:
    """--depth as output.depth takes it (its own rule: same | 8 | 16 | half | float); anything else exits 2."""
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(OutputConfig.model_fields["depth"].annotation).validate_python(
            int(depth) if depth.isdigit() else depth
        )
    except ValidationError:
        _fail(f"--depth: {depth!r} is not same, 8, 16, half or float")


def _render_one(
    opts: OptimizeConfig,
    style: StyleConfig,
    content: Path,
    output: Path,
    device: str,
    weights: str,
    original_size: bool,
    depth: str | int = "same",
) -> None:
    """`stylize image`'s work, once its options are valid: render, then one line (or one error line, exit 1)."""
    from pipeline.batch.manifest import reason
    from pipeline.render.renderer import Renderer
    from pipeline.ui.progress import progress_callback

    try:
        renderer = Renderer(
            opts.settings(),
            device=device,
            weights=weights,
            init_path=opts.init_path,
            tiling=opts.tile,
            full_size=original_size,
            precision=opts.precision,
            depth=depth,
        )
        with progress_callback(sys.stderr.isatty()) as callback:
            result = renderer.render(content, style.blend, output, callback=callback, style_scale=style.scale)
    except (ImageError, WeightsError) as exc:
        _fail(str(exc), EXIT_FAILED)
    except (OSError, RuntimeError, ValueError, MemoryError) as exc:  # torch's on an odd input, a full disk: one line
        _fail(
            reason(exc, Path(exc.filename) if isinstance(exc, OSError) and exc.filename else content, opts.size),
            EXIT_FAILED,
        )
    if result.note:
        _log(f"warning: {result.note}")
    tiled = f" in {result.tile_side} px tiles" if result.tile_side else ""
    _log(
        f"wrote {output} in {result.seconds:.1f}s on {result.device} ({result.precision}){tiled}: loss {result.loss:.4g} "
        f"(content {result.content:.4g}, style {result.style:.4g}, tv {result.tv:.4g})"
    )


def main() -> None:
    """Entry point: typer's own usage errors exit 2 already."""
    app(prog_name="stylize")
