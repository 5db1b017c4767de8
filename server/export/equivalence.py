"""Is an edge build the same detector? Metrics of both backends on one validation set, through one code path.

Both backends run through `predict_dataset` (the same letterbox, decoding, NMS and operating point as every
evaluation), so any difference comes from the runtime and the number formats alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.config import EvalConfig
from common.data.dataset import DetectionDataset
from common.engine.evaluate import predict_dataset
from common.inference.backend import Backend
from common.inference.predictor import to_input
from common.metrics import ImageResult, evaluate_detections
from common.metrics.triage import image_score

# Goals from the edge issue: largest mAP50 loss vs PyTorch, in points (0.1 point = 0.001 mAP50).
GOAL_POINTS = {"fp32": 0.1, "fp16": 0.1, "w8a32": 1.5, "int8": 1.5}
TOP_BOXES = 5  # PyTorch's highest-scoring boxes per image whose displacement is always measured


@dataclass(frozen=True)
class Reference:
    """The PyTorch model's predictions and headline metrics on the validation set, computed once per version."""

    backend: Backend
    results: list[ImageResult]
    map50: float
    sensitivity: float


def _metrics(results: list[ImageResult], names: dict[int, str], cfg: EvalConfig) -> tuple[float, float]:
    report = evaluate_detections(results, names, conf=cfg.conf, iou=cfg.iou)
    return float(report.map50), float(report.sensitivity)


def reference(backend: Backend, data: DetectionDataset, cfg: EvalConfig) -> Reference:
    results = predict_dataset(backend, data, cfg, torch.device("cpu"), progress=False)
    return Reference(backend, results, *_metrics(results, backend.names, cfg))


@torch.inference_mode()
def largest_box_difference(ref: Backend, other: Backend, data: DetectionDataset, n_images: int, conf: float) -> float:
    """Largest difference of a box coordinate (centre x/y, width, height; network pixels) between the two backends'
    raw head outputs on the first `n_images` images, over the boxes that matter: those PyTorch scores at or above
    the operating point, and each image's `TOP_BOXES` highest-scoring ones. Same anchors, so no matching is needed.
    """
    worst = 0.0
    for i in range(min(n_images, len(data))):
        x = to_input(data.prepared(i).img).unsqueeze(0)
        a, b = ref(x)[0].float(), other(x)[0].float()
        score = a[4:].max(0).values
        keep = (score >= conf) | (score >= score.topk(min(TOP_BOXES, score.numel())).values[-1])
        worst = max(worst, float((a[:4, keep] - b[:4, keep]).abs().max()))
    return worst


def compare(
    variant: str, backend: Backend, ref: Reference, data: DetectionDataset, cfg: EvalConfig, fixed_images: int
) -> dict[str, float | bool | None]:
    """The card's equivalence figures for one variant: its metrics, PyTorch's, the gap and whether it meets the goal."""
    results = predict_dataset(backend, data, cfg, torch.device("cpu"), progress=False)
    map50, sens = _metrics(results, backend.names, cfg)
    delta = None if np.isnan(map50) or np.isnan(ref.map50) else round(100 * (map50 - ref.map50), 3)
    return {
        "map50": map50,
        "map50_torch": ref.map50,
        "map50_delta_points": delta,
        "sensitivity": sens,
        "sensitivity_torch": ref.sensitivity,
        "max_box_diff_px": largest_box_difference(ref.backend, backend, data, fixed_images, cfg.conf),
        "max_score_diff": _largest_score_difference(ref.results, results),
        "verdicts_agree": _verdicts_agree(ref.results, results, cfg.conf),
        "meets_goal": None if delta is None else bool(abs(delta) <= GOAL_POINTS[variant]),
        "n_images": len(data),
    }


def _image_score(r: ImageResult) -> float:
    return image_score(r.pred_scores)


def _largest_score_difference(ref: list[ImageResult], other: list[ImageResult]) -> float:
    """Largest difference of the image-level fracture score (what triage ranks by) over the validation images:
    informative even for a weak model whose mAP is near zero for both backends."""
    return max((abs(_image_score(a) - _image_score(b)) for a, b in zip(ref, other)), default=0.0)


def _verdicts_agree(ref: list[ImageResult], other: list[ImageResult], conf: float) -> float:
    """Share of images with the same positive/negative verdict at the operating point."""
    agree = [(_image_score(a) >= conf) == (_image_score(b) >= conf) for a, b in zip(ref, other)]
    return float(np.mean(agree)) if agree else float("nan")
