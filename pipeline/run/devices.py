"""The devices a run uses: which exist, the worker slots on them, and the threads each worker takes."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A requested device does not exist here."""


def resolve_devices(devices: str | list[str]) -> list[str]:
    """The devices to use: auto means every CUDA GPU, else the CPU; listed devices must exist."""
    if devices == "auto":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]
    listed = devices if isinstance(devices, list) else [devices]
    for device in listed:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise DeviceError(f"device {device}: CUDA is not available on this machine")
        if device.startswith("cuda:") and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise DeviceError(f"device {device}: this machine has {torch.cuda.device_count()} GPUs")
    return listed


def pick_device(devices: str | list[str]) -> str:
    """The first device of `resolve_devices`."""
    return resolve_devices(devices)[0]


def device_slots(devices: str | list[str], per_device: int) -> list[str]:
    """One entry per worker: each device of `resolve_devices(devices)`, `per_device` times."""
    return [d for d in resolve_devices(devices) for _ in range(per_device)]


def worker_threads(slots: list[str], device: str) -> int:
    """torch threads for a worker on `device` among `slots`: the CPU workers split the cores; a GPU worker,
    which needs them only to read, write and feed its device, takes an equal share of them."""
    cores = torch.get_num_threads()
    return max(1, cores // max(1, slots.count("cpu") if device == "cpu" else len(slots)))
