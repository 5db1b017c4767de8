"""The result of an evaluation: one dataclass whose fields are also the keys of metrics.json."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .error_lists import FalseNegative, FalsePositive, ImageError


@dataclass
class ClassMetrics:
    """One class's box metrics; AP is NaN for a class without GT (it is then left out of mAP, as in Ultralytics)."""

    cls: int
    name: str
    n_gt: int
    n_pred: int  # predictions of this class with score >= conf
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    ap50: float
    ap50_95: float


@dataclass
class Curves:
    """Everything the plots need, kept so they can be redrawn or compared across runs without re-evaluating."""

    pr_recall: np.ndarray  # (1000,) recall grid of the IoU-0.5 PR curve
    pr_precision: np.ndarray  # (nc, 1000) precision envelope per class, NaN rows for classes without GT
    roc_fpr: np.ndarray  # image-level ROC; empty when only one kind of image is present
    roc_tpr: np.ndarray
    roc_thresholds: np.ndarray  # first is +inf (nothing flagged); null in JSON
    conf: np.ndarray  # (K,) confidence grid of the curves below
    precision: np.ndarray  # (K,) pooled box precision at IoU >= iou, score >= conf
    recall: np.ndarray  # (K,)
    f1: np.ndarray  # (K,)
    f1_per_class: np.ndarray  # (nc, K)


@dataclass
class DetectionReport:
    """Box-level detection quality and image-level triage quality of one model on one labelled set.

    Box counts are at the operating point: score >= `conf`, matched class-aware at IoU >= `iou`. NaN marks a
    metric that is undefined on this data; `undefined` says why.
    """

    names: dict[int, str]
    conf: float
    iou: float
    # box level
    n_gt_boxes: int
    n_pred_boxes: int  # all predictions, any score
    map50: float
    map50_95: float
    precision: float
    recall: float
    f1: float
    box_tp: int
    box_fp: int
    box_fn: int
    best_f1: float
    best_f1_conf: float  # setting conf to this gives best_f1
    per_class: list[ClassMetrics]
    confusion_matrix: np.ndarray  # (nc+1, nc+1) rows predicted, columns true, last index background
    # image level
    n_images: int
    n_positive: int
    n_negative: int
    sensitivity: float
    specificity: float
    roc_auc: float
    image_tp: int
    image_fn: int
    image_fp: int
    image_tn: int
    undefined: dict[str, str]  # metric name -> why it is NaN on this data
    # error analysis, worst first
    false_negatives: list[FalseNegative]
    false_positives: list[FalsePositive]
    missed_fractures: list[ImageError]
    false_alarms: list[ImageError]
    curves: Curves

    @property
    def ap50_per_class(self) -> dict[str, float]:
        return {c.name: c.ap50 for c in self.per_class}

    @property
    def ap50_95_per_class(self) -> dict[str, float]:
        return {c.name: c.ap50_95 for c in self.per_class}

    @property
    def image_confusion(self) -> np.ndarray:
        """2x2 counts in the box matrix's layout: rows predicted, columns true, order (fracture, no fracture)."""
        return np.array([[self.image_tp, self.image_fp], [self.image_fn, self.image_tn]])

    def to_dict(self, curves: bool = True) -> dict[str, Any]:
        """Plain JSON types only: arrays become lists, NaN and inf become null (strict JSON has neither)."""
        out = {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["confusion_matrix_layout"] = "rows predicted, columns true; last row/column is background"
        if not curves:
            out.pop("curves")
        return out

    def summary_line(self) -> str:
        """One line for logs and people: box quality, then what triage would do at this conf."""
        return (
            f"boxes: mAP50 {_fmt(self.map50)} mAP50-95 {_fmt(self.map50_95)} | "
            f"P {_fmt(self.precision)} R {_fmt(self.recall)} F1 {_fmt(self.f1)} "
            f"@ conf {self.conf:g} IoU {self.iou:g} | "
            f"images {self.n_images} ({self.n_positive} pos / {self.n_negative} neg): "
            f"sens {_fmt(self.sensitivity)} spec {_fmt(self.specificity)} AUC {_fmt(self.roc_auc)} | "
            f"missed fractures {len(self.missed_fractures)}, false alarms {len(self.false_alarms)}"
        )


def _fmt(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.3f}"


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x
