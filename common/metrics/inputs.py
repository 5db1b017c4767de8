"""The per-image input of the metrics: predictions and ground truth in one coordinate frame."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np


def _rows(a: object, width: int, what: str, image_id: str) -> np.ndarray:
    """Return `a` as a float (k, width) array; an empty input of any shape becomes (0, width)."""
    arr = np.asarray(a, dtype=float)
    if arr.size == 0:
        return np.zeros((0, width))
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(f"image {image_id!r}: {what} must have shape (k, {width}), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"image {image_id!r}: {what} contains NaN or inf")
    return arr


@dataclass
class ImageResult:
    """One image's NMS-ed predictions and its ground truth, both in original-image pixels.

    Both must be in the same frame (original pixels, not letterboxed network input) or IoU means nothing.
    `pred` rows are x1, y1, x2, y2, score, cls; `gt` rows are cls, x1, y1, x2, y2 (YOLO label order).
    Empty arrays of any shape are accepted for images without boxes.
    """

    image_id: str
    pred: np.ndarray
    gt: np.ndarray

    def __post_init__(self) -> None:
        self.image_id = str(self.image_id)
        self.pred = _rows(self.pred, 6, "pred", self.image_id)
        self.gt = _rows(self.gt, 5, "gt", self.image_id)

    @property
    def pred_boxes(self) -> np.ndarray:
        return self.pred[:, :4]

    @property
    def pred_scores(self) -> np.ndarray:
        return self.pred[:, 4]

    @property
    def pred_cls(self) -> np.ndarray:
        return self.pred[:, 5].astype(int)

    @property
    def gt_boxes(self) -> np.ndarray:
        return self.gt[:, 1:5]

    @property
    def gt_cls(self) -> np.ndarray:
        return self.gt[:, 0].astype(int)


def check_classes(results: list[ImageResult], nc: int) -> None:
    """Reject class ids outside `names`, which would otherwise index past the confusion matrix silently."""
    for r in results:
        for what, cls in (("pred", r.pred[:, 5]), ("gt", r.gt[:, 0])):
            bad = (cls != np.round(cls)) | (cls < 0) | (cls >= nc)
            if bad.any():
                raise ValueError(
                    f"image {r.image_id!r}: {what} class {cls[bad][0]:g} is not one of the {nc} classes in `names`"
                )
    dup = [i for i, n in Counter(r.image_id for r in results).items() if n > 1]
    if dup:
        raise ValueError(f"image id {dup[0]!r} appears more than once; error lists would be ambiguous")
