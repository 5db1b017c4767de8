"""The champion/challenger gate on a site's held-out cases: a worse challenger is refused with its figures, forcing
it and rolling back leaves the champion current, every decision is logged; the paired bootstrap behind the CI."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from models_support import GATE_CONF, holdout, publish

from client.feedback.store import FeedbackStore
from client.listener.reload import ReloadingProcessor
from client.models.approval import NotApproved, check_approval, operating_point
from client.models.fetch import fetch_from_registry
from client.models.gate import Scores, _compare, gate, paired_bootstrap, scores_of
from client.models.gate import operating_point as point_for
from client.models.lifecycle import approve, promote, recheck, rollback, status
from client.models.settings import GateConfig
from client.models.store import ModelStore
from common.cli import main
from common.config import EvalConfig
from common.data.spec import load_spec
from common.errors import ConfigError
from common.metrics.inputs import ImageResult
from common.privacy import signing
from simulations.continual.steps import clinical_model


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_weights):
    """A registry with the champion (v0001), a degraded copy (v0002) and the champion again (v0003), all fetched
    into a model store; the held-out data; the site's key."""
    root = tmp_path_factory.mktemp("gate")
    registry = root / "registry"
    versions = [publish(registry, tiny_weights, 1), publish(registry, tiny_weights, 2, degrade=True)]
    versions.append(publish(registry, tiny_weights, 3))
    store = ModelStore(root / "models")
    for v in versions:
        fetch_from_registry(store, registry, v)
    key = signing.load_or_create(root / "privacy" / signing.KEY_NAME)
    return store, holdout(root / "data"), key


# Untrained tiny models localise nothing, so these tests judge by any finding: at GATE_CONF the champion flags every
# image and the degraded copy none. What "localised" counts is tested on hand-made predictions below.
CFG = GateConfig(conf=GATE_CONF, seed=7, bootstrap=300, found="any_finding")


def test_a_degraded_challenger_is_refused_and_rollback_restores_the_champion(site, tmp_path, capsys):
    store, data, key = site
    decision, record = promote(store, "v0001", "dr-first", key, data=data, cfg=CFG)
    assert decision.accepted and decision.figures["champion"] is None  # first model: absolute bounds only
    assert store.current()["version"] == "v0001" and record["approved_by"] == "dr-first"
    assert recheck(store, data, CFG) is None  # the first model replaced nothing: nothing to re-check against
    assert main(["site", "recheck", "--models-dir", str(store.root), "--data", str(data)]) == 0
    assert "nothing to re-check" in capsys.readouterr().out

    decision, record = promote(store, "v0002", "dr-second", key, data=data, cfg=CFG)
    f = decision.figures
    assert not decision.accepted and record is None and store.current()["version"] == "v0001"
    assert f["champion"]["sensitivity"] == 1.0 and f["challenger"]["sensitivity"] == 0.0
    assert f["delta_sensitivity"] == -1.0 and f["n_fracture_images"] > 0
    lo, hi = f["delta_sensitivity_ci"]
    assert lo <= f["delta_sensitivity"] <= hi and f["seed"] == 7 and f["seed_source"].startswith("configured")
    assert any("sensitivity drops from 1.000 to 0.000" in r for r in decision.reasons)
    with pytest.raises(NotApproved, match="the gate refused it"):
        approve(store, "v0002", "dr-second", key)

    # Forced through (with a reason), re-checked against the version it replaced (refused: re-checking changes
    # nothing by itself), then rolled back: the champion is current again, its approval still valid.
    _, forced = promote(store, "v0002", "dr-second", key, force_reason="vendor hotfix")
    assert store.current()["version"] == "v0002" and forced["basis"] == "forced: vendor hotfix"
    checked = recheck(store, data, CFG)
    assert not checked.accepted and store.current()["version"] == "v0002"
    assert checked.figures["champion"]["model"].endswith("v0001") and checked.figures["delta_sensitivity"] == -1.0
    toml = tmp_path / "site.toml"  # the same re-check as the site's people run it, margins from their site.toml
    toml.write_text(
        f'[models]\ndir = "{store.root}"\n\n[gate]\nconf = {GATE_CONF}\nseed = 7\nbootstrap = 300\nfound = "any_finding"\n'
    )
    assert main(["site", "recheck", "--site-config", str(toml), "--data", str(data)]) == 1
    shown = capsys.readouterr().out
    assert "sensitivity -1.000" in shown and "fracfl site rollback" in shown
    assert "counts as found by any finding (operating point 0.002)" in shown
    back = rollback(store, "dr-first", key, "sensitivity fell on our cases")
    assert back["version"] == "v0001" == store.current()["version"]
    assert check_approval(store, store.current(), signing.public_hex(key)) == []

    actions = [(e["action"], e["version"], e.get("accepted")) for e in store.decisions()]
    assert actions == [
        ("gate", "v0001", True),
        ("approve", "v0001", None),
        ("promote", "v0001", True),
        ("gate", "v0002", False),
        ("promote", "v0002", False),
        ("approve", "v0002", None),
        ("promote", "v0002", True),
        ("recheck", "v0002", False),
        ("recheck", "v0002", False),
        ("rollback", "v0001", None),
    ]
    assert store.decisions()[3]["figures"]["delta_sensitivity_ci"] == [lo, hi]  # the figures are in the log

    # An equal challenger passes, and the same seed reproduces the same interval.
    decision, _ = promote(store, "v0003", "dr-third", key, data=data, cfg=CFG)
    assert decision.accepted and decision.figures["delta_sensitivity"] == 0.0
    assert decision.figures["delta_sensitivity_ci"] == [0.0, 0.0]
    info = status(store, signing.public_hex(key))
    assert info["current"]["version"] == "v0003" and info["approval_problems"] == []


