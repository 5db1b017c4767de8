"""Shared bits of the benchmark scripts: where the real data lives and how results are printed."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
FRACATLAS = Path(os.environ.get("FRACATLAS_DIR", REPO.parent / "shared" / "datasets" / "fracatlas"))


def machine() -> str:
    """One line naming the hardware a number was measured on."""
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}{gpu}"


def emit(result: dict) -> None:
    """Print a result as one JSON line (for scripts) after the human-readable lines."""
    print("RESULT " + json.dumps(result, default=str))
