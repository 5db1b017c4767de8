"""Open a published model for inference: a weights file, a `.tflite` file or a registry version folder, on the
chosen backend. A version folder holds `model.safetensors` and, once exported, `exports/model_<variant>.tflite`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from common.errors import DataError
from common.inference.backend import Backend, TorchBackend
from common.nn.weights import load_model, trained_size

WEIGHTS_FILE = "model.safetensors"  # name of the weights inside a registry version folder
EXPORTS_DIR = "exports"  # edge builds inside a registry version folder
BACKENDS = ("torch", "tflite")


def weights_path(ref: str | Path) -> Path:
    """The weights file behind `ref`: the file itself, or `model.safetensors` inside a version folder."""
    p = Path(ref)
    if p.is_dir():
        p = p / WEIGHTS_FILE
    if not p.is_file():
        raise DataError(ref, f"no model here (expected a .safetensors file or a version folder with {WEIGHTS_FILE})")
    return p


def export_file(variant: str) -> str:
    """Where a variant's TFLite build lives inside a version folder, e.g. `exports/model_int8.tflite`."""
    return f"{EXPORTS_DIR}/model_{variant}.tflite"


def tflite_path(ref: str | Path, variant: str = "fp32") -> Path:
    """The `.tflite` file behind `ref`: the file itself, or the variant's export inside a version folder."""
    p = Path(ref)
    if p.is_file() and p.suffix == ".tflite":
        return p
    if p.is_dir():
        f = p / export_file(variant)
        if f.is_file():
            return f
        have = sorted(x.stem.removeprefix("model_") for x in (p / EXPORTS_DIR).glob("model_*.tflite"))
        listing = (
            f"exported variants: {', '.join(have)}"
            if have
            else "this version has no TFLite exports yet (`fracfl export --model ...` makes them)"
        )
        raise DataError(ref, f"no {variant} TFLite export here; {listing}")
    raise DataError(ref, "no TFLite model here (expected a .tflite file or a registry version folder)")


def load_backend(
    ref: str | Path,
    backend: str = "torch",
    *,
    variant: str = "fp32",
    threads: int | None = None,
    device: torch.device | None = None,
    imgsz: int | None = None,
) -> Backend:
    """A ready backend for the model at `ref`.

    torch: `imgsz` defaults to the size the model was trained at. tflite: the size is fixed by the export (a
    different `imgsz` is an error), `variant` picks the build in a version folder, `threads` sets the
    interpreter's threads (PyTorch's are the process-wide `torch.set_num_threads`).
    """
    if backend == "tflite":
        from common.inference.tflite import DEFAULT_THREADS, TFLiteBackend

        b = TFLiteBackend(tflite_path(ref, variant), threads or DEFAULT_THREADS)
        if imgsz is not None and imgsz != b.imgsz:
            raise DataError(b.path, f"exported for {b.imgsz} px input, cannot run at {imgsz} px (export again)")
        return b
    if backend != "torch":
        raise DataError(ref, f"unknown backend {backend!r} (choose: {', '.join(BACKENDS)})")
    model, size = load_at_size(ref, imgsz)
    return TorchBackend(model, device, size)


def load_at_size(ref: str | Path, imgsz: int | None = None) -> tuple[nn.Module, int]:
    """The network at `ref` (weights file or version folder) and the input size to run it at: `imgsz`, else the one
    its weights file records (never a guess, see `trained_size`)."""
    path = weights_path(ref)
    model, _, meta = load_model(path)
    return model, trained_size(meta, path, imgsz)