def test_a_held_out_split_without_fractures_refuses(site, tmp_path):
    store, data, _ = site
    empty = tmp_path / "labels.yaml"
    negatives = tmp_path / "images"
    negatives.mkdir()
    for p in sorted((data.parent / "general_hospital" / "images" / "val").glob("*.png"))[:3]:
        (negatives / p.name).write_bytes(p.read_bytes())  # no label files beside them: no fracture
    empty.write_text(f"test: {negatives}\nnames: {{0: fracture}}\n")
    decision = gate(None, store.folder("v0001"), empty, "test", CFG)
    assert not decision.accepted and "no fracture image" in decision.reasons[0]


def _scores(flagged, positive, fp):
    found = np.array(flagged)
    return Scores(np.array(positive), found, found, np.array(fp, dtype=float), None, None, conf=0.25)


def test_a_fracture_image_is_found_only_by_a_finding_on_its_fracture():
    """Localised (the default): a box beside the fracture is a false positive and a miss, not a found fracture;
    any_finding counts that image as found (and the box as a false positive all the same)."""
    fracture = [0, 40, 40, 60, 60]  # cls, x1, y1, x2, y2
    results = [
        ImageResult("on", np.array([[41, 41, 60, 61, 0.9, 0]]), np.array([fracture])),
        ImageResult("beside", np.array([[80, 80, 100, 100, 0.9, 0]]), np.array([fracture])),
        ImageResult("low", np.array([[40, 40, 60, 60, 0.1, 0]]), np.array([fracture])),  # below the operating point
        ImageResult("clear", np.zeros((0, 6)), np.zeros((0, 5))),
    ]
    names, cfg = {0: "fracture"}, EvalConfig(conf=0.25, iou=0.5)
    localised = scores_of(results, names, cfg, "localised").summary()
    anywhere = scores_of(results, names, cfg, "any_finding").summary()
    assert localised["sensitivity"] == pytest.approx(1 / 3) and anywhere["sensitivity"] == pytest.approx(2 / 3)
    assert (localised["localised_fractures"], localised["flagged_fractures"]) == (1, 2)
    assert localised["fp_per_image"] == anywhere["fp_per_image"] == 0.25  # the box beside it, either way
    assert localised["found_by"] == "localised" and GateConfig().found == "localised"
    with pytest.raises(ConfigError, match=r"\[gate\] found: 'nearby'; choose from localised, any_finding"):
        GateConfig(found="nearby").check()


def test_bootstrap_is_paired_and_resamples_whole_patients():
    positive = [True, True, True, True, False, False]
    same = _scores([True, False, True, True, False, True], positive, [0, 1, 0, 0, 1, 2])
    ci = paired_bootstrap(same, same, np.arange(6), 500, 0.95, seed=1)
    assert ci == {"delta_sensitivity_ci": [0.0, 0.0], "delta_fp_per_image_ci": [0.0, 0.0]}  # paired: no spread

    worse = _scores([False, False, True, True, False, True], positive, [0, 1, 0, 0, 1, 2])
    by_image = paired_bootstrap(same, worse, np.arange(6), 2000, 0.95, seed=1)["delta_sensitivity_ci"]
    # Images 0 and 1 belong to one patient: resampling patients moves them together.
    by_patient = paired_bootstrap(same, worse, np.array([0, 0, 1, 2, 3, 4]), 2000, 0.95, seed=1)["delta_sensitivity_ci"]
    assert by_image[0] < 0 and by_image[1] <= 0 and by_patient[1] <= 0
    assert paired_bootstrap(same, worse, np.arange(6), 2000, 0.95, seed=1)["delta_sensitivity_ci"] == by_image


