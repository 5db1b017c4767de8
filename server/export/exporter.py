"""TFLite (LiteRT) builds of a detector: Ultralytics' exporter converts once, ai-edge-quantizer derives the rest.

Ultralytics' LiteRT export (litert-torch, straight from PyTorch) fuses the network, puts the Detect head in export
mode and divides the box rows by the input size. Its quantised variants re-run the whole conversion and then apply
an ai-edge-quantizer recipe to the fp32 file, calibrating on images from an Ultralytics data yaml. Here the fp32
file is converted once and the same recipes are applied to it, calibrated on images prepared by fracfl's own
letterbox (exactly what inference feeds the model), read from local files only: nothing is downloaded and no label
cache is written next to the data.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import types
import zipfile
from pathlib import Path

import numpy as np
import torch

from common import offline  # noqa: F401  (Ultralytics' offline switches before its first import)
from common.data.dataset import DetectionDataset
from common.errors import FracflError
from common.inference.predictor import to_input
from server.export.config import CALIBRATED


class ExportError(FracflError):
    """An export step failed; the message says which and why (recorded on the model card)."""


@contextlib.contextmanager
def _quiet(enabled: bool = True):
    """The converter and quantiser print progress tables and bars (stdout, stderr); keep them out of the logs.
    Failures still surface as exceptions, which are recorded."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def calibration_inputs(data: DetectionDataset, n: int) -> list[np.ndarray]:
    """Up to `n` network inputs (1, 3, S, S) float32, spread over the dataset, letterboxed as at inference."""
    if len(data) == 0:
        raise ExportError("int8 calibration: the calibration set has no images")
    idx = np.unique(np.linspace(0, len(data) - 1, min(n, len(data))).round().astype(int))
    return [to_input(data.prepared(int(i)).img).unsqueeze(0).numpy() for i in idx]


def _keep_group_norm(model: torch.nn.Module) -> None:
    """Ultralytics' fuse() folds every Conv's `bn` into its convolution, which only BatchNorm allows; GroupNorm
    (the DP-SGD form of the model) normalises each image by its own statistics, so it stays a layer of its own."""
    from ultralytics.nn.modules import Conv

    for mod in model.modules():
        if isinstance(mod, Conv) and isinstance(getattr(mod, "bn", None), torch.nn.GroupNorm):
            mod.gn = mod.bn
            del mod.bn  # fuse() and is_fused() look for `bn`
            mod.forward = types.MethodType(lambda self, x: self.act(self.gn(self.conv(x))), mod)


def convert_fp32(model: torch.nn.Module, imgsz: int, out: Path, quiet: bool = True) -> Path:
    """Ultralytics' LiteRT export of `model` at `imgsz`, written to `out` (a .tflite with metadata.json inside)."""
    from ultralytics.engine.exporter import Exporter

    m = copy.deepcopy(model).cpu().eval()
    _keep_group_norm(m)
    m.task = "detect"  # what Ultralytics' checkpoints carry; our models are built from a yaml dict
    work = out.parent / f".convert-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    m.pt_path = str(work / "model.pt")  # the exporter names its output after this (the file need not exist)
    try:
        with _quiet(quiet):
            f = Exporter(overrides={"format": "litert", "imgsz": imgsz, "batch": 1, "device": "cpu", "verbose": False})(
                m
            )
        if not f or not Path(f).is_file():
            raise ExportError("fp32 conversion produced no file")
        Path(f).replace(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _load_recipe(qt, variant: str) -> None:
    """The ai-edge-quantizer recipe for `variant`, as Ultralytics' torch2litert applies it (fp16: float casting of
    convolution weights, which Ultralytics leaves to the GPU delegate at run time)."""
    from ai_edge_quantizer import qtyping, quantizer, recipe

    if variant == "int8":
        qt.load_quantization_recipe(recipe.static_wi8_ai8())
    elif variant == "w8a32":
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    elif variant == "fp16":
        half = qtyping.OpQuantizationConfig(
            weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
            compute_precision=qtyping.ComputePrecision.FLOAT,
        )
        for op in (qtyping.TFLOperationName.CONV_2D, qtyping.TFLOperationName.DEPTHWISE_CONV_2D):
            qt.update_quantization_recipe(
                regex=".*", operation_name=op, op_config=half, algorithm_key=quantizer.AlgorithmName.FLOAT_CASTING
            )
    else:
        raise ExportError(f"unknown variant {variant!r}")


def quantise(
    fp32: Path, variant: str, out: Path, calibration: list[np.ndarray] | None = None, quiet: bool = True
) -> Path:
    """Derive `variant` from the fp32 file. Graph input and output stay float32 (as in Ultralytics' export), so
    every variant takes the same input and gives the same output layout."""
    from ai_edge_quantizer import qtyping, quantizer, recipe

    if variant in CALIBRATED and not calibration:
        raise ExportError(f"{variant} needs calibration images (export.calibration / --calibration)")
    with _quiet(quiet):
        qt = quantizer.Quantizer(str(fp32))
        _load_recipe(qt, variant)
        if variant in CALIBRATED:
            for op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
                qt.update_quantization_recipe(
                    regex=".*", operation_name=op, algorithm_key=recipe.AlgorithmName.NO_QUANTIZE
                )
            samples = {"serving_default": [{"args_0": x} for x in calibration]}
            result = qt.quantize(calibration_result=qt.calibrate(samples))
        else:
            result = qt.quantize()
        tmp = out.with_name(out.name + ".tmp")
        result.export_model(str(tmp), overwrite=True)
    _copy_metadata(fp32, tmp, variant)
    os.chmod(tmp, 0o644)  # the quantiser writes executable files; these are data
    tmp.replace(out)
    return out


def _copy_metadata(src: Path, dst: Path, variant: str) -> None:
    """Carry the fp32 file's metadata (class names, input size) into the derived file, so it is self-contained."""
    from common.inference.tflite import read_metadata

    meta = read_metadata(src)
    meta["variant"] = variant
    with zipfile.ZipFile(dst, "a", zipfile.ZIP_DEFLATED) as z:
        z.writestr("metadata.json", json.dumps(meta, default=str))
