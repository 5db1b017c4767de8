"""Export one published version: build each variant, measure it against PyTorch, record everything on its card.

A chain of small steps, each of which may fail on its own: open the version (hash-checked), convert to fp32,
derive each variant, compare it with PyTorch on the validation set, write the card. One variant failing never
stops the others; its card entry says why. The files go to `vNNNN/exports/model_<variant>.tflite`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.config import EvalConfig
from common.data.dataset import DetectionDataset
from common.errors import DataError
from common.inference import TorchBackend, export_file
from common.inference.tflite import TFLiteBackend
from common.nn.weights import read_metadata, trained_size
from server.export.config import CALIBRATED, ExportConfig
from server.export.equivalence import compare, reference
from server.export.exporter import calibration_inputs, convert_fp32, quantise
from server.registry import Registry, sha256_file

log = logging.getLogger("fracfl.export")
_MAX_REASON = 300
_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\]+[/\\])+[^\s'\"]*")  # absolute paths, 2+ levels


def reason(e: BaseException, where: str = "") -> str:
    """One line for the card. No file paths (a file name may name a patient): data errors give their problem only,
    and paths inside other messages (e.g. an OSError's file name) are replaced by <path>."""
    text = e.problem if isinstance(e, DataError) else f"{type(e).__name__}: {e}"
    text = _PATH.sub("<path>", " ".join(str(text).split())) or type(e).__name__
    text = f"{where}: {text}" if where else text
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _dataset(path: str | None, split: str, imgsz: int, what: str) -> DetectionDataset:
    if not path:
        raise DataError(what, f"no {what} configured (export.{what.split()[0]} or the server's validation data)")
    try:
        return DetectionDataset.from_data(path, split, imgsz, cache=True)
    except DataError as e:
        raise DataError(what, f"{what} unusable ({e.problem})") from e


def _file_entry(variant: str, folder: Path, imgsz: int) -> dict[str, Any]:
    f = folder / export_file(variant)
    return {
        "variant": variant,
        "file": export_file(variant),
        "status": "ok",
        "bytes": f.stat().st_size,
        "sha256": sha256_file(f),
        "imgsz": imgsz,
    }


def failed_entries(variants: list[str], status: str) -> list[dict[str, Any]]:
    """Card entries for variants that produced nothing (failed, timed out, skipped)."""
    return [{"variant": v, "file": export_file(v), "status": status} for v in variants]


def _calibration(cfg: ExportConfig, val_data: str | None, imgsz: int) -> tuple[list | None, str]:
    """Calibration inputs for the calibrated variants, or None and why not."""
    if not CALIBRATED & set(cfg.variants):
        return None, ""
    try:
        data = _dataset(cfg.calibration or val_data, cfg.calibration_split, imgsz, "calibration data")
        return calibration_inputs(data, cfg.calibration_images), ""
    except Exception as e:  # noqa: BLE001
        return None, reason(e)


def _reference(cfg: ExportConfig, val_data: str | None, model, imgsz: int, eval_cfg: EvalConfig):
    """The validation set and PyTorch's results on it, or (None, None, why not)."""
    try:
        validation = _dataset(cfg.validation or val_data, cfg.validation_split, imgsz, "validation data")
        return validation, reference(TorchBackend(model, imgsz=imgsz), validation, eval_cfg), ""
    except Exception as e:  # noqa: BLE001
        return None, None, f"not compared with PyTorch: {reason(e)}"


def export_version(
    registry: Registry,
    version: str,
    cfg: ExportConfig,
    val_data: str | None = None,
    eval_cfg: EvalConfig | None = None,
    report: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Export `version` as configured and write the results into its card's `exports` section; returns them.

    Raises only when the version itself cannot be opened (missing, or weights not matching the card's hash).
    """
    eval_cfg = eval_cfg or EvalConfig()
    model, spec, _ = registry.load(version)  # refuses weights whose hash does not match the card
    folder = registry.get(version).path
    imgsz = trained_size(read_metadata(folder / "model.safetensors"), folder / "model.safetensors", cfg.imgsz)
    calibration, calibration_problem = _calibration(cfg, val_data, imgsz)
    fp32 = folder / export_file("fp32")
    problem = ""  # why nothing can be built
    if calibration is None and set(cfg.variants) <= CALIBRATED:
        problem = calibration_problem
    else:
        fp32.parent.mkdir(exist_ok=True)
        t0 = time.perf_counter()
        try:
            convert_fp32(model, imgsz, fp32)
        except Exception as e:  # noqa: BLE001  (any converter failure is recorded, never raised into a round)
            fp32.unlink(missing_ok=True)
            problem = reason(e, "fp32 conversion")
        convert_s = time.perf_counter() - t0
    if problem:
        log.warning("%s: export failed: %s", version, problem)
        entries = failed_entries(list(cfg.variants), f"failed: {problem}")
        for entry in entries if report is not None else []:
            report(entry)
        return registry.update_card(version, "exports", entries).card["exports"]

    validation, ref, note = _reference(cfg, val_data, model, imgsz, eval_cfg)
    entries: list[dict[str, Any]] = []
    for variant in cfg.variants:
        out = folder / export_file(variant)
        t = time.perf_counter()
        try:
            if variant in CALIBRATED and calibration is None:
                raise DataError("calibration data", calibration_problem)
            if variant != "fp32":
                quantise(fp32, variant, out, calibration)
            entry = _file_entry(variant, folder, imgsz)
            entry["seconds"] = round(convert_s if variant == "fp32" else time.perf_counter() - t, 2)
        except Exception as e:  # noqa: BLE001
            if variant != "fp32":
                out.unlink(missing_ok=True)
            entry = failed_entries([variant], f"failed: {reason(e)}")[0]
            log.warning("%s: %s export failed: %s", version, variant, entry["status"])
        else:
            if ref is None:
                entry["note"] = note
            else:
                try:
                    edge = TFLiteBackend(out, cfg.threads, names=spec.names)
                    entry.update(compare(variant, edge, ref, validation, eval_cfg, cfg.fixed_images))
                except Exception as e:  # noqa: BLE001
                    entry["note"] = f"not compared with PyTorch: {reason(e)}"
        entries.append(entry)
        if report is not None:
            report(entry)
    if "fp32" not in cfg.variants:
        fp32.unlink(missing_ok=True)  # only the base of the others
    return registry.update_card(version, "exports", entries).card["exports"]