def test_secure_seed_is_drawn_and_recorded(site):
    store, data, _ = site
    cfg = GateConfig(conf=GATE_CONF, bootstrap=100, unit="image")
    a = gate(store.folder("v0001"), store.folder("v0003"), data, "test", cfg).figures
    assert a["seed_source"].startswith("secure") and isinstance(a["seed"], int) and a["unit"] == "image"
    assert a["n_units"] == a["n_images"]


def test_false_positive_bounds_refuse_a_challenger(site):
    """The absolute bound on false positives per image, and the bound on their rise over the champion."""
    store, data, _ = site
    noisy = GateConfig(conf=0.001, seed=7, bootstrap=100, max_fp_per_image=0.0)  # near-zero threshold: boxes galore
    decision = gate(None, store.folder("v0001"), data, "test", noisy)
    fp = decision.figures["challenger"]["fp_per_image"]
    assert fp > 0 and not decision.accepted
    assert decision.reasons == [f"false positives per image {fp:.3f} above the bound 0.000"]
    assert gate(None, store.folder("v0001"), data, "test", replace(noisy, max_fp_per_image=fp)).accepted

    figures = {
        "champion": {"sensitivity": 0.8, "fp_per_image": 0.2},
        "challenger": {"sensitivity": 0.8, "fp_per_image": 0.5},
    }
    rise = _compare(dict(figures), GateConfig(max_fp_increase=0.25))
    assert rise == ["false positives per image rise from 0.200 to 0.500, more than the allowed 0.250"]
    assert _compare(dict(figures), GateConfig(max_fp_increase=0.3)) == []


def test_images_the_pacs_withdrew_are_left_out(site, tmp_path, capsys):
    """Instances withdrawn after the pool was built are not scored, as rounds do not train on them; the CLI reads
    them from the feedback store the site.toml's [continual] names, and says how many it left out."""
    store, data, _ = site
    gone = frozenset(p.stem for p in load_spec(data).images("test")[:3])
    full = gate(None, store.folder("v0001"), data, "test", CFG).figures
    less = gate(None, store.folder("v0001"), data, "test", CFG, gone).figures
    assert (full["n_withdrawn_left_out"], less["n_withdrawn_left_out"]) == (0, 3)
    assert less["n_images"] == full["n_images"] - 3

    feedback = FeedbackStore(tmp_path / "feedback.db", class_names=["fracture"])
    for uid in gone:
        feedback.withdraw(sop_uid=uid, note="wrong patient", reviewer="pacs-admin", source_ref="kos-1")
    toml = tmp_path / "site.toml"
    toml.write_text(
        f'[models]\ndir = "{store.root}"\n\n[gate]\ndata = "{data}"\nconf = {GATE_CONF}\nseed = 7\nbootstrap = 300\n'
        f'found = "any_finding"\n\n[continual]\nfeedback_db = "{tmp_path / "feedback.db"}"\n'
    )
    main(["site", "gate", "v0001", "--site-config", str(toml)])
    shown = capsys.readouterr().out
    assert f"held-out: {less['n_images']} images" in shown and "(3 withdrawn in PACS left out)" in shown
    assert store.decisions()[-1]["figures"]["n_withdrawn_left_out"] == 3


