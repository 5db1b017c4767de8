"""Image-level (study) metrics: what a triage user sees is one score per radiograph, not boxes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def image_score(pred_scores: np.ndarray) -> float:
    """Highest box score in the image, 0 when the model drew no box: the image is flagged when this >= conf."""
    return float(pred_scores.max()) if len(pred_scores) else 0.0


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUC: P(score of a positive > score of a negative), ties counted half; NaN without both classes.

    Ties matter here because every image without a box scores exactly 0.
    """
    pos, neg = np.sort(scores[positive]), np.sort(scores[~positive])
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    below = np.searchsorted(neg, pos, side="left").sum(dtype=np.int64)  # negatives strictly below each positive
    tied = np.searchsorted(neg, pos, side="right").sum(dtype=np.int64) - below
    return float((below + 0.5 * tied) / (len(pos) * len(neg)))


@dataclass
class RocCurve:
    """ROC points for the rule `score >= threshold`; the first point (0, 0) has threshold +inf."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> RocCurve:
    """One point per distinct score, so tied scores move along a diagonal and the trapezoid area equals `roc_auc`."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return RocCurve(np.zeros(0), np.zeros(0), np.zeros(0))
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps, fps = np.cumsum(y)[last], np.cumsum(~y)[last]
    return RocCurve(fpr=np.r_[0.0, fps / n_neg], tpr=np.r_[0.0, tps / n_pos], thresholds=np.r_[np.inf, s[last]])


@dataclass
class ImageCounts:
    """Image-level confusion counts at one confidence: positive = has a GT box, flagged = image score >= conf."""

    tp: int
    fn: int
    fp: int
    tn: int


def image_counts(scores: np.ndarray, positive: np.ndarray, conf: float) -> ImageCounts:
    flagged = scores >= conf
    return ImageCounts(
        tp=int((flagged & positive).sum()),
        fn=int((~flagged & positive).sum()),
        fp=int((flagged & ~positive).sum()),
        tn=int((~flagged & ~positive).sum()),
    )
