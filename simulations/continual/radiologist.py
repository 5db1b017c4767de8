"""The simulated radiologist: the synthetic ground truth reviews the site's findings, with set miss and error rates.

Each model finding is matched to the true fractures by IoU (common/metrics/matching.py, class-agnostic, the
validator's greedy policy). A matched finding is confirmed, or moved onto its fracture when it overlaps it loosely;
an unmatched one is rejected. With probability `error_rate` a box decision goes the wrong way (a correct finding
rejected, a wrong one confirmed). A true fracture the model missed is drawn in as an added box, unless the reader
misses it too (probability `miss_rate`). An image left with no box is marked "no fracture". The verdicts go into the
site's FeedbackStore through its public methods, exactly as a reviewer's would.

The random draws are seeded from the job's seed: this is a simulation of reader error, not a privacy mechanism.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from client.feedback.store import Box, FeedbackStore
from common.metrics.matching import greedy_match, iou_matrix
from simulations.continual.arrivals import Arrival, TruthBox
from simulations.continual.config import RadiologistConfig

RADIOLOGIST_KEY = zlib.crc32(b"fracfl continual radiologist")
ORIGIN = "simulate"  # the store's `origin` of findings recorded by the simulation


@dataclass(frozen=True)
class Decision:
    """One verdict the reader gives: `finding` indexes the model's boxes (confirm/reject/move), `box` is drawn
    (add) or moved to (move); `correct` is False where the reader erred."""

    kind: str  # confirm | reject | move | add | no_fracture
    finding: int | None = None
    box: tuple[float, float, float, float] | None = None
    correct: bool = True


@dataclass(frozen=True)
class Review:
    decisions: list[Decision]
    misses: int  # true fractures neither the model nor the reader found

    @property
    def errors(self) -> int:
        return sum(not d.correct for d in self.decisions)


def reader_rng(seed: int, site: str, period: int) -> np.random.Generator:
    """The reader's draws for one site and period, independent of other sites and periods."""
    return np.random.default_rng([seed, RADIOLOGIST_KEY, zlib.crc32(site.encode()), period])


def review(
    findings: Sequence[Box], truth: Sequence[TruthBox], rng: np.random.Generator, cfg: RadiologistConfig
) -> Review:
    """The reader's verdicts on one image's findings, given its true fractures. Draws one number per finding, then
    one per fracture the model missed, in that order, so equal inputs and seeds give equal verdicts."""
    pred = np.array([b.as_list() for b in findings], dtype=float).reshape(-1, 4)
    gt = np.array([t.box for t in truth], dtype=float).reshape(-1, 4)
    iou = iou_matrix(gt, pred)
    scores = np.array([b.score if b.score is not None else 0.0 for b in findings], dtype=float)
    correct, gt_match = greedy_match(
        iou, scores, np.zeros(len(pred), int), np.zeros(len(gt), int), np.array([cfg.match_iou]), class_aware=False
    )
    decisions = []
    for j in range(len(findings)):
        wrong = bool(rng.random() < cfg.error_rate)
        if not correct[j, 0]:
            decisions.append(Decision("confirm" if wrong else "reject", j, correct=not wrong))
            continue
        i = int(np.flatnonzero(gt_match[:, 0] == j)[0])
        if wrong:
            decisions.append(Decision("reject", j, correct=False))
        elif iou[i, j] < cfg.move_below_iou:
            decisions.append(Decision("move", j, truth[i].box))
        else:
            decisions.append(Decision("confirm", j))
    misses = 0
    for i in np.flatnonzero(gt_match[:, 0] < 0):
        if rng.random() < cfg.miss_rate:
            misses += 1
        else:
            decisions.append(Decision("add", box=truth[i].box))
    if not any(d.kind in ("confirm", "move", "add") for d in decisions):
        decisions.append(Decision("no_fracture", correct=not truth))
    return Review(decisions, misses)


def record_review(
    store: FeedbackStore,
    arrival: Arrival,
    findings: Sequence[Box],
    probability: float,
    truth: Sequence[TruthBox],
    model_version: str,
    rng: np.random.Generator,
    cfg: RadiologistConfig,
) -> Review:
    """Record the image and the findings `model_version` showed, then the reader's verdicts on them.

    An image this model version's findings were already reviewed on is left as it is (a rerun period), and the
    reader's draws for it are still made, so the images after it get the same verdicts as the first time.
    """
    result = review(findings, truth, rng, cfg)
    image_id = store.record_image(
        sop_uid=arrival.image_id,
        image_ref=str(arrival.image),
        model_version=model_version,
        probability=probability,
        boxes=findings,
        body_part=arrival.body_part,
        patient=arrival.patient,
        origin=ORIGIN,
    )
    row = store.image(image_id)
    assert row is not None
    if row.reviewed:
        return result
    box_ids = [b.id for b in row.boxes if b.origin == "model"]  # in the order recorded, i.e. the findings' order
    for d in result.decisions:
        store.add_verdict(
            image_id=image_id,
            reviewer=cfg.reviewer,
            kind=d.kind,
            box_id=None if d.finding is None else box_ids[d.finding],
            box=None if d.box is None else Box(*d.box),
        )
    return result
