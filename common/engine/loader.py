"""Data loaders that keep the device fed: worker processes sized from the cores and the device, kept alive across
epochs, pinned memory for GPU copies, and one thread per worker (a worker's OpenCV or torch thread pool would
otherwise fight the training threads for the same cores)."""

from __future__ import annotations

import os
from typing import Any

import cv2
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from common.data.dataset import collate


def available_cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_workers(device: torch.device) -> int:
    """Loader processes when `train.workers` is not set. A GPU step outruns one process's augmentation many times
    over, so every core but two (the training loop and the OS) prepares images. On a CPU the cores do the
    arithmetic; a worker per 8 cores hides the pipeline without taking a core from small machines."""
    cores = available_cores()
    if device.type == "cuda":
        return max(1, min(16, cores - 2))
    return cores // 8


def _one_thread(_: int) -> None:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def loader_options(workers: int, device: torch.device) -> dict[str, Any]:
    """DataLoader keyword arguments for `workers` processes feeding `device`."""
    opts: dict[str, Any] = {"num_workers": workers, "collate_fn": collate, "pin_memory": device.type == "cuda"}
    if workers > 0:
        opts.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=_one_thread)
    return opts


def same_options(loader: DataLoader) -> dict[str, Any]:
    """The options of an existing loader, for another loader over the same data (DP-SGD's Poisson batches)."""
    opts: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
    }
    if loader.num_workers > 0:
        opts.update(
            persistent_workers=loader.persistent_workers,
            prefetch_factor=loader.prefetch_factor,
            worker_init_fn=loader.worker_init_fn,
        )
    return opts


def make_loader(
    data: Dataset, batch_size: int, sampler: Sampler | None, workers: int, device: torch.device
) -> DataLoader:
    return DataLoader(data, batch_size=batch_size, sampler=sampler, **loader_options(workers, device))
