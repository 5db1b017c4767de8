"""Per-box and per-image error records, sorted worst first so a reviewer starts with the most telling cases."""

from __future__ import annotations

from dataclasses import dataclass

NEAR_IOU = 0.1  # a prediction overlapping a missed GT by at least this much counts as "almost found it"


@dataclass
class FalseNegative:
    """A GT box not matched at the operating point.

    `best_score` is the highest score of any prediction (any class, any score) with IoU >= 0.1 with it: near
    `conf` means the threshold lost it, 0 means the model never looked there.
    """

    image_id: str
    cls: int
    cls_name: str
    box: tuple[float, float, float, float]
    best_score: float


@dataclass
class FalsePositive:
    """A prediction with score >= conf not matched to a GT of its class.

    `best_iou` is its highest IoU with any GT (any class): high means a duplicate, a wrong class or a loose box;
    0 means a box on nothing.
    """

    image_id: str
    cls: int
    cls_name: str
    box: tuple[float, float, float, float]
    score: float
    best_iou: float


@dataclass
class ImageError:
    """An image the triage rule gets wrong: a missed fracture (positive, score < conf) or a false alarm."""

    image_id: str
    score: float
    n_gt: int
    n_pred: int  # predictions with score >= conf


def sort_worst_first(
    false_negatives: list[FalseNegative],
    false_positives: list[FalsePositive],
    missed: list[ImageError],
    false_alarms: list[ImageError],
) -> None:
    """Sort in place: misses by lowest score (most confidently missed), false alarms by highest score."""
    false_negatives.sort(key=lambda e: (e.best_score, e.image_id))
    false_positives.sort(key=lambda e: (-e.score, e.image_id))
    missed.sort(key=lambda e: (e.score, e.image_id))
    false_alarms.sort(key=lambda e: (-e.score, e.image_id))
