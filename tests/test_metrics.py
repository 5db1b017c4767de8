"""Detection and triage metrics on hand-built cases whose answers are derived on paper in the comments."""

from __future__ import annotations

import csv
import itertools
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ultralytics.engine.validator import BaseValidator
from ultralytics.utils.metrics import ConfusionMatrix, ap_per_class, box_iou

from common.metrics import ImageResult, evaluate_detections, write_report
from common.metrics.matching import IOU_THRESHOLDS, greedy_match, iou_matrix
from common.metrics.triage import roc_auc, roc_curve

ONE = {0: "fracture"}
AP_MAX = 0.995  # Ultralytics' 101-point trapezoid loses the last half step: a perfect class scores 0.995


def img(image_id: str, pred: list[list[float]] | None = None, gt: list[list[float]] | None = None) -> ImageResult:
    return ImageResult(image_id, np.array(pred or []), np.array(gt or []))


def perfect_set() -> list[ImageResult]:
    gts = {"a": [[0, 10, 10, 110, 110]], "b": [[0, 0, 0, 50, 80], [0, 200, 200, 260, 300]], "c": []}
    return [img(k, [[*g[1:], 0.9, g[0]] for g in v], v) for k, v in gts.items()]


def counting_set() -> list[ImageResult]:
    """5 GT, 7 predictions; at conf 0.25 / IoU 0.5: TP 3, FP 3, FN 2 (see each line)."""
    return [
        img(
            "A",
            [
                [0, 0, 100, 100, 0.9, 0],  # TP
                [0, 0, 100, 100, 0.8, 0],  # FP: duplicate, best IoU 1
                [200, 200, 300, 300, 0.1, 0],
            ],  # below conf: its GT is an FN with best score 0.1
            [[0, 0, 0, 100, 100], [0, 200, 200, 300, 300]],
        ),
        img(
            "B",
            [[50, 50, 150, 150, 0.7, 0], [300, 300, 400, 400, 0.95, 0]],  # 2 TP
            [[0, 50, 50, 150, 150], [0, 300, 300, 400, 400]],
        ),
        img("C", [[10, 10, 60, 60, 0.6, 0], [500, 500, 550, 550, 0.3, 0]]),  # 2 FP on a negative image
        img("D", [], [[0, 0, 0, 50, 50]]),  # FN, nothing nearby: best score 0
        img("E"),  # true negative
    ]


def test_perfect_predictions() -> None:
    r = evaluate_detections(perfect_set(), ONE)
    assert r.map50 == pytest.approx(AP_MAX) and r.map50_95 == pytest.approx(AP_MAX)
    assert (r.precision, r.recall, r.f1) == (1.0, 1.0, 1.0)
    assert (r.sensitivity, r.specificity, r.roc_auc) == (1.0, 1.0, 1.0)
    assert (r.n_images, r.n_positive, r.n_negative) == (3, 2, 1)
    assert r.confusion_matrix.tolist() == [[3, 0], [0, 0]]
    assert not (r.false_negatives or r.false_positives or r.missed_fractures or r.false_alarms)
    assert r.best_f1 == 1.0 and r.best_f1_conf == 0.9
    assert r.undefined == {}


def test_shifted_boxes_count_at_iou_05_not_075() -> None:
    # GT 100x100 and prediction shifted 24 px: IoU = 76*100 / (2*100*100 - 76*100) = 76/124 = 0.613,
    # a hit at thresholds 0.50, 0.55, 0.60 only, so AP50-95 = 0.995 * 3/10.
    data = [img("s", [[24, 0, 124, 100, 0.8, 0]], [[0, 0, 0, 100, 100]]), img("n")]
    r = evaluate_detections(data, ONE, iou=0.5)
    assert r.map50 == pytest.approx(AP_MAX)
    assert 0 < r.map50_95 < 1 and r.map50_95 == pytest.approx(AP_MAX * 0.3)
    assert (r.box_tp, r.box_fp, r.box_fn) == (1, 0, 0)
    strict = evaluate_detections(data, ONE, iou=0.75)
    assert strict.map50 == r.map50 and strict.map50_95 == r.map50_95  # mAP does not depend on the operating point
    assert (strict.box_tp, strict.box_fp, strict.box_fn) == (0, 1, 1)
    assert strict.precision == 0 and strict.recall == 0 and strict.f1 == 0
    (fn,) = strict.false_negatives
    (fp,) = strict.false_positives
    assert fn.best_score == pytest.approx(0.8) and fp.best_iou == pytest.approx(76 / 124, abs=1e-6)
    assert strict.sensitivity == 1.0  # image level does not care about box placement


