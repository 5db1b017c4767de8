"""Greedy IoU matching of predictions to ground truth, the same policy as Ultralytics' detection validator."""

from __future__ import annotations

import numpy as np
import torch
from ultralytics.utils.metrics import box_iou

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCO / Ultralytics mAP50-95 thresholds


def iou_matrix(gt_boxes: np.ndarray, pred_boxes: np.ndarray) -> np.ndarray:
    """Pairwise IoU, shape (m gt, n pred), via Ultralytics' `box_iou` so values equal the validator's."""
    if len(gt_boxes) == 0 or len(pred_boxes) == 0:
        return np.zeros((len(gt_boxes), len(pred_boxes)))
    return box_iou(torch.from_numpy(gt_boxes), torch.from_numpy(pred_boxes)).double().numpy()


def greedy_match(
    iou: np.ndarray,
    pred_scores: np.ndarray,
    pred_cls: np.ndarray,
    gt_cls: np.ndarray,
    thresholds: np.ndarray,
    class_aware: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Match predictions to GT at several IoU thresholds at once.

    Predictions are visited by descending score (stable); each claims its best still-unclaimed GT whose IoU is
    >= the threshold, one GT per prediction. This is `BaseValidator.match_predictions` (non-scipy branch), which
    also returns which prediction claimed each GT so misses can be listed. Because the order is by score, the
    matching of the predictions above any confidence is independent of those below it.

    Returns:
        correct: (n, T) bool, prediction j is a true positive at threshold t.
        gt_match: (m, T) int, index of the prediction that claimed GT i at threshold t, -1 when none.
    """
    thresholds = np.asarray(thresholds, dtype=float)
    n, m, t = len(pred_scores), len(gt_cls), len(thresholds)
    correct = np.zeros((n, t), dtype=bool)
    gt_match = np.full((m, t), -1, dtype=int)
    if n == 0 or m == 0:
        return correct, gt_match
    if class_aware:
        iou = iou * (gt_cls[:, None] == pred_cls[None, :])
    cols = np.arange(t)
    matched = np.zeros((m, t), dtype=bool)
    for j in np.argsort(-pred_scores, kind="stable"):
        available = np.where(matched, 0.0, iou[:, j, None])  # IoU with each unclaimed GT, per threshold
        k = available.argmax(0)
        ok = (available[k, cols] >= thresholds) & (available[k, cols] > 0)
        correct[j] = ok
        matched[k[ok], cols[ok]] = True
        gt_match[k[ok], cols[ok]] = j
    return correct, gt_match
