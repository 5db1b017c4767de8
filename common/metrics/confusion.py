"""Box-level confusion matrix with a background row and column, in Ultralytics' layout."""

from __future__ import annotations

import numpy as np

from .matching import greedy_match


def add_image(
    matrix: np.ndarray,
    iou: np.ndarray,
    pred_scores: np.ndarray,
    pred_cls: np.ndarray,
    gt_cls: np.ndarray,
    conf: float,
    iou_thr: float,
) -> None:
    """Add one image to `matrix` (rows predicted, columns true, last index background), in place.

    Matching is class-agnostic so a box of the wrong class lands off the diagonal instead of as one FP plus one FN,
    as in Ultralytics' `ConfusionMatrix.process_batch`; unlike it, thresholds are inclusive (score >= conf,
    IoU >= iou) to agree with the rest of this report.
    """
    nc = matrix.shape[0] - 1
    keep = pred_scores >= conf
    iou, pred_scores, pred_cls = iou[:, keep], pred_scores[keep], pred_cls[keep]
    _, gt_match = greedy_match(iou, pred_scores, pred_cls, gt_cls, np.array([iou_thr]), class_aware=False)
    gt_match = gt_match[:, 0]
    for g, j in zip(gt_cls, gt_match):
        matrix[pred_cls[j] if j >= 0 else nc, g] += 1
    unmatched = np.ones(len(pred_cls), dtype=bool)
    unmatched[gt_match[gt_match >= 0]] = False
    np.add.at(matrix, (pred_cls[unmatched], nc), 1)