def test_known_counts_give_exact_rates() -> None:
    r = evaluate_detections(counting_set(), ONE, conf=0.25)
    assert (r.box_tp, r.box_fp, r.box_fn, r.n_gt_boxes, r.n_pred_boxes) == (3, 3, 2, 5, 7)
    assert r.precision == 3 / 6 and r.recall == 3 / 5 and r.f1 == pytest.approx(6 / 11)
    (c,) = r.per_class
    assert (c.tp, c.fp, c.fn, c.precision, c.recall) == (3, 3, 2, 0.5, 0.6)
    # images: A .9, B .95, D 0 positive; C .6, E 0 negative
    assert (r.image_tp, r.image_fn, r.image_fp, r.image_tn) == (2, 1, 1, 1)
    assert r.sensitivity == pytest.approx(2 / 3) and r.specificity == 0.5
    # pairs (pos, neg): .9>.6 .9>0 .95>.6 .95>0 count 1, 0<.6 counts 0, 0=0 counts half -> 4.5 / 6
    assert r.roc_auc == 0.75
    assert r.confusion_matrix.tolist() == [[3, 3], [2, 0]]


def test_error_lists_exact_and_worst_first() -> None:
    r = evaluate_detections(counting_set(), ONE, conf=0.25)
    assert [(e.image_id, e.box, e.best_score) for e in r.false_negatives] == [
        ("D", (0.0, 0.0, 50.0, 50.0), 0.0),  # nothing overlapped it: the worst miss
        ("A", (200.0, 200.0, 300.0, 300.0), 0.1),  # found below conf
    ]
    assert [(e.image_id, e.score, round(e.best_iou, 6)) for e in r.false_positives] == [
        ("A", 0.8, 1.0),
        ("C", 0.6, 0.0),
        ("C", 0.3, 0.0),
    ]
    assert [(e.image_id, e.score, e.n_gt, e.n_pred) for e in r.missed_fractures] == [("D", 0.0, 1, 0)]
    assert [(e.image_id, e.score, e.n_gt, e.n_pred) for e in r.false_alarms] == [("C", 0.6, 0, 2)]


def test_operating_point_moves_sensitivity_and_specificity() -> None:
    data = counting_set()
    low, mid, high = (evaluate_detections(data, ONE, conf=c) for c in (0.25, 0.65, 0.92))
    assert (low.sensitivity, low.specificity) == (pytest.approx(2 / 3), 0.5)
    assert (mid.sensitivity, mid.specificity) == (pytest.approx(2 / 3), 1.0)  # C's 0.6 no longer flagged
    assert (high.sensitivity, high.specificity) == (pytest.approx(1 / 3), 1.0)  # A's 0.9 no longer flagged
    reports = [evaluate_detections(data, ONE, conf=c) for c in np.linspace(0, 1, 21)]
    for a, b in itertools.pairwise(reports):
        assert a.sensitivity >= b.sensitivity and a.specificity <= b.specificity
    assert len({r.roc_auc for r in reports}) == 1  # AUC ignores the operating point


def test_best_f1_conf_reproduces_best_f1() -> None:
    data = counting_set()
    r = evaluate_detections(data, ONE)
    scores = sorted({float(p[4]) for x in data for p in x.pred})
    brute = max(evaluate_detections(data, ONE, conf=s).f1 for s in scores)
    assert r.best_f1 == pytest.approx(brute)
    assert evaluate_detections(data, ONE, conf=r.best_f1_conf).f1 == pytest.approx(r.best_f1)
    i = int(np.argmin(abs(r.curves.conf - 0.25)))
    assert r.curves.f1[i] == pytest.approx(r.f1)  # the curve passes through the operating point


def test_auc_equals_pairwise_count_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 300) / 5  # heavy ties
    positive = rng.random(300) < 0.3
    pos, neg = scores[positive], scores[~positive]
    brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])
    assert roc_auc(scores, positive) == pytest.approx(brute, abs=1e-12)
    roc = roc_curve(scores, positive)
    assert np.trapezoid(roc.tpr, roc.fpr) == pytest.approx(brute, abs=1e-12)  # ties walk a diagonal
    # same through evaluate_detections: one box per image (score 0 = no box), positives have a GT box
    data = [
        img(f"i{k}", [[0, 0, 10, 10, s, 0]] if s > 0 else [], [[0, 0, 0, 10, 10]] if y else [])
        for k, (s, y) in enumerate(zip(scores, positive))
    ]
    assert evaluate_detections(data, ONE).roc_auc == pytest.approx(brute, abs=1e-12)


