"""Box-level metrics: AP through Ultralytics (so mAP is comparable with its validator) and exact counts at a conf."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ultralytics.utils.metrics import ap_per_class

F1_CONF_GRID = np.linspace(0.0, 1.0, 1001)  # confidences at which the F1/P/R-vs-confidence curves are kept


def ratio(num: float, den: float) -> float:
    """num / den, NaN when den is 0: an undefined rate must not read as a perfect or a zero score."""
    return float(num) / float(den) if den else float("nan")


def f1_score(tp: float, fp: float, fn: float) -> float:
    """2TP / (2TP + FP + FN): defined whenever there is any GT or any prediction, unlike 2PR / (P + R)."""
    return ratio(2 * tp, 2 * tp + fp + fn)


@dataclass
class APResult:
    """Per-class AP at the ten IoU thresholds and the IoU-0.5 PR envelope, NaN rows for classes without GT."""

    ap: np.ndarray  # (nc, 10)
    pr_recall: np.ndarray  # (1000,)
    pr_precision: np.ndarray  # (nc, 1000)


def average_precision(
    tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray, nc: int
) -> APResult:
    """Run Ultralytics' `ap_per_class` (101-point COCO interpolation) and spread its rows back over all classes.

    `ap_per_class` only reports classes that have GT; mAP is the mean over those, as in Ultralytics.
    """
    ap = np.full((nc, tp.shape[1]), np.nan)
    prec = np.full((nc, 1000), np.nan)
    x = np.linspace(0, 1, 1000)
    if len(target_cls):
        out = ap_per_class(tp, conf, pred_cls, target_cls)
        cls_ap, classes, x, prec_values = out[5], out[6], out[10], out[11]
        ap[classes] = cls_ap
        prec[classes] = prec_values
    return APResult(ap=ap, pr_recall=x, pr_precision=prec)


@dataclass
class ConfCurves:
    """Pooled and per-class box P/R/F1 as functions of the confidence threshold (score >= conf kept)."""

    conf: np.ndarray  # (K,)
    precision: np.ndarray  # (K,)
    recall: np.ndarray  # (K,)
    f1: np.ndarray  # (K,)
    f1_per_class: np.ndarray  # (nc, K)


def _counts_above(tp: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(#TP, #predictions) with score >= each threshold, exactly, by one sort."""
    order = np.argsort(-scores, kind="stable")
    s, cum_tp = scores[order], np.concatenate(([0], np.cumsum(tp[order])))
    n_above = len(s) - np.searchsorted(s[::-1], thresholds, side="left")  # s[::-1] is ascending
    return cum_tp[n_above], n_above


def conf_curves(
    tp: np.ndarray, scores: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray, nc: int
) -> ConfCurves:
    """Exact P/R/F1 at each grid confidence; `tp` is the matching at the operating IoU (prefix-stable in score)."""
    grid = F1_CONF_GRID
    ntp, npred = _counts_above(tp, scores, grid)
    n_gt = len(target_cls)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(npred > 0, ntp / np.maximum(npred, 1), np.nan)
        recall = ntp / n_gt if n_gt else np.full(len(grid), np.nan)
        den = npred + n_gt  # 2TP + FP + FN
        f1 = np.where(den > 0, 2 * ntp / np.maximum(den, 1), np.nan)
        per_class = np.full((nc, len(grid)), np.nan)
        for c in range(nc):
            keep = pred_cls == c
            ctp, cnp = _counts_above(tp[keep], scores[keep], grid)
            cden = cnp + int((target_cls == c).sum())
            per_class[c] = np.where(cden > 0, 2 * ctp / np.maximum(cden, 1), np.nan)
    return ConfCurves(conf=grid, precision=precision, recall=recall, f1=f1, f1_per_class=per_class)


def best_f1(tp: np.ndarray, scores: np.ndarray, n_gt: int) -> tuple[float, float]:
    """(F1, conf) maximising pooled box F1 over every distinct score, exact rather than on a grid.

    Setting `conf` to the returned value reproduces the returned F1. Ties go to the highest confidence.
    """
    if len(scores) == 0 or n_gt == 0:
        return float("nan"), float("nan")
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each group of equal scores
    ntp = np.cumsum(tp[order])[last]
    npred = last + 1
    f1 = 2 * ntp / (npred + n_gt)  # 2TP / (2TP + FP + FN)
    i = int(np.argmax(f1))
    return float(f1[i]), float(s[last[i]])
