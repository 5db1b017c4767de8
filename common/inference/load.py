"""Open a published model for inference: a weights file or a registry version folder, on the chosen backend."""

from __future__ import annotations

from pathlib import Path

import torch

from common.errors import DataError
from common.inference.backend import Backend, TorchBackend
from common.nn.weights import load_model

WEIGHTS_FILE = "model.safetensors"  # name of the weights inside a registry version folder


def weights_path(ref: str | Path) -> Path:
    """The weights file behind `ref`: the file itself, or `model.safetensors` inside a version folder."""
    p = Path(ref)
    if p.is_dir():
        p = p / WEIGHTS_FILE
    if not p.is_file():
        raise DataError(ref, f"no model here (expected a .safetensors file or a version folder with {WEIGHTS_FILE})")
    return p


def load_backend(ref: str | Path, backend: str = "torch", *, device: torch.device | None = None,
                 imgsz: int | None = None) -> Backend:
    """A ready backend for the model at `ref`; `imgsz` defaults to the size the model was trained at."""
    if backend != "torch":
        raise DataError(ref, f"unknown backend {backend!r} (choose: torch)")
    model, _, meta = load_model(weights_path(ref))
    return TorchBackend(model, device, int(imgsz or meta.get("imgsz", 640)))
