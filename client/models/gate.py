"""The champion/challenger gate: a new version replaces the site's clinical model only if, on the site's held-out
reviewed cases, image-level sensitivity drops by no more than a margin and false positives per image stay within
bounds. Both models are scored by the project's own evaluation (common.engine.evaluate, common.metrics).

A fracture image counts as found when a finding lies on one of its reviewed fractures (`[gate] found =
"localised"`, the default: matched at the evaluation IoU, as the validator and the false-positive count match it),
or when it has any finding at all (`"any_finding"`, for a site that uses the model only to triage its worklist).
Under "any_finding" a box beside the fracture counts twice, as a found fracture and as a false positive.

Operating point: both models at one score threshold (`[gate] conf`), or each at its own (`[gate] target_fp_per_image`):
the lowest threshold at which it makes at most that many false-positive boxes per held-out image, the point of its
FROC curve. A retrained model's scores are calibrated differently (DP noise, another class balance), so one fixed
threshold can hide a model that ranks fractures far better; at equal false-positive rates the comparison is of what
a radiologist would see. The chosen threshold is part of the signed figures, and a listener uses it for that version.

Intervals are a paired bootstrap: the same resampled patients (or images) score both models, so the interval is for
the change itself. Patients come from patients.csv beside the data.yaml (an image without one is its own patient).
The seed is drawn from the OS's secure source unless [gate] seed fixes it; either way it is recorded with the figures.
Images the PACS withdrew after the pool was built (the site's feedback store knows them) are left out of the scoring,
as they are left out of training, and the figures say how many.
"""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.models.settings import GateConfig
from common.config import EvalConfig
from common.data.dataset import DetectionDataset
from common.data.spec import DatasetSpec, load_spec
from common.engine.evaluate import predict_dataset
from common.inference.load import load_at_size
from common.inference.postprocess import LOW_CONF
from common.metrics import evaluate_detections
from common.metrics.inputs import ImageResult
from common.metrics.matching import greedy_match, iou_matrix
from common.metrics.triage import image_score
from common.privacy.patients import patient_groups, read_patients


@dataclass
class GateDecision:
    """Accepted or not, the figures behind it, and (when refused) why, one sentence per failed check."""

    accepted: bool
    figures: dict[str, Any]
    reasons: list[str] = field(default_factory=list)


@dataclass
class Scores:
    """One model on the held-out images, per image: whether it has a fracture, whether it has any finding, whether a
    finding matches one of its fractures, and its false-positive boxes; `found_by` picks which counts as found."""

    positive: np.ndarray
    flagged: np.ndarray
    localised: np.ndarray
    fp: np.ndarray
    specificity: float | None
    map50: float | None
    conf: float
    found_by: str = "localised"

    @property
    def found(self) -> np.ndarray:
        return self.localised if self.found_by == "localised" else self.flagged

    def summary(self) -> dict[str, Any]:
        pos = self.positive
        return {
            "sensitivity": _ratio(self.found[pos].sum(), pos.sum()),
            "found_by": self.found_by,
            "conf": self.conf,
            "fp_per_image": _ratio(self.fp.sum(), len(self.fp)),
            "specificity": self.specificity,
            "map50": self.map50,
            "flagged_fractures": int(self.flagged[pos].sum()),
            "localised_fractures": int(self.localised[pos].sum()),
        }


def _ratio(a: float, b: float) -> float | None:
    return round(float(a) / float(b), 6) if b else None


def held_out_images(data: Path, split: str, withdrawn: frozenset[str]) -> tuple[DatasetSpec, list[Path], int]:
    """The split's images without those named in `withdrawn` (pseudonymous SOP Instance UIDs: the pool's file stems),
    listed once for both models; also how many were left out."""
    spec = load_spec(data)
    every = spec.images(split)
    kept = [p for p in every if p.stem not in withdrawn]
    return spec, kept, len(every) - len(kept)


