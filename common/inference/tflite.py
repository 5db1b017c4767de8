"""The TFLite (LiteRT) model as a backend: the same letterboxed input and the same raw head output as PyTorch.

Ultralytics' LiteRT export divides the box rows by the input size (so int8 quantisation keeps the scores' range);
they are scaled back to network pixels here, so the shared `decode`/NMS/operating point run unchanged after it.
The exported graph has a fixed batch of one; batches are run image by image.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from common.errors import DataError

DEFAULT_THREADS = 2  # point-of-care tablets and ambulance units: a couple of cores at most


def read_metadata(path: str | Path) -> dict:
    """The JSON metadata an export carries as a zip entry appended to the flatbuffer (names, imgsz); {} if none."""
    try:
        with zipfile.ZipFile(path) as z:
            return json.loads(z.read("metadata.json"))
    except (zipfile.BadZipFile, KeyError, ValueError):
        return {}


def _quantise(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float input to the tensor's own type (models exported with integer inputs); float models pass through."""
    if np.issubdtype(detail["dtype"], np.floating):
        return x.astype(detail["dtype"], copy=False)
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])


def _dequantise(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.issubdtype(detail["dtype"], np.floating):
        return y.astype(np.float32, copy=False)
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * scale


class TFLiteBackend:
    """A `.tflite` detector run by ai-edge-litert's interpreter on the CPU (`threads` interpreter threads)."""

    def __init__(self, path: str | Path, threads: int = DEFAULT_THREADS, names: dict[int, str] | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(self.path, "TFLite model not found")
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise DataError(self.path, f"not a TFLite model the interpreter can run: {e}") from e
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        shape = tuple(int(s) for s in self._in["shape"])
        if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3]:
            raise DataError(self.path, f"expected a square NCHW input (1, 3, S, S), the model takes {shape}")
        self.imgsz = shape[2]
        meta = read_metadata(self.path)
        given = names or meta.get("names")
        if not given:
            raise DataError(self.path, "class names missing (no metadata.json in the file and none given)")
        self.names = {int(k): str(v) for k, v in given.items()}
        self.threads = threads

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if tuple(img.shape[1:]) != (3, self.imgsz, self.imgsz):
            raise ValueError(f"{self.path.name} takes (B, 3, {self.imgsz}, {self.imgsz}) input, got {tuple(img.shape)}")
        outs = []
        for x in img.detach().cpu().numpy():
            self.interpreter.set_tensor(self._in["index"], _quantise(x[None], self._in))
            self.interpreter.invoke()
            outs.append(_dequantise(self.interpreter.get_tensor(self._out["index"]), self._out).copy())
        raw = torch.from_numpy(np.concatenate(outs))
        raw[:, :4] *= self.imgsz  # normalised boxes back to network pixels
        return raw
