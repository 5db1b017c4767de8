"""`evaluate_detections`: one pass over the images, then box-level and image-level metrics from pooled arrays."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import confusion
from .detection import APResult, average_precision, best_f1, conf_curves, f1_score, ratio
from .error_lists import NEAR_IOU, FalseNegative, FalsePositive, ImageError, sort_worst_first
from .inputs import ImageResult, check_classes
from .matching import IOU_THRESHOLDS, greedy_match, iou_matrix
from .report import ClassMetrics, Curves, DetectionReport
from .triage import image_counts, image_score, roc_auc, roc_curve


@dataclass
class _Pooled:
    """Per-prediction and per-image facts gathered in one pass, so every metric after it is array arithmetic."""

    nc: int
    tp: list[np.ndarray] = field(default_factory=list)  # (n, 10) hits at IOU_THRESHOLDS, for AP
    tp_op: list[np.ndarray] = field(default_factory=list)  # (n,) hits at the operating IoU, any score
    scores: list[np.ndarray] = field(default_factory=list)
    pred_cls: list[np.ndarray] = field(default_factory=list)
    target_cls: list[np.ndarray] = field(default_factory=list)
    image_scores: list[float] = field(default_factory=list)
    image_positive: list[bool] = field(default_factory=list)
    false_negatives: list[FalseNegative] = field(default_factory=list)
    false_positives: list[FalsePositive] = field(default_factory=list)
    missed: list[ImageError] = field(default_factory=list)
    false_alarms: list[ImageError] = field(default_factory=list)
    matrix: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.matrix = np.zeros((self.nc + 1, self.nc + 1), dtype=int)

    def cat(self, name: str, width: int | None = None, dtype: type = float) -> np.ndarray:
        parts = getattr(self, name)
        empty = np.zeros((0, width) if width else 0, dtype=dtype)
        return np.concatenate(parts) if parts else empty


def _box(b: np.ndarray) -> tuple[float, float, float, float]:
    return tuple(float(v) for v in b)  # type: ignore[return-value]


def _scan(results: list[ImageResult], names: dict[int, str], conf: float, iou: float) -> _Pooled:
    """Match every image once at the ten AP thresholds plus the operating IoU, and record its errors."""
    pool = _Pooled(nc=len(names))
    thresholds = np.append(IOU_THRESHOLDS, iou)  # column -1 is the operating IoU
    for r in results:
        s, pc, gc = r.pred_scores, r.pred_cls, r.gt_cls
        ious = iou_matrix(r.gt_boxes, r.pred_boxes)
        correct, gt_match = greedy_match(ious, s, pc, gc, thresholds)
        above = s >= conf
        pool.tp.append(correct[:, :-1])
        pool.tp_op.append(correct[:, -1])
        pool.scores.append(s)
        pool.pred_cls.append(pc)
        pool.target_cls.append(gc)
        confusion.add_image(pool.matrix, ious, s, pc, gc, conf, iou)

        # Matching runs by descending score, so the predictions >= conf match exactly as they would alone:
        # a GT claimed only by a prediction below conf is missed at the operating point.
        gm = gt_match[:, -1]
        found = np.zeros(len(gc), dtype=bool)
        found[gm >= 0] = above[gm[gm >= 0]]
        for i in np.flatnonzero(~found):
            near = ious[i] >= NEAR_IOU
            best = float(s[near].max()) if near.any() else 0.0
            pool.false_negatives.append(
                FalseNegative(r.image_id, int(gc[i]), names[int(gc[i])], _box(r.gt_boxes[i]), best)
            )
        for j in np.flatnonzero(above & ~correct[:, -1]):
            best_iou = float(ious[:, j].max()) if len(gc) else 0.0
            pool.false_positives.append(
                FalsePositive(r.image_id, int(pc[j]), names[int(pc[j])], _box(r.pred_boxes[j]), float(s[j]), best_iou)
            )

        score, positive = image_score(s), len(gc) > 0
        pool.image_scores.append(score)
        pool.image_positive.append(positive)
        if positive != (score >= conf):
            (pool.missed if positive else pool.false_alarms).append(
                ImageError(r.image_id, score, len(gc), int(above.sum()))
            )
    sort_worst_first(pool.false_negatives, pool.false_positives, pool.missed, pool.false_alarms)
    return pool


def _per_class(
    names: dict[int, str],
    aps: APResult,
    tp_op: np.ndarray,
    above: np.ndarray,
    pred_cls: np.ndarray,
    target_cls: np.ndarray,
) -> list[ClassMetrics]:
    out = []
    for c, name in sorted(names.items()):
        keep = (pred_cls == c) & above
        n_gt, n_pred, tp = int((target_cls == c).sum()), int(keep.sum()), int(tp_op[keep].sum())
        out.append(
            ClassMetrics(
                cls=c,
                name=name,
                n_gt=n_gt,
                n_pred=n_pred,
                tp=tp,
                fp=n_pred - tp,
                fn=n_gt - tp,
                precision=ratio(tp, n_pred),
                recall=ratio(tp, n_gt),
                f1=f1_score(tp, n_pred - tp, n_gt - tp),
                ap50=float(aps.ap[c, 0]),
                ap50_95=float(np.mean(aps.ap[c])),
            )
        )
    return out


def _undefined(
    n_images: int,
    n_gt: int,
    n_pred: int,
    n_pred_op: int,
    n_pos: int,
    n_neg: int,
    conf: float,
    per_class: list[ClassMetrics],
) -> dict[str, str]:
    """Why each NaN in the report is NaN, keyed by field name, so a reader never mistakes 'undefined' for 'bad'."""
    why: dict[str, str] = {}
    if not n_images:
        why["all"] = "no images: every metric is undefined"
    if not n_gt:
        why["map50"] = why["map50_95"] = "no ground-truth boxes: AP is undefined"
        why["recall"] = why["best_f1"] = "no ground-truth boxes"
    elif not n_pred:
        why["best_f1"] = "no predictions at all: there is no confidence to choose"
    if not n_pred_op:
        why["precision"] = f"no predictions with score >= conf {conf:g}"
    if not n_gt and not n_pred_op:
        why["f1"] = f"no ground-truth boxes and no predictions with score >= conf {conf:g}"
    if not n_pos:
        why["sensitivity"] = "no positive images (none has a ground-truth box)"
    if not n_neg:
        why["specificity"] = "no negative images (every image has a ground-truth box)"
    if not (n_pos and n_neg):
        why["roc_auc"] = f"AUC needs both kinds of image; got {n_pos} positive and {n_neg} negative"
    for c in per_class:
        if not c.n_gt:
            why[f"ap[{c.name}]"] = f"no ground-truth boxes of class {c.name!r}: AP undefined, left out of mAP"
    return why


def evaluate_detections(
    results: Sequence[ImageResult], names: dict[int, str], conf: float = 0.25, iou: float = 0.5
) -> DetectionReport:
    """Score NMS-ed predictions against GT at box level (mAP, P/R/F1) and image level (triage sens/spec/AUC).

    `conf` and `iou` fix the operating point (score >= conf, IoU >= iou); mAP does not depend on them. Empty inputs
    give zeros where a count is zero and NaN where a rate is undefined, with the reason in `report.undefined`.
    """
    nc = len(names)
    if nc == 0 or set(names) != set(range(nc)):
        raise ValueError(f"`names` must map every class id 0..nc-1 to a name, got keys {sorted(names)}")
    if not 0.0 <= conf <= 1.0:
        raise ValueError(f"conf must be in [0, 1], got {conf}")
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou must be in (0, 1], got {iou}")
    results = list(results)
    check_classes(results, nc)
    pool = _scan(results, names, conf, iou)

    tp10, tp_op = pool.cat("tp", 10, bool), pool.cat("tp_op", dtype=bool)
    scores = pool.cat("scores")
    pred_cls, target_cls = pool.cat("pred_cls", dtype=int), pool.cat("target_cls", dtype=int)
    img_s, img_p = np.array(pool.image_scores, dtype=float), np.array(pool.image_positive, dtype=bool)

    aps = average_precision(tp10, scores, pred_cls, target_cls, nc)
    has_gt = ~np.isnan(aps.ap[:, 0])
    above = scores >= conf
    per_class = _per_class(names, aps, tp_op, above, pred_cls, target_cls)
    n_gt, n_pred_op = len(target_cls), int(above.sum())
    box_tp = int(tp_op[above].sum())
    box_fp, box_fn = n_pred_op - box_tp, n_gt - box_tp
    bf1, bconf = best_f1(tp_op, scores, n_gt)
    counts = image_counts(img_s, img_p, conf)
    n_pos, n_neg = int(img_p.sum()), int((~img_p).sum())
    roc = roc_curve(img_s, img_p)
    cc = conf_curves(tp_op, scores, pred_cls, target_cls, nc)

    return DetectionReport(
        names=dict(names),
        conf=float(conf),
        iou=float(iou),
        n_gt_boxes=n_gt,
        n_pred_boxes=len(scores),
        map50=float(aps.ap[has_gt, 0].mean()) if has_gt.any() else float("nan"),
        map50_95=float(aps.ap[has_gt].mean()) if has_gt.any() else float("nan"),
        precision=ratio(box_tp, n_pred_op),
        recall=ratio(box_tp, n_gt),
        f1=f1_score(box_tp, box_fp, box_fn),
        box_tp=box_tp,
        box_fp=box_fp,
        box_fn=box_fn,
        best_f1=bf1,
        best_f1_conf=bconf,
        per_class=per_class,
        confusion_matrix=pool.matrix,
        n_images=len(results),
        n_positive=n_pos,
        n_negative=n_neg,
        sensitivity=ratio(counts.tp, n_pos),
        specificity=ratio(counts.tn, n_neg),
        roc_auc=roc_auc(img_s, img_p),
        image_tp=counts.tp,
        image_fn=counts.fn,
        image_fp=counts.fp,
        image_tn=counts.tn,
        undefined=_undefined(len(results), n_gt, len(scores), n_pred_op, n_pos, n_neg, conf, per_class),
        false_negatives=pool.false_negatives,
        false_positives=pool.false_positives,
        missed_fractures=pool.missed,
        false_alarms=pool.false_alarms,
        curves=Curves(
            pr_recall=aps.pr_recall,
            pr_precision=aps.pr_precision,
            roc_fpr=roc.fpr,
            roc_tpr=roc.tpr,
            roc_thresholds=roc.thresholds,
            conf=cc.conf,
            precision=cc.precision,
            recall=cc.recall,
            f1=cc.f1,
            f1_per_class=cc.f1_per_class,
        ),
    )
