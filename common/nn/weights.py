"""Saving and loading weights exactly, and initialising from checkpoints a site brings.

fracfl's own format is a safetensors file: every tensor in fp32 (integer buffers kept as integers), the model spec
and free-form metadata in its header. Loading it executes no code, which matters for files that travel between
hospitals, and a round trip is bit-exact (no EMA copy, no fp16 cast as in Ultralytics' `.pt`).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from common.errors import DataError
from common.nn.model import ModelSpec, build_model

FORMAT = "fracfl-weights/1"


def state_to_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state with floating tensors in fp32, contiguous and detached, ready for a file or the wire."""
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        out[k] = (v.float() if v.is_floating_point() else v).contiguous()
    return out


SAFETENSORS_DTYPES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float64): "F64",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


def write_safetensors(
    path: str | Path, arrays: Mapping[str, np.ndarray], metadata: dict[str, str] | None = None
) -> str:
    """Write `arrays` as they are (C order, dtypes kept) to a safetensors file, fsync it, and return its SHA-256
    (a content hash without reading the file back).

    Why not safetensors' `save`: it builds the whole file in memory while holding the GIL (about 50 ms for
    YOLOv7-tiny), which stalls the server's next round when its commit writes in the background. This writes
    safetensors' layout (header length, JSON header, the arrays' bytes back to back) array by array and hashes it
    on the way: no copy of the state, and the GIL is released in every write and hash. safetensors reads it back
    (and checks the layout) like any other of its files.
    """
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    chunks, offset = [], 0
    for k, v in arrays.items():
        a = np.require(v, requirements="C")
        if a.dtype not in SAFETENSORS_DTYPES:
            raise DataError(path, f"tensor {k}: dtype {a.dtype} cannot be stored")
        header[k] = {
            "dtype": SAFETENSORS_DTYPES[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        chunks.append(a.reshape(-1).view(np.uint8))
        offset += a.nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for chunk in (struct.pack("<Q", len(head)), head, *chunks):
            f.write(chunk)
            digest.update(chunk)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


def write_state(
    path: str | Path, state: Mapping[str, np.ndarray], spec: ModelSpec, meta: dict[str, Any] | None = None
) -> str:
    """Write a fracfl weights file from a flat numpy state (floats as fp32, integers kept); returns its SHA-256."""
    tensors = {
        k: v.astype(np.float32, copy=False) if np.issubdtype(v.dtype, np.floating) else v for k, v in state.items()
    }
    return write_safetensors(
        path, tensors, {"format": FORMAT, "spec": json.dumps(spec.to_dict()), "meta": json.dumps(meta or {})}
    )


def numpy_state(model: nn.Module) -> dict[str, np.ndarray]:
    """`state_to_save` as numpy arrays: the form the server and the registry handle."""
    return {k: v.numpy() for k, v in state_to_save(model).items()}


def save_weights(model: nn.Module, spec: ModelSpec, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write `model` to a safetensors file; written under a temporary name first so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write_state(tmp, numpy_state(model), spec, meta)
    tmp.replace(path)
    return path


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelSpec, dict[str, Any]]:
    """Tensors, spec and metadata of a fracfl weights file; a clear DataError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several private error types
        raise DataError(path, f"not a fracfl weights file (safetensors): {e}") from e
    if header.get("format") != FORMAT:
        raise DataError(path, f"not a fracfl weights file: format {header.get('format')!r}, expected {FORMAT!r}")
    return tensors, ModelSpec.from_dict(json.loads(header["spec"])), json.loads(header.get("meta", "{}"))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The free-form metadata of a fracfl weights file (e.g. `imgsz`), without reading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # safetensors raises several private error types
        raise DataError(path, f"not a fracfl weights file (safetensors): {e}") from e
    return json.loads(header.get("meta", "{}"))


def trained_size(meta: dict[str, Any], path: str | Path, given: int | None = None) -> int:
    """The input size to run a model at: `given`, else the size its weights file records. Guessing one instead
    would silently run a model trained at 128 px at 640 px, where it finds nothing, so a file without it is an
    error that asks for the size."""
    if given:
        return int(given)
    if not isinstance(meta.get("imgsz"), int) or meta["imgsz"] <= 0:
        raise DataError(
            path,
            "records no training image size (metadata 'imgsz'), so the size to run it at is unknown:"
            " pass --imgsz where the command takes it, or save the weights with it",
        )
    return meta["imgsz"]


def load_model(path: str | Path) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Rebuild the network stored in `path` and load its weights strictly."""
    tensors, spec, meta = read_weights(path)
    model = build_model(spec)
    model.load_state_dict(tensors, strict=True)
    return model, spec, meta


@dataclass
class MatchReport:
    """Which tensors of a foreign checkpoint were used: what a site reads before trusting an initialisation."""

    source: str
    matched: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in our model, not in the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in our model

    def summary(self) -> str:
        total = len(self.matched) + len(self.shape_mismatch) + len(self.missing)
        return (
            f"{self.source}: {len(self.matched)}/{total} tensors loaded, {len(self.shape_mismatch)} shape mismatches, "
            f"{len(self.missing)} left at initialisation, {len(self.unexpected)} unused from the checkpoint"
        )


class _Foreign:
    """Stand-in for a class from code we do not have (e.g. the YOLOv7 repository's `models.yolo.Model`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)


_SAFE = {
    ("collections", "OrderedDict"),
    ("copyreg", "_reconstructor"),
    ("builtins", "object"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
}
_TORCH_NAMES = {
    f"{t}Storage" for t in ("Float", "Half", "BFloat16", "Double", "Long", "Int", "Short", "Char", "Byte", "Bool")
} | {"float16", "float32", "float64", "bfloat16", "int64", "uint8"}


class _StubUnpickler(pickle.Unpickler):
    """Unpickles a full-model checkpoint without importing or running its code.

    Only an exact list of harmless callables (tensor rebuilders, storages, dtypes, OrderedDict) and torch's own
    `nn.Module` classes (created without calling `__init__`) are resolved; dotted names, which could reach any
    attribute through a module, are refused; every other class becomes an inert stand-in.
    """

    def find_class(self, module: str, name: str) -> Any:
        if "." in name:
            raise pickle.UnpicklingError(f"refusing dotted global {module}.{name}")
        if (module, name) in _SAFE or (module == "torch" and name in _TORCH_NAMES):
            return super().find_class(module, name)
        if module.startswith("torch.nn.modules.") or module == "torch.nn.parameter":
            obj = super().find_class(module, name)
            if isinstance(obj, type) and issubclass(obj, (nn.Module, torch.Tensor)):
                return obj
            raise pickle.UnpicklingError(f"refusing {module}.{name}: not a module or tensor class")
        return _Foreign


class _StubPickleModule:
    """A `pickle_module` for torch.load that routes every unpickling (zip and legacy formats) through the stub."""

    Unpickler = _StubUnpickler
    __name__ = "fracfl_stub_pickle"

    @staticmethod
    def load(f: Any, **kwargs: Any) -> Any:
        return _StubUnpickler(f, **kwargs).load()


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are executed by torch.load, so they are refused before loading."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in z.namelist())


def _module_state(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten an unpickled module tree (real or stand-in) into a state dict with the usual dotted names."""
    d = getattr(obj, "__dict__", {})
    out: dict[str, torch.Tensor] = {}
    for bucket in ("_parameters", "_buffers"):
        for k, v in (d.get(bucket) or {}).items():
            if isinstance(v, torch.Tensor):
                out[prefix + k] = v.detach()
    for k, child in (d.get("_modules") or {}).items():
        if child is not None:
            out.update(_module_state(child, f"{prefix}{k}."))
    return out


def foreign_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint in any common layout: fracfl, safetensors, a state dict, or a pickled model."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    if path.suffix == ".safetensors":
        try:
            return read_weights(path)[0]
        except DataError:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        if _is_torchscript(path):
            raise DataError(
                path,
                "TorchScript archives are not accepted (loading one runs its code); "
                "save a state dict or safetensors file instead",
            ) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_StubPickleModule)
        except Exception as e:
            raise DataError(path, f"cannot read checkpoint: {e}") from e
    if isinstance(obj, dict):
        for key in ("ema", "model", "state_dict"):  # YOLOv7/Ultralytics keep the best weights under these keys
            if obj.get(key) is not None:
                obj = obj[key]
                break
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    state = _module_state(obj)
    if not state:
        raise DataError(path, "checkpoint holds no tensors that fracfl recognises")
    return state


def init_from_checkpoint(model: nn.Module, path: str | Path) -> MatchReport:
    """Copy every tensor whose name and shape match from a foreign checkpoint into `model`, and say what matched."""
    theirs = foreign_state_dict(path)
    ours = model.state_dict()
    report = MatchReport(source=str(path))
    new_state = {}
    for k, v in ours.items():
        if k not in theirs:
            report.missing.append(k)
        elif tuple(theirs[k].shape) != tuple(v.shape):
            report.shape_mismatch.append((k, tuple(theirs[k].shape), tuple(v.shape)))
        else:
            new_state[k] = theirs[k].to(v.dtype)
            report.matched.append(k)
    report.unexpected = sorted(set(theirs) - set(ours))
    model.load_state_dict(new_state, strict=False)
    return report


def model_from_config(
    arch: str, names: dict[int, str], width: float, depth: float, norm: str, init: str | None = None
) -> tuple[nn.Module, ModelSpec, MatchReport | None]:
    """Build the configured network and, when `init` names a file, start from it.

    A fracfl weights file of the same spec loads strictly; anything else (another spec, a YOLOv7 or Ultralytics
    checkpoint) loads tensor by tensor where name and shape match, and the report says what did.
    """
    spec = ModelSpec(arch=arch, names=dict(names), width=width, depth=depth, norm=norm)
    model = build_model(spec)
    if init is None:
        return model, spec, None
    try:
        tensors, their_spec, _ = read_weights(init)
        if their_spec == spec:
            model.load_state_dict(tensors, strict=True)
            return model, spec, MatchReport(source=str(init), matched=sorted(tensors))
    except DataError:
        pass
    return model, spec, init_from_checkpoint(model, init)