def score(
    ref: str | Path,
    spec: DatasetSpec,
    images: list[Path],
    eval_cfg: EvalConfig,
    found_by: str,
    target_fp_per_image: float | None = None,
) -> Scores:
    """Score the model at `ref` (weights file or version folder) on `images` of `spec`, at its trained size, at
    `eval_cfg.conf` or, with `target_fp_per_image`, at its own operating point for that false-positive rate."""
    model, imgsz = load_at_size(ref)
    ds = DetectionDataset(images, spec.nc, imgsz, label_files=[spec.label_file(p) for p in images])
    results = predict_dataset(model, ds, eval_cfg, torch.device("cpu"), progress=False)
    names = dict(model.names)
    if target_fp_per_image is not None:
        eval_cfg = replace(eval_cfg, conf=operating_point(results, eval_cfg.iou, target_fp_per_image))
    return scores_of(results, names, eval_cfg, found_by)


def operating_point(results: list[ImageResult], iou: float, target_fp_per_image: float) -> float:
    """The lowest score threshold at which these predictions make at most `target_fp_per_image` false-positive boxes
    per image. Matching runs by descending score, so whether a box is a false positive does not depend on the boxes
    below it: one matching of every box (the validator's, common.metrics.matching) gives the count at any threshold."""
    fp = [_false_positive_scores(r, iou) for r in results]
    fp_scores = np.sort(np.concatenate(fp) if fp else np.zeros(0))[::-1]
    allowed = int(np.floor(target_fp_per_image * len(results) + 1e-9))
    if len(fp_scores) <= allowed:
        return LOW_CONF  # every box the detector keeps
    return float(min(np.nextafter(fp_scores[allowed], np.inf), 1.0))  # just above the first false positive too many


def _false_positive_scores(r: ImageResult, iou: float) -> np.ndarray:
    correct, _ = greedy_match(
        iou_matrix(r.gt_boxes, r.pred_boxes), r.pred_scores, r.pred_cls, r.gt_cls, np.array([iou])
    )
    return r.pred_scores[~correct[:, 0]]


def scores_of(results: list[ImageResult], names: dict[int, str], eval_cfg: EvalConfig, found_by: str) -> Scores:
    """Per-image facts from one model's predictions, matched by the project's evaluation at its operating point."""
    report = evaluate_detections(results, names, conf=eval_cfg.conf, iou=eval_cfg.iou)
    fps = Counter(e.image_id for e in report.false_positives)
    missed = Counter(e.image_id for e in report.false_negatives)  # fractures no finding matched at the operating point
    return Scores(
        positive=np.array([len(r.gt) > 0 for r in results]),
        flagged=np.array([image_score(r.pred_scores) >= eval_cfg.conf for r in results]),
        localised=np.array([len(r.gt) > missed.get(r.image_id, 0) for r in results]),
        fp=np.array([fps.get(r.image_id, 0) for r in results], dtype=float),
        specificity=None if np.isnan(report.specificity) else round(float(report.specificity), 6),
        map50=None if np.isnan(report.map50) else round(float(report.map50), 6),
        conf=float(eval_cfg.conf),
        found_by=found_by,
    )


def paired_bootstrap(
    champion: Scores, challenger: Scores, groups: np.ndarray, n: int, confidence: float, seed: int
) -> dict[str, list[float] | None]:
    """Intervals for the change (challenger - champion) in sensitivity and in FP per image, resampling whole
    groups (patients or images) with replacement; resamples without a fracture image are left out."""
    rng = np.random.default_rng(seed)
    g = int(groups.max()) + 1
    weights = rng.multinomial(g, np.full(g, 1.0 / g), size=n)[:, groups].astype(float)  # (n, images)
    pos = champion.positive.astype(float)
    n_pos = weights @ pos
    keep = n_pos > 0
    d_sens = (weights @ (pos * challenger.found) - weights @ (pos * champion.found))[keep] / n_pos[keep]
    d_fp = (weights @ (challenger.fp - champion.fp)) / weights.sum(axis=1)
    tail = (1 - confidence) / 2 * 100

    def interval(values: np.ndarray) -> list[float] | None:
        if not len(values):
            return None
        lo, hi = np.percentile(values, [tail, 100 - tail])
        return [round(float(lo), 6), round(float(hi), 6)]

    return {"delta_sensitivity_ci": interval(d_sens), "delta_fp_per_image_ci": interval(d_fp)}


