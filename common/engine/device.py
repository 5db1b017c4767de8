"""Device selection and seeding, so runs are reproducible and say where they ran."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from common.errors import ConfigError


def select_device(name: str = "auto") -> torch.device:
    """'auto' picks the first GPU when there is one, else the CPU; an unavailable GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but no CUDA GPU is available (use 'cpu' or 'auto')")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
