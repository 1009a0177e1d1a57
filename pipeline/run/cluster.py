"""The Dask executor (`executor: dask`): the plan's tasks on a `distributed` cluster, records back as futures finish.

`distributed` is imported only inside the functions here, so the local
executor (and the CLI, which imports this module for its errors) never loads it.

- One Dask task per single job, and one per Segment of a temporal chain (so a
  chain stays on one worker). Each worker process keeps the renderer of the
  config it last ran (a `WorkerState`, as the local pool's workers do): the
  model loads once, style targets stay warm, and the style cache on disk
  (`cache_dir`) is shared by every worker.
- Jobs ask for a GPU through worker resources (`--resources GPU=1`) when
  the config wants GPUs and the cluster has them; see `_resources`.
- Written once: a worker writes each output atomically and then a stamp
  beside it (`.<name>.stamp`: the job's record and the output's size and
  mtime). When a worker dies mid-task the scheduler runs the task again
  elsewhere; the new attempt returns the stamped records instead of
  rendering those jobs again (a segment resumes after its last stamped
  frame). Only the client writes the manifest, one record per output, and
  removes a stamp once it holds its record.
- Live progress: with a live display, each worker publishes its Ticks (at most ten a second, see
  pipeline.run.ticks.Ticker) as events of the topic TOPIC; the client subscribes and hands them on.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, astuple
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipeline.batch.config import Config
from pipeline.batch.manifest import Record, reason
from pipeline.batch.plan import Job, Segment, relative_output
from pipeline.media.digest import value_digest
from pipeline.media.images import atomic_path, probe_writable
from pipeline.render.renderer import Renderer
from pipeline.run.allocator import TUNABLES
from pipeline.run.devices import DeviceError, device_slots, worker_threads
from pipeline.run.tasks import (
    DeviceFault,
    Live,
    Records,
    RunLog,
    Task,
    WorkerState,
    make_renderer,
    record_fields,
    task_jobs,
    task_records,
    worker_state,
)
from pipeline.run.ticks import Tick, Ticker

if TYPE_CHECKING:
    from distributed import Client

CONNECT_TIMEOUT = 10.0  # seconds to reach the scheduler, and then for its first worker to be there
PROBE = ".stylize-probe"
TOPIC = "stylize-progress"  # the workers' Ticks, through the scheduler's event log


class ClusterError(RuntimeError):
    """The cluster cannot be reached, or was lost mid-run; one line. Records that arrived are kept."""


class StorageError(ValueError):
    """A worker cannot see or write `output.dir` or `cache_dir`; one line naming the key."""


@contextmanager
def session(config: Config, report: RunLog, live: Live | None = None) -> Iterator[Records]:
    """Connect to `config.scheduler` (or start a LocalCluster), check that every worker shares and can
    write the output and cache dirs, and yield the function that runs tasks there; close at the end.
    With `live`, the workers' Ticks go to it (called on the client's event-loop thread).

    Raises ClusterError, StorageError or DeviceError before any task is submitted.
    """
    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # our errors are one line; dask's reconnect tracebacks are not
    try:
        with _client(config) as client:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            _check_storage(client, config)
            resources = _resources(config, workers)
            if config.scheduler != "local" and resources is not None:
                check_gpus(client.run(_gpu_report, config))
            gpus = sum(bool(w.get("resources", {}).get("GPU")) for w in workers.values())
            report.log(f"dask: {len(workers)} workers at {client.scheduler.address} ({gpus} with a GPU)")
            if live is not None:
                client.subscribe_topic(TOPIC, lambda event: live(Tick(*event[1])))
            yield partial(_records, client, config, resources, live is not None)
    finally:
        quiet.setLevel(level)


@contextmanager
def _client(config: Config) -> Iterator[Client]:
    """A client of the configured scheduler with at least one worker, or of a LocalCluster started here."""
    import dask
    from distributed import Client, LocalCluster

    if config.scheduler != "local":
        try:
            client = Client(config.scheduler, timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            raise ClusterError(f"scheduler {config.scheduler}: cannot connect: {str(exc).splitlines()[0]}") from None
        with client:
            try:
                client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
            except TimeoutError:
                raise ClusterError(
                    f"scheduler {config.scheduler}: no workers after {CONNECT_TIMEOUT:.0f} s "
                    f"(start them with: dask worker {config.scheduler})"
                ) from None
            yield client
        return
    slots = device_slots(config.devices, config.workers_per_device)
    threads = worker_threads(slots, "cpu" if "cpu" in slots else slots[0])
    environ = {
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "GLIBC_TUNABLES": TUNABLES,
        "MALLOC_TRIM_THRESHOLD_": None,
    }  # keep freed memory in the heap, like `stylize` itself
    saved = {k: os.environ.get(k) for k in environ}  # the nannies set these in this process too
    try:
        with dask.config.set({f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in environ.items()}):
            cluster = LocalCluster(
                n_workers=len(slots),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                resources={"GPU": 1} if "cpu" not in slots else None,
                silence_logs=logging.CRITICAL,
            )
        with cluster, Client(cluster) as client:
            yield client
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _allows(config: Config) -> tuple[bool, bool]:
    """(GPUs allowed, the CPU allowed) by `devices`."""
    devices = config.devices
    listed = [devices] if isinstance(devices, str) else devices
    return devices == "auto" or any(d.startswith("cuda") for d in listed), devices == "auto" or "cpu" in listed


def _resources(config: Config, workers: dict[str, dict]) -> dict[str, float] | None:
    """What each task asks of a worker: one GPU when the config wants GPUs and the cluster has them
    (`auto`: GPUs if any worker offers one, else the CPU), nothing when the CPU will do.

    Raises DeviceError when the config allows only GPUs and no worker offers one.
    """
    cpu = _allows(config)[1]
    offered = any(w.get("resources", {}).get("GPU") for w in workers.values())
    if not cpu and not offered:
        raise DeviceError(
            "no worker of the cluster offers a GPU (start one per GPU with: dask worker ADDRESS --resources GPU=1)"
        )
    return {"GPU": 1} if offered and (not cpu or config.devices == "auto") else None


def _check_storage(client: Client, config: Config) -> None:
    """Raise StorageError unless every worker sees a file written here in the output and cache dirs and can write there."""
    token = uuid.uuid4().hex
    dirs = {"output.dir": config.output.dir, "cache_dir": config.cache_dir}
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{PROBE}.{token}").write_text(token)
    try:
        problems = client.run(_probe, dirs, token)
    finally:
        for folder in dirs.values():
            (folder / f"{PROBE}.{token}").unlink(missing_ok=True)
    for worker, problem in sorted(problems.items()):
        if problem:
            raise StorageError(f"{problem} on worker {worker}; it must be on storage every worker shares and can write")


def _probe(dirs: dict[str, Path], token: str) -> str | None:
    """On a worker: what is wrong with the dirs the client probed, or None."""
    for key, folder in dirs.items():
        try:
            seen = (folder / f"{PROBE}.{token}").read_text() == token
        except OSError:
            seen = False
        if not seen:
            return f"{key}: {folder} is not the client's folder (a file written there is missing)"
        try:
            probe_writable(folder, f"{PROBE}.")
        except OSError as exc:
            return f"{key}: cannot write to {folder} ({exc.strerror or exc})"
    return None


def _records(
    client: Client,
    config: Config,
    resources: dict[str, float] | None,
    live: bool,
    tasks: list[Task],
    done: frozenset[Path],
    out_dir: Path,
) -> Iterator[tuple[Job, Record]]:
    """(job, record) as the cluster finishes tasks, in the order they finish.

    A task whose workers kept dying (distributed's allowed-failures) fails its jobs; losing the
    scheduler raises ClusterError.
    """
    from distributed import as_completed

    futures = {
        client.submit(run_task, config, task, done & _paths(task), out_dir, live, resources=resources, pure=False): task
        for task in tasks
    }
    finished = 0
    for future in as_completed(futures):
        task = futures.pop(future)
        try:
            exc = future.exception() if future.status == "error" else None
            results = [] if exc is not None else future.result()
        except Exception:  # noqa: BLE001  cancelled, or the connection broke while fetching: the scheduler is gone
            raise ClusterError(
                f"scheduler {client.scheduler.address}: lost the connection after {finished} of "
                f"{finished + 1 + len(futures)} tasks; a rerun resumes"
            ) from None
        if exc is not None:  # the task itself failed: its workers kept dying, or no device there
            results = _failed(task, done, out_dir, _why(exc))
        finished += 1
        for job, record in results:
            _stamp(job.output).unlink(missing_ok=True)
            yield job, record


def _paths(task: Task) -> frozenset[Path]:
    return frozenset(f.path for f in task.frames) if isinstance(task, Segment) else frozenset()


def _why(exc: BaseException) -> Callable[[Job], str]:
    """The error of each job of a task that raised `exc` on the cluster."""
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        deaths = exc.allowed_failures + 1
        return lambda job: f"{job.content}: the worker died while rendering it, {deaths} times (out of memory?)"
    return lambda job: reason(exc, job.content)


def _failed(task: Task, done: frozenset[Path], out_dir: Path, error: Callable[[Job], str]) -> list[tuple[Job, Record]]:
    """A failed record for each job of a task that did not come back."""
    return [
        (job, Record(**record_fields(job, relative_output(job, out_dir)), state="failed", error=error(job)))
        for job in task_jobs(task, done)
    ]


def run_task(
    config: Config, task: Task, done: frozenset[Path], out_dir: Path, live: bool = False
) -> list[tuple[Job, Record]]:
    """On a worker: run one task and return its records. Jobs an earlier, killed attempt finished
    (output and stamp in place) are not rendered again: their stamped records come back instead.
    With `live`, the running job's Ticks are published to TOPIC."""
    stamped = [(job, r) for job in task_jobs(task, done) if (r := _read_stamp(job)) is not None]
    if stamped and isinstance(task, Job):
        return stamped
    results = list(stamped)
    skip = done | {job.output for job, _ in stamped}
    renderer = _worker_renderer(config)
    renderer.on_progress = Ticker(_publish, str(renderer.device), out_dir) if live else None
    try:
        for job, record in task_records(renderer, config, task, skip, out_dir):
            if record.state == "done":
                _write_stamp(job, record)
            results.append((job, record))
    except DeviceFault:
        os._exit(70)  # the scheduler runs the task again on another worker (its finished jobs are stamped)
    return results


def _publish(tick: Tick) -> None:
    """Send a Tick from this worker to the clients subscribed to TOPIC."""
    from distributed import get_worker

    get_worker().log_event(TOPIC, astuple(tick))  # not a dict: distributed sets a dict's "worker" to its address


def _worker_renderer(config: Config) -> Renderer:
    """This worker's renderer for `config` (made on its first task of the config: the model loads once)."""
    ident = value_digest(config.model_dump(mode="json"))
    return worker_state(ident, lambda: WorkerState(ident, make_renderer(config, _worker_device(config)))).renderer


_CLAIMS: dict[str, int] = {}  # this worker process's GPU: its device and the fd of the lock it holds for life


def claim_gpu(count: int, folder: Path = Path(tempfile.gettempdir())) -> str:
    """This worker process's own GPU among the `count` it sees: `cuda:0` when CUDA_VISIBLE_DEVICES pins
    it one (dask-cuda does), else the first that no other worker of this host holds, claimed with an
    flock that dies with the process. Raises DeviceError when all are held."""
    if "device" in _CLAIMS:
        return f"cuda:{_CLAIMS['device']}"
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if count == 1 or (pinned and "," not in pinned):  # one GPU to take (two workers on it fail check_gpus)
        _CLAIMS["device"] = 0
        return "cuda:0"
    for index in range(count):
        fd = os.open(folder / f"stylize-gpu-{_visible(index)}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _CLAIMS.update(device=index, fd=fd)
        return f"cuda:{index}"
    raise DeviceError(
        f"all {count} GPUs of this host are held by other stylize workers; start at most one worker "
        "per GPU, or pin each its own (CUDA_VISIBLE_DEVICES=N dask worker …, or dask-cuda)"
    )


def _visible(index: int) -> str:
    """The host's name for visible GPU `index` (its UUID where torch knows it), so claims of workers with
    different CUDA_VISIBLE_DEVICES orders still meet."""
    uuid_ = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return str(uuid_) if uuid_ else str(index)


def _gpu_report(config: Config) -> tuple[str, str]:
    """On a worker, before any task: (its host, the GPU it takes), or (host, the error) when it can take none."""
    import socket

    try:
        device = _worker_device(config)
    except DeviceError as exc:
        return socket.gethostname(), f"error: {exc}"
    return socket.gethostname(), _visible(torch.device(device).index or 0) if device.startswith("cuda") else device


def check_gpus(reports: dict[str, tuple[str, str]]) -> None:
    """Raise DeviceError when a worker can take no GPU, or two workers of one host would share one."""
    seen: dict[tuple[str, str], str] = {}
    for worker, (host, gpu) in sorted(reports.items()):
        if gpu.startswith("error: "):
            raise DeviceError(f"worker {worker}: {gpu.removeprefix('error: ')}")
        if gpu != "cpu" and (host, gpu) in seen:
            raise DeviceError(
                f"workers {seen[(host, gpu)]} and {worker} would both use GPU {gpu} of {host}; "
                "pin one GPU per worker (CUDA_VISIBLE_DEVICES, or dask-cuda's dask cuda worker)"
            )
        seen[(host, gpu)] = worker


def _worker_device(config: Config) -> str:
    """This worker's device: its slot in a LocalCluster; elsewhere its GPU when the config allows GPUs
    (pin one per worker with CUDA_VISIBLE_DEVICES), else the CPU when the config allows it."""
    from distributed import get_worker

    worker = get_worker()
    if config.scheduler == "local":
        return device_slots(config.devices, config.workers_per_device)[int(worker.name)]
    gpu, cpu = _allows(config)
    if gpu and torch.cuda.is_available():
        return claim_gpu(torch.cuda.device_count())
    if cpu:
        return "cpu"
    raise DeviceError(f"worker {worker.address} offers a GPU but CUDA is not available there")


def _stamp(output: Path) -> Path:
    return output.with_name(f".{output.name}.stamp")


def _read_stamp(job: Job) -> Record | None:
    """The record stamped beside `job.output`, if it is for this key and this very output file."""
    try:
        data = json.loads(_stamp(job.output).read_text(encoding="utf-8"))
        stat = job.output.stat()
        record = Record(**data["record"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if record.key == job.key and data["output"] == [stat.st_size, stat.st_mtime_ns] else None


def _write_stamp(job: Job, record: Record) -> None:
    stat = job.output.stat()
    with atomic_path(_stamp(job.output)) as tmp:
        tmp.write_text(
            json.dumps({"record": asdict(record), "output": [stat.st_size, stat.st_mtime_ns]}), encoding="utf-8"
        )