def random_set(seed: int, nc: int, n: int = 40) -> list[ImageResult]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        gt, pred = [], []
        for _ in range(rng.integers(0, 4)):
            c, (x, y), (w, h) = int(rng.integers(nc)), rng.uniform(0, 500, 2), rng.uniform(20, 120, 2)
            gt.append([c, x, y, x + w, y + h])
            for _ in range(rng.integers(0, 3)):  # 0-2 jittered predictions per object, sometimes wrong class
                j = rng.normal(0, 0.15 * w, 4)
                pred.append(
                    [
                        x + j[0],
                        y + j[1],
                        x + w + j[2],
                        y + h + j[3],
                        rng.random(),
                        c if rng.random() < 0.8 else int(rng.integers(nc)),
                    ]
                )
        for _ in range(rng.integers(0, 2)):
            (x, y) = rng.uniform(0, 500, 2)
            pred.append([x, y, x + 40, y + 40, rng.random(), int(rng.integers(nc))])
        pred = sorted(pred, key=lambda p: -p[4])  # NMS output order, as the validator assumes
        out.append(img(f"r{k}", pred, gt))
    return out


def test_matching_and_map_agree_with_ultralytics() -> None:
    data, names = random_set(1, nc=2), {0: "fracture", 1: "dislocation"}
    fake = SimpleNamespace(iouv=torch.linspace(0.5, 0.95, 10))
    tps, confs, pcls, tcls = [], [], [], []
    for x in data:
        theirs = np.zeros((len(x.pred), 10), dtype=bool)
        if len(x.pred) and len(x.gt):
            iou = box_iou(torch.from_numpy(x.gt_boxes), torch.from_numpy(x.pred_boxes))
            theirs = BaseValidator.match_predictions(
                fake, torch.from_numpy(x.pred[:, 5]), torch.from_numpy(x.gt[:, 0]), iou
            ).numpy()
        ours, _ = greedy_match(
            iou_matrix(x.gt_boxes, x.pred_boxes), x.pred_scores, x.pred_cls, x.gt_cls, IOU_THRESHOLDS
        )
        np.testing.assert_array_equal(ours, theirs, err_msg=x.image_id)
        tps.append(theirs), confs.append(x.pred_scores), pcls.append(x.pred_cls), tcls.append(x.gt_cls)
    ap = ap_per_class(np.concatenate(tps), np.concatenate(confs), np.concatenate(pcls), np.concatenate(tcls))[5]
    r = evaluate_detections(data, names)
    assert 0.1 < r.map50 < 0.99
    assert r.map50 == pytest.approx(ap[:, 0].mean(), abs=1e-12)
    assert r.map50_95 == pytest.approx(ap.mean(), abs=1e-12)
    assert [c.ap50 for c in r.per_class] == pytest.approx(ap[:, 0].tolist(), abs=1e-12)


def test_confusion_matrix_agrees_with_ultralytics() -> None:
    data, names = random_set(2, nc=3), {0: "a", 1: "b", 2: "c"}
    conf, iou = 0.3, 0.45  # random floats never sit exactly on a threshold, so >= and > agree
    theirs = ConfusionMatrix(names=names)
    for x in data:
        det = {
            "bboxes": torch.from_numpy(x.pred_boxes).float(),
            "conf": torch.from_numpy(x.pred_scores).float(),
            "cls": torch.from_numpy(x.pred[:, 5]).float(),
        }
        theirs.process_batch(
            det,
            {"bboxes": torch.from_numpy(x.gt_boxes).float(), "cls": torch.from_numpy(x.gt[:, 0]).float()},
            conf=conf,
            iou_thres=iou,
        )
    r = evaluate_detections(data, names, conf=conf, iou=iou)
    np.testing.assert_array_equal(r.confusion_matrix, theirs.matrix)
    assert r.confusion_matrix[:3, 3].sum() + r.confusion_matrix[:3, :3].sum() == sum(
        int((x.pred_scores >= conf).sum()) for x in data
    )


def test_wrong_class_is_off_diagonal_and_in_both_error_lists() -> None:
    names = {0: "fracture", 1: "implant"}
    r = evaluate_detections([img("w", [[0, 0, 100, 100, 0.9, 1]], [[0, 0, 0, 100, 100]])], names)
    assert r.confusion_matrix.tolist() == [[0, 0, 0], [1, 0, 0], [0, 0, 0]]  # predicted implant, true fracture
    assert [(e.cls_name, e.best_score) for e in r.false_negatives] == [("fracture", 0.9)]
    assert [(e.cls_name, e.best_iou) for e in r.false_positives] == [("implant", pytest.approx(1.0))]
    assert r.map50 == 0.0 and math.isnan(r.per_class[1].ap50) and "ap[implant]" in r.undefined
    assert r.sensitivity == 1.0  # a box of any class flags the image


