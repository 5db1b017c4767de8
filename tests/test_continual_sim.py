"""The simulated continuous loop's own parts: arrivals and drift, the simulated radiologist writing into a real
feedback store, scoring against the ground truth, the per-period report, and a site rolling back a promotion its
later held-out cases refute. The loop's calls into the pool, the warm-started round and the gate
(simulations/continual/steps.py) are exercised end to end by tests/test_continual_loop.py."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from models_support import GATE_CONF, publish

from client.feedback.store import Box, FeedbackStore
from client.models.store import ModelStore
from common.config import CONF_DIR, to_typed
from common.errors import ConfigError, DataError
from common.synth import get_profile
from simulations.continual import steps
from simulations.continual.arrivals import Arrival, TruthBox, arrive, read_truth
from simulations.continual.config import (
    ContinualConfig,
    ContinualJob,
    DriftConfig,
    GateMargins,
    RadiologistConfig,
    check_continual,
    profile_at,
)
from simulations.continual.loop import SiteState, _decide, _record, _review_period, salt
from simulations.continual.radiologist import Decision, reader_rng, record_review, review
from simulations.continual.report import PeriodRecord, facts, forgetting, write_report
from simulations.continual.scoring import predict_findings, score

SITES = ["general_hospital", "rural_clinic"]


def _arrive(root: Path, site: str = "rural_clinic", period: int = 1, profile: str | None = None, count: int = 3):
    out = root / site / f"p{period}"
    arrivals = arrive(site, get_profile(profile or site), period, count, 96, 7, 50, out / "images", out / "truth.jsonl")
    return arrivals, read_truth(out / "truth.jsonl")


# --- arrivals and drift ---------------------------------------------------------------------------------------------


def test_arrivals_are_deterministic_per_seed_site_and_period(tmp_path: Path) -> None:
    a, truth_a = _arrive(tmp_path / "a")
    _arrive(tmp_path / "b", site="general_hospital")  # another site made first changes nothing
    b, truth_b = _arrive(tmp_path / "b")
    assert [x.image.read_bytes() for x in a] == [x.image.read_bytes() for x in b]
    assert truth_a == truth_b and [x.patient for x in a] == [x.patient for x in b]
    assert [x.image_id for x in a] == [f"rural_clinic_p001_{i:05d}" for i in range(3)]
    later, _ = _arrive(tmp_path / "c", period=2)
    assert all(x.image.read_bytes() != y.image.read_bytes() for x, y in zip(a, later))
    # the truth stays out of the site's image folder
    assert {p.name for p in a[0].image.parent.iterdir()} == {f"{x.image_id}.png" for x in a}


def test_truth_is_what_was_rendered(tmp_path: Path) -> None:
    arrivals, truth = _arrive(tmp_path, site="trauma_center", count=6)  # prevalence 0.6: some fractures
    assert set(truth) == {a.image_id for a in arrivals}
    boxes = [t for ts in truth.values() for t in ts]
    assert boxes and all(0 <= t.box[0] < t.box[2] <= 96 and 0 <= t.box[1] < t.box[3] <= 96 for t in boxes)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_id": "x", "fractures": []}\n{"image_id": "y"}\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        read_truth(bad)


def test_drift_switches_the_profile_from_its_period(tmp_path: Path) -> None:
    cfg = ContinualConfig(periods=3, drift=[DriftConfig("rural_clinic", 2, "pediatric_wrist")])
    check_continual(cfg, SITES)
    base = get_profile("rural_clinic")
    assert [profile_at(cfg, base, p).name for p in (1, 2, 3)] == ["rural_clinic", "pediatric_wrist", "pediatric_wrist"]
    assert profile_at(cfg, get_profile("general_hospital"), 3).name == "general_hospital"
    drifted, _ = _arrive(tmp_path, period=2, profile="pediatric_wrist", count=8)
    assert {a.profile for a in drifted} == {"pediatric_wrist"}
    assert {a.body_part for a in drifted} <= {"hand", "forearm"}  # the new site's case mix
    same_seed, _ = _arrive(tmp_path / "undrifted", period=2, count=8)
    assert [a.patient for a in drifted] == [a.patient for a in same_seed]  # same patients, new acquisition
    assert any(x.image.read_bytes() != y.image.read_bytes() for x, y in zip(drifted, same_seed))


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"drift": [DriftConfig("nowhere", 1, "rural_clinic")]}, "drift\\[0\\].site"),
        ({"drift": [DriftConfig("rural_clinic", 4, "rural_clinic")]}, "drift\\[0\\].period"),
        ({"drift": [DriftConfig("rural_clinic", 1, "no_such_preset")]}, "unknown site profile"),
        ({"holdout_fraction": 1.0}, "holdout_fraction"),
        ({"radiologist": RadiologistConfig(miss_rate=1.5)}, "radiologist.miss_rate"),
        ({"periods": 0}, "periods"),
        ({"gate": GateMargins(bootstrap=10)}, "continual.gate bootstrap"),
        ({"gate": GateMargins(found="somewhere")}, "continual.gate found"),
    ],
)
def test_bad_config_names_its_key(change: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        check_continual(replace(ContinualConfig(periods=3), **change), SITES)


def test_demo_experiment_composes() -> None:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        job = to_typed(compose("federated", ["experiment=continual_demo"]), ContinualJob)
    check_continual(job.continual, [*job.partition.profiles])
    assert job.federation.sites == len(job.partition.profiles) and job.continual.drift[0].profile == "pediatric_wrist"


# --- the radiologist ------------------------------------------------------------------------------------------------

A, B, C = (10.0, 10.0, 30.0, 30.0), (50.0, 50.0, 70.0, 70.0), (10.0, 60.0, 30.0, 80.0)
TRUTH = [TruthBox(A, "transverse"), TruthBox(B, "oblique"), TruthBox(C, "hairline")]
FINDINGS = [
    Box(11, 11, 30, 30, score=0.9),  # on A, IoU 0.9: confirm
    Box(50, 50, 70, 76, score=0.8),  # on B, IoU 0.77: moved onto B (below 0.8)
    Box(80, 5, 95, 20, score=0.7),  # nothing there: reject
]  # C is missed by the model: the reader adds it


def test_a_perfect_reader_confirms_moves_rejects_and_adds() -> None:
    cfg = RadiologistConfig(miss_rate=0.0, error_rate=0.0, move_below_iou=0.8)
    r = review(FINDINGS, TRUTH, np.random.default_rng(0), cfg)
    assert r.decisions == [
        Decision("confirm", 0),
        Decision("move", 1, B),
        Decision("reject", 2),
        Decision("add", box=C),
    ]
    assert r.errors == 0 and r.misses == 0
    empty = review([], [], np.random.default_rng(0), cfg)
    assert empty.decisions == [Decision("no_fracture")]


def test_a_reader_who_always_errs_and_misses() -> None:
    r = review(FINDINGS, TRUTH, np.random.default_rng(0), RadiologistConfig(miss_rate=1.0, error_rate=1.0))
    assert r.decisions == [
        Decision("reject", 0, correct=False),  # a correct finding wrongly rejected
        Decision("reject", 1, correct=False),
        Decision("confirm", 2, correct=False),  # a wrong finding confirmed
    ]
    assert r.errors == 3 and r.misses == 1
    # a fracture neither the model nor the reader saw leaves the image marked, wrongly, as without fracture
    missed = review([], [TruthBox(A, "hairline")], np.random.default_rng(0), RadiologistConfig(miss_rate=1.0))
    assert missed.decisions == [Decision("no_fracture", correct=False)] and missed.misses == 1


def test_rates_hold_over_many_cases_with_a_seeded_reader() -> None:
    cfg = RadiologistConfig(miss_rate=0.3, error_rate=0.1)
    rng = reader_rng(5, "rural_clinic", 2)
    runs = [review(FINDINGS, TRUTH, rng, cfg) for _ in range(2000)]
    wrong = sum(r.errors for r in runs) / (3 * len(runs))
    missed = sum(r.misses for r in runs) / len(runs)
    assert 0.085 < wrong < 0.115 and 0.26 < missed < 0.34  # about 4 standard deviations either side
    assert review(FINDINGS, TRUTH, reader_rng(5, "rural_clinic", 2), cfg) == runs[0]  # same seed, site, period
    other = reader_rng(5, "rural_clinic", 3).random(50)
    assert not np.array_equal(other, reader_rng(5, "rural_clinic", 2).random(50))


def test_verdicts_land_in_the_feedback_store(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "feedback.db", class_names=["fracture"])
    cfg = RadiologistConfig(miss_rate=0.0, error_rate=0.0, move_below_iou=0.8)
    case = Arrival("site_p001_00000", tmp_path / "x.png", "p123", "hand", "rural_clinic")
    normal = Arrival("site_p001_00001", tmp_path / "y.png", "p124", "hand", "rural_clinic")
    for _ in range(2):  # a rerun period records nothing twice
        record_review(store, case, FINDINGS, 0.9, TRUTH, "v0001", np.random.default_rng(0), cfg)
        record_review(store, normal, [], 0.1, [], "v0001", np.random.default_rng(0), cfg)
    first, second = store.image_by_sop_uid(case.image_id), store.image_by_sop_uid(normal.image_id)
    assert first is not None and second is not None
    assert [(b.status, b.origin) for b in first.boxes] == [
        ("confirmed", "model"),
        ("corrected", "model"),
        ("rejected", "model"),
        ("added", "reviewer"),
    ]
    assert first.boxes[1].box.as_list() == list(B) and first.boxes[3].box.as_list() == list(C)
    assert (first.patient, first.model_version, first.origin) == ("p123", "v0001", "simulate")
    assert second.no_fracture and not first.no_fracture
    kinds = [v.kind for v in store.verdicts()]
    assert kinds == ["confirm", "move", "reject", "add", "no_fracture"]
    assert {v.reviewer for v in store.verdicts()} == {"sim-radiologist"}
    # the report's disagreement rate is the site's round-request figure: the case disagrees (a box moved, one
    # rejected, one added), the normal image reviewed "no fracture" where the model drew nothing does not
    d = steps.disagreement(store)
    assert (d.model_version, d.reviewed, d.disagreeing, d.rate) == ("v0001", 2, 1, 0.5)


# --- scoring and the model ------------------------------------------------------------------------------------------


def test_score_against_the_truth() -> None:
    findings = [FINDINGS, [], [Box(0, 0, 5, 5, score=0.3)], [Box(0, 0, 5, 5, score=0.9)]]  # the last: beside it
    truth = [TRUTH, [TruthBox(A, "oblique")], [], [TruthBox(A, "oblique")]]
    s = score(findings, truth, iou=0.5)
    assert (s.images, s.fractured, s.flagged, s.fractures, s.found, s.false_positives) == (4, 3, 2, 5, 2, 3)
    assert s.localised == 1 and s.sensitivity == pytest.approx(1 / 3) and s.fp_per_image == pytest.approx(3 / 4)
    assert score(findings, truth, iou=0.5, found_by="any_finding").sensitivity == pytest.approx(2 / 3)
    assert math.isnan(score([], [], 0.5).sensitivity)


def test_the_site_model_reads_arrivals(tmp_path: Path, tiny_weights: Path) -> None:
    from common.config import EvalConfig

    arrivals, _ = _arrive(tmp_path, count=2)
    out = predict_findings(tiny_weights, [a.image for a in arrivals], EvalConfig(conf=0.0))
    assert len(out) == 2 and all(0.0 <= p <= 1.0 and isinstance(boxes, list) for boxes, p in out)


# --- the report -----------------------------------------------------------------------------------------------------


def _rec(period: int, site: str, decision: str, sens: float, orig: float, eps: float) -> PeriodRecord:
    return PeriodRecord(period, site, "rural_clinic", decision, f"v{period:04d}", 4 * period, sens, 0.25, orig, eps)


RECORDS = [
    _rec(0, "a", "initial", math.nan, 0.8, 0.0),
    replace(_rec(1, "a", "promoted", 0.5, 0.6, 1.0), disagreement=0.375, disagreement_reviewed=8),
    replace(_rec(2, "a", "refused", 0.5, 0.7, 1.5), profile="pediatric_wrist"),
    replace(_rec(3, "a", "promoted", 0.75, 0.9, 2.0), profile="pediatric_wrist"),
    _rec(0, "b", "initial", math.nan, 0.5, 0.0),
    _rec(1, "b", "no round", math.nan, 0.5, 0.0),
]


def test_forgetting_is_the_loss_against_the_best_earlier_period() -> None:
    lost = forgetting(RECORDS)
    assert [round(lost[("a", p)], 6) for p in range(4)] == [0.0, 0.2, 0.1, 0.0]
    assert lost[("b", 1)] == 0.0


def test_report_files(tmp_path: Path) -> None:
    paths = write_report(RECORDS, tmp_path / "report", "test loop")
    data = json.loads(paths["json"].read_text())
    assert data["sites"]["a"]["promotions"] == 2 and data["sites"]["a"]["refusals"] == 1
    assert data["sites"]["a"]["epsilon"] == 2.0 and data["sites"]["b"]["promotions"] == 0
    assert [(r["period"], r["site"]) for r in data["records"]][:3] == [(0, "a"), (0, "b"), (1, "a")]
    assert data["records"][0]["sensitivity"] is None  # NaN as null
    assert data["records"][0]["disagreement"] is None and data["records"][2]["disagreement"] == 0.375
    assert data["sites"]["b"]["disagreement"] is None
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = paths["html"].read_text()
    assert page.count("<tr>") == 1 + len(RECORDS) and "refused" in page and "n/a" in page
    assert "<th>disagreement</th><th>disagreement reviewed</th>" in page
    assert "<th>model version</th><th>operating point</th>" in page and "<td>0.250</td>" in page
    assert "<td>0.375</td><td>8</td>" in page  # period 1 of site a
    assert "data:image/png;base64," in page
    with pytest.raises(ValueError, match="decision 'maybe'"):
        facts([replace(RECORDS[0], decision="maybe")], "t")


# --- a promotion rolled back ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_promotion_the_grown_held_out_split_refutes_is_rolled_back(tmp_path: Path, tiny_weights: Path) -> None:
    """Period 1: a deliberately degraded model (it finds nothing) passes a loose gate, at whose operating point the
    untrained first model finds nothing either. Period 2: at the site's own operating point, where the first model
    flags every image, the gate refuses the round's challenger (false positives), then re-checks the clinical model
    against the version it replaced on the grown held-out split; it lost every fracture, so the site rolls back
    through the store's rollback, and the report shows it."""
    registry = tmp_path / "registry"
    first, degraded, challenger = (publish(registry, tiny_weights, 1), publish(registry, tiny_weights, 2, degrade=True),
                                   publish(registry, tiny_weights, 3))  # fmt: skip
    job = ContinualJob(seed=3)
    job.partition.size = 64
    job.privacy.ledger_dir = str(tmp_path / "no-ledger")
    job.continual = ContinualConfig(
        periods=2,
        arrivals_per_period=12,
        holdout_fraction=0.5,
        radiologist=RadiologistConfig(miss_rate=0.0, error_rate=0.0),
        # the site's margins (max 1 FP per image, at most 0.5 more), judged by any finding: untrained models localise
        # nothing, and at GATE_CONF the first model flags every image
        gate=GateMargins(conf=GATE_CONF, bootstrap=200, found="any_finding"),
    )
    loose = replace(
        job, continual=replace(job.continual, gate=GateMargins(0.99, None, None, bootstrap=200, found="any_finding"))
    )
    name, run = "trauma_center", tmp_path / "run"
    (tmp_path / "D").mkdir()
    (tmp_path / "D" / "ground_truth.jsonl").write_text("")  # no original validation split: forgetting is n/a
    s = SiteState(get_profile(name), tmp_path / "D", run / "sites" / name,
                  FeedbackStore(run / "sites" / name / "feedback.db", class_names=["fracture"]))  # fmt: skip
    records = []
    for period, site_job, version in ((0, job, first), (1, loose, degraded), (2, job, challenger)):
        tally = _review_period(job, run, name, s, period) if period else {}
        pool = steps.build_pool(s.store, s.data_dir, job.continual, salt(job, name))
        decision = _decide(site_job, name, s, registry / version, pool, period)
        records.append(_record(job, run, name, s, period, decision, tally, pool))
    assert pool.info["counts"]["test"]["positive"] > 0, pool.info["counts"]

    assert [(r.decision, r.model_version) for r in records] == [
        ("initial", first),
        ("promoted", degraded),
        ("rolled back", first),
    ]
    gate, refused, checked, rolled = ModelStore(s.models_dir).decisions()[-4:]
    assert (gate["action"], gate["version"], gate["accepted"], refused["action"]) == (
        "gate",
        challenger,
        False,
        "promote",
    )
    assert (checked["action"], checked["version"], checked["champion"]) == ("recheck", degraded, first)
    assert not checked["accepted"] and "sensitivity drops from 1.000 to 0.000" in " ".join(checked["reasons"])
    assert checked["figures"]["n_images"] == pool.info["counts"]["test"]["images"]  # the grown held-out split
    assert (rolled["action"], rolled["version"], rolled["from"], rolled["by"]) == (
        "rollback",
        first,
        degraded,
        "sim-radiologist",
    )
    assert rolled["reason"].startswith(f"re-check on the held-out cases of pool v{pool.version:04d}: sensitivity")

    paths = write_report(records, tmp_path / "report", "rollback")
    data = json.loads(paths["json"].read_text())
    assert [data["sites"][name][k] for k in ("promotions", "refusals", "rollbacks")] == [1, 0, 1]
    assert "<td>rolled back</td>" in paths["html"].read_text()