def test_operating_point_is_the_lowest_threshold_within_the_false_positive_budget():
    """One matching of every box gives the false-positive count at any threshold; the point is just above the first
    false positive too many, and a model whose scores are all lower but ranked alike is judged at a lower point,
    finding the same fractures."""
    fracture = [0, 40, 40, 60, 60]
    boxes = [  # image, box, score: true positives at 0.9 and 0.3, false positives at 0.8, 0.5 and 0.2
        ("a", [41, 41, 60, 61], 0.9), ("a", [80, 80, 99, 99], 0.8), ("b", [40, 40, 60, 60], 0.3),
        ("c", [10, 10, 30, 30], 0.5), ("c", [90, 10, 110, 30], 0.2),
    ]  # fmt: skip
    gt = {"a": [fracture], "b": [fracture], "c": []}

    def results(scale: float) -> list[ImageResult]:
        return [
            ImageResult(
                i,
                np.array([[*b, s * scale, 0] for j, b, s in boxes if j == i]).reshape(-1, 6),
                np.array(gt[i]).reshape(-1, 5),
            )  # fmt: skip
            for i in gt
        ]

    names = {0: "fracture"}
    assert point_for(results(1.0), 0.5, 1 / 3) == np.nextafter(0.5, 1)  # one FP allowed in three images
    assert point_for(results(1.0), 0.5, 2 / 3) == np.nextafter(0.2, 1)
    assert point_for(results(1.0), 0.5, 0.0) == np.nextafter(0.8, 1)
    assert point_for(results(1.0), 0.5, 1.0) == 0.001  # every box the detector keeps

    cfg = EvalConfig(conf=0.25, iou=0.5)
    fixed = [scores_of(results(k), names, cfg, "localised").summary() for k in (1.0, 0.1)]
    assert fixed[0]["sensitivity"] == 1.0 and fixed[1]["sensitivity"] == 0.0  # same ranking, lower scores
    own = [
        scores_of(results(k), names, replace(cfg, conf=point_for(results(k), 0.5, 2 / 3)), "localised")
        for k in (1.0, 0.1)
    ]
    assert [o.summary()["sensitivity"] for o in own] == [1.0, 1.0]
    assert [o.summary()["fp_per_image"] for o in own] == [pytest.approx(2 / 3)] * 2
    assert own[1].conf == pytest.approx(own[0].conf * 0.1)
    with pytest.raises(ConfigError, match="give conf .* or target_fp_per_image, not both"):
        GateConfig(conf=0.2, target_fp_per_image=0.5).check()
    with pytest.raises(ConfigError, match="target_fp_per_image: expected a number >= 0"):
        GateConfig(target_fp_per_image=-1.0).check()


def test_a_recalibrated_challenger_is_judged_at_its_own_point_and_the_listener_uses_it(tmp_path, tiny_weights):
    """A challenger that ranks every box as the champion does but scores lower (logits shifted by -2: the untrained
    models' one box per image scores 0.0017 instead of 0.0123) loses at one fixed threshold and ties at equal
    false-positive rates; its approved point is signed, and a hot-reloading listener builds its pipeline at it."""
    registry = tmp_path / "registry"
    versions = [publish(registry, tiny_weights, 1), publish(registry, tiny_weights, 2, score_shift=-2.0)]
    store = ModelStore(tmp_path / "models")
    for v in versions:
        fetch_from_registry(store, registry, v)
    key, data = signing.load_or_create(tmp_path / "privacy" / signing.KEY_NAME), holdout(tmp_path / "data")
    promote(store, "v0001", "dr-first", key, data=data, cfg=CFG)

    fixed = gate(store.folder("v0001"), store.folder("v0002"), data, "test", CFG).figures  # both at 0.002
    assert (fixed["champion"]["sensitivity"], fixed["challenger"]["sensitivity"]) == (1.0, 0.0)
    per_model = replace(CFG, conf=None, target_fp_per_image=1.0)
    decision, record = promote(store, "v0002", "dr-second", key, data=data, cfg=per_model)
    f = decision.figures
    assert decision.accepted and f["operating_point"] == "per model" and f["target_fp_per_image"] == 1.0
    champ, chal = f["champion"], f["challenger"]
    assert chal["sensitivity"] == champ["sensitivity"] == 1.0 and chal["fp_per_image"] == champ["fp_per_image"] <= 1
    assert chal["conf"] == champ["conf"] == 0.001  # one box per image, none localised: every box is within budget
    assert operating_point(record) == chal["conf"] and operating_point(store.approval("v0001")) is None

    built: list[tuple[str, float | None]] = []
    listener = ReloadingProcessor(store, lambda folder, conf: built.append((folder.name, conf)) or (lambda p: []),
                                  signing.public_hex(key))  # fmt: skip
    assert built == [("v0002", chal["conf"])] and listener.version == "v0002"
    assert clinical_model(store.root, EvalConfig())[2].conf == chal["conf"]  # the simulation reads and scores at it
    rollback(store, "dr-first", key, "back to the first")
    listener(tmp_path / "item.dcm")
    assert built[-1] == ("v0001", None)  # its gate judged it at the fixed point: the configured one applies

    tampered = dict(record, figures={**record["figures"], "challenger": {**chal, "conf": 0.9}})
    assert check_approval(store, tampered, signing.public_hex(key))  # the point is inside the signed figures
