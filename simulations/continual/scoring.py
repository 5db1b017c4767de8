"""What the report shows for a model on a site's held-out arrivals: scored against the synthetic ground truth.

The gate (client/models) judges a challenger on the labels the site has, i.e. the reader's verdicts with their
errors; the report scores the same cases against the truth, which only a simulation knows, so a coordinator sees
whether the gate's decisions were right.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from client.feedback.record import finding_boxes
from client.feedback.store import Box
from common.config import EvalConfig
from common.metrics.matching import greedy_match, iou_matrix
from simulations.continual.arrivals import TruthBox


@dataclass(frozen=True)
class HeldOutScore:
    images: int
    fractured: int  # images with at least one true fracture
    flagged: int  # fractured images with at least one finding (image-level true positives)
    fractures: int
    found: int  # true fractures a finding matches at the IoU threshold
    false_positives: int  # findings matching no true fracture
    localised: int  # fractured images with a finding on one of their fractures
    found_by: str = "localised"  # which of the two counts as a found fracture image (the gate's `found`)

    @property
    def sensitivity(self) -> float:
        """Image level, as the gate measures it (`found_by`); NaN without a fractured image."""
        hits = self.localised if self.found_by == "localised" else self.flagged
        return hits / self.fractured if self.fractured else math.nan

    @property
    def fp_per_image(self) -> float:
        return self.false_positives / self.images if self.images else math.nan

    def as_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "sensitivity": self.sensitivity, "fp_per_image": self.fp_per_image}


def score(
    findings: Sequence[Sequence[Box]], truth: Sequence[Sequence[TruthBox]], iou: float, found_by: str = "localised"
) -> HeldOutScore:
    """Findings (at the operating point) of each image against its true fractures, matched as the validator does;
    `found_by` as the gate's `found`: "localised" or "any_finding"."""
    if len(findings) != len(truth):
        raise ValueError(f"{len(findings)} images with findings but {len(truth)} with ground truth")
    fractured = flagged = fractures = found = false_positives = localised = 0
    for boxes, true in zip(findings, truth):
        pred = np.array([b.as_list() for b in boxes], dtype=float).reshape(-1, 4)
        gt = np.array([t.box for t in true], dtype=float).reshape(-1, 4)
        scores = np.array([b.score or 0.0 for b in boxes], dtype=float)
        correct, _ = greedy_match(
            iou_matrix(gt, pred), scores, np.zeros(len(pred), int), np.zeros(len(gt), int), np.array([iou]), False
        )
        hits = int(correct[:, 0].sum())
        fractured += bool(true)
        flagged += bool(true) and bool(boxes)
        fractures += len(true)
        found += hits
        localised += hits > 0
        false_positives += len(boxes) - hits
    return HeldOutScore(len(findings), fractured, flagged, fractures, found, false_positives, localised, found_by)


def predict_findings(model: Path, images: Sequence[Path], cfg: EvalConfig) -> list[tuple[list[Box], float]]:
    """(findings at the operating point, image-level probability) of `model` (weights file or registry version
    folder) on each image, through the same predictor as `fracfl predict` and the listener."""
    from common.data.images import read_image
    from common.inference import Predictor, load_backend

    if not images:  # nothing to read: the model is not loaded (a site with no held-out arrival yet)
        return []
    predictor = Predictor(load_backend(model), cfg)
    out = []
    for path in images:
        p = predictor.predict(read_image(path))
        out.append((finding_boxes(p), p.probability))
    return out