def gate(
    champion: Path | None,
    challenger: Path,
    holdout_data: Path,
    split: str,
    cfg: GateConfig,
    withdrawn: frozenset[str] = frozenset(),
) -> GateDecision:
    """Judge `challenger` against `champion` (None: the site has no clinical model yet, so only the absolute bounds
    apply) on `split` of `holdout_data`, without the `withdrawn` images. Refuses when the split has no fracture
    image: sensitivity is then unknown."""
    cfg.check()
    eval_cfg = EvalConfig() if cfg.conf is None else EvalConfig(conf=cfg.conf)
    spec, images, left_out = held_out_images(Path(holdout_data), split, withdrawn)
    chal = score(challenger, spec, images, eval_cfg, cfg.found, cfg.target_fp_per_image)
    seed_source = "secure (os.urandom)" if cfg.seed is None else "configured ([gate] seed)"
    seed = secrets.randbits(63) if cfg.seed is None else cfg.seed
    patients = read_patients(Path(holdout_data).parent) if cfg.unit == "patient" else {}
    groups = patient_groups(images, patients)
    figures: dict[str, Any] = {
        "data": str(holdout_data),
        "split": split,
        "n_images": len(images),
        "n_withdrawn_left_out": left_out,
        "n_fracture_images": int(chal.positive.sum()),
        "unit": cfg.unit,
        "n_units": int(groups.max()) + 1,
        "operating_point": eval_cfg.conf if cfg.target_fp_per_image is None else "per model",
        "target_fp_per_image": cfg.target_fp_per_image,
        "match_iou": eval_cfg.iou,
        "found_by": cfg.found,
        "challenger": {"model": str(challenger), **chal.summary()},
        "champion": None,
        "sensitivity_margin": cfg.sensitivity_margin,
        "max_fp_per_image": cfg.max_fp_per_image,
        "max_fp_increase": cfg.max_fp_increase,
        "bootstrap": cfg.bootstrap,
        "confidence": cfg.confidence,
        "seed": seed,
        "seed_source": seed_source,
    }
    reasons = []
    if not chal.positive.any():
        reasons.append(f"the held-out split {split!r} has no fracture image: sensitivity cannot be judged")
    c = figures["challenger"]
    if cfg.max_fp_per_image is not None and c["fp_per_image"] > cfg.max_fp_per_image:
        reasons.append(f"false positives per image {c['fp_per_image']:.3f} above the bound {cfg.max_fp_per_image:.3f}")
    if champion is not None:
        champ = score(champion, spec, images, eval_cfg, cfg.found, cfg.target_fp_per_image)
        figures["champion"] = {"model": str(champion), **champ.summary()}
        figures.update(paired_bootstrap(champ, chal, groups, cfg.bootstrap, cfg.confidence, seed))
        reasons += _compare(figures, cfg)
    return GateDecision(not reasons, figures, reasons)


def _compare(figures: dict[str, Any], cfg: GateConfig) -> list[str]:
    """The checks against the champion, on figures already computed; one sentence per failure."""
    champ, chal = figures["champion"], figures["challenger"]
    reasons = []
    if champ["sensitivity"] is not None and chal["sensitivity"] is not None:
        delta = round(chal["sensitivity"] - champ["sensitivity"], 6)
        figures["delta_sensitivity"] = delta
        ci = figures.get("delta_sensitivity_ci")
        shown = f" ({cfg.confidence:.0%} CI {ci[0]:+.3f} to {ci[1]:+.3f})" if ci else ""
        if -delta > cfg.sensitivity_margin:
            reasons.append(
                f"sensitivity drops from {champ['sensitivity']:.3f} to {chal['sensitivity']:.3f} "
                f"({delta:+.3f}{shown}), more than the margin {cfg.sensitivity_margin:.3f}"
            )
        elif cfg.require_ci and (ci is None or ci[0] < -cfg.sensitivity_margin):
            reasons.append(
                f"sensitivity change {delta:+.3f}{shown}: the interval's lower end is below -{cfg.sensitivity_margin:.3f}"
            )
    delta_fp = round(chal["fp_per_image"] - champ["fp_per_image"], 6)
    figures["delta_fp_per_image"] = delta_fp
    if cfg.max_fp_increase is not None and delta_fp > cfg.max_fp_increase:
        reasons.append(
            f"false positives per image rise from {champ['fp_per_image']:.3f} to {chal['fp_per_image']:.3f}, "
            f"more than the allowed {cfg.max_fp_increase:.3f}"
        )
    return reasons