def test_empty_inputs_are_zero_or_nan_with_reasons() -> None:
    none = evaluate_detections([], ONE)
    assert none.n_images == 0 and math.isnan(none.map50) and math.isnan(none.roc_auc) and "all" in none.undefined

    no_pred = evaluate_detections([img("a", [], [[0, 0, 0, 10, 10]]), img("b")], ONE)
    assert no_pred.map50 == 0 and no_pred.recall == 0 and no_pred.f1 == 0 and math.isnan(no_pred.precision)
    assert no_pred.sensitivity == 0 and no_pred.specificity == 1 and no_pred.roc_auc == 0.5  # both score 0
    assert {"precision", "best_f1"} <= set(no_pred.undefined)
    assert [e.image_id for e in no_pred.missed_fractures] == ["a"]

    no_gt = evaluate_detections([img("a", [[0, 0, 10, 10, 0.5, 0]]), img("b")], ONE)
    assert math.isnan(no_gt.map50) and math.isnan(no_gt.recall) and math.isnan(no_gt.sensitivity)
    assert no_gt.precision == 0 and no_gt.f1 == 0 and no_gt.specificity == 0.5
    assert {"map50", "map50_95", "recall", "sensitivity", "roc_auc"} <= set(no_gt.undefined)
    assert "0 positive and 2 negative" in no_gt.undefined["roc_auc"]

    blank = evaluate_detections([img("a"), img("b")], ONE)
    assert math.isnan(blank.f1) and blank.specificity == 1 and blank.confusion_matrix.sum() == 0

    single = evaluate_detections([img("only", [[0, 0, 10, 10, 0.5, 0]], [[0, 0, 0, 10, 10]])], ONE)
    assert single.map50 == pytest.approx(AP_MAX) and math.isnan(single.specificity) and math.isnan(single.roc_auc)
    json.dumps(single.to_dict(), allow_nan=False)


def test_rejects_malformed_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        ImageResult("x", np.zeros((2, 5)), np.zeros((0, 5)))
    with pytest.raises(ValueError, match="class 3"):
        evaluate_detections([img("x", [[0, 0, 1, 1, 0.5, 3]])], ONE)
    with pytest.raises(ValueError, match="more than once"):
        evaluate_detections([img("x"), img("x")], ONE)
    with pytest.raises(ValueError, match="names"):
        evaluate_detections([img("x")], {1: "fracture"})


@pytest.mark.parametrize("case", ["counts", "empty", "nc2"])
def test_write_report_writes_every_file(tmp_path, monkeypatch, case: str) -> None:
    monkeypatch.setattr("common.metrics.plots.DPI", 40)  # same drawing code, a quarter of the pixels
    data, names = {
        "counts": (counting_set(), ONE),
        "empty": ([], ONE),
        "nc2": (random_set(3, nc=2, n=12), {0: "fracture", 1: "implant"}),
    }[case]
    r = evaluate_detections(data, names)
    paths = write_report(r, tmp_path / "out", prefix="val_")
    assert set(paths) == {
        "metrics",
        "false_negatives",
        "false_positives",
        "images",
        "pr_curve",
        "roc_curve",
        "confusion_matrix",
        "f1_curve",
    }
    for p in paths.values():
        assert p.name.startswith("val_") and p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = json.loads(paths["metrics"].read_text())
    assert loaded == r.to_dict()
    assert loaded["n_images"] == r.n_images and loaded["confusion_matrix"] == r.confusion_matrix.tolist()
    rows = list(csv.DictReader(paths["images"].open()))
    assert len(rows) == len(r.missed_fractures) + len(r.false_alarms)
    assert len(list(csv.DictReader(paths["false_negatives"].open()))) == len(r.false_negatives)
    assert len(list(csv.DictReader(paths["false_positives"].open()))) == len(r.false_positives)
    if case == "counts":
        assert [(x["kind"], x["image_id"]) for x in rows] == [("missed_fracture", "D"), ("false_alarm", "C")]


def test_summary_line_reads_well() -> None:
    line = evaluate_detections(counting_set(), ONE).summary_line()
    assert "P 0.500 R 0.600" in line and "sens 0.667 spec 0.500 AUC 0.750" in line
    assert "missed fractures 1, false alarms 1" in line
    assert "mAP50 n/a" in evaluate_detections([img("a")], ONE).summary_line()
