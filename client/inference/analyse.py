"""Infer and explain one grey image: the step both `fracfl predict` and the DICOM pipeline run after reading."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from client.inference.explain import can_explain, gradcam
from client.inference.render import annotate
from common.config import EvalConfig
from common.inference import Backend, Prediction, Predictor


@dataclass
class Analysis:
    prediction: Prediction
    heatmap: np.ndarray | None  # [0, 1] float32 in image pixels; None when the backend has no gradients
    picture: np.ndarray  # RGB uint8: image, heatmap, boxes and labels

    def summary(self) -> dict:
        """JSON-ready verdict and findings (boxes in original pixels, x1 y1 x2 y2)."""
        p = self.prediction
        return {
            "probability": round(p.probability, 4),
            "positive": p.positive,
            "operating_point": p.conf,
            "findings": p.findings(),
            "heatmap": self.heatmap is not None,
        }


class Analyser:
    """A loaded model with its operating point; `model_version` is stamped on every picture and result."""

    def __init__(self, backend: Backend, cfg: EvalConfig, model_version: str, heatmap: bool = True):
        self.backend = backend
        self.predictor = Predictor(backend, cfg)
        self.model_version = model_version
        self.heatmap = heatmap and can_explain(backend)

    def __call__(self, image: np.ndarray) -> Analysis:
        prediction = self.predictor.predict(image)
        heat = gradcam(self.backend, image, prediction.conf) if self.heatmap else None  # type: ignore[arg-type]
        verdict = "FRACTURE" if prediction.positive else "no fracture"
        header = f"{verdict} p={prediction.probability:.2f} model {self.model_version}"
        return Analysis(prediction, heat, annotate(image, prediction.findings(), heat, header))


def write_pictures(analysis: Analysis, folder: Path, stem: str) -> list[Path]:
    """annotated PNG, heatmap PNG (when there is one) and the JSON summary, each written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [_atomic_png(folder / f"{stem}.annotated.png", analysis.picture[..., ::-1])]
    if analysis.heatmap is not None:
        files.append(write_heatmap(analysis.heatmap, folder / f"{stem}.heatmap.png"))
    return files


def write_heatmap(heatmap: np.ndarray, path: Path) -> Path:
    """The [0, 1] heatmap as a colour PNG (JET), written atomically."""
    return _atomic_png(path, cv2.applyColorMap((heatmap * 255).astype(np.uint8), cv2.COLORMAP_JET))


def atomic_write(path: Path, data: bytes) -> Path:
    """Write through a temporary name then rename, so a reader (the sender, a viewer) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def atomic_json(path: Path, obj: dict) -> Path:
    return atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def _atomic_png(path: Path, bgr: np.ndarray) -> Path:
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path.name}")
    return atomic_write(path, buf.tobytes())
