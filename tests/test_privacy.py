"""Privacy budgets at a site: the ledger's chain, spending that survives restarts and new runs, the ceiling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.privacy import PrivacyRefused, guard_round, site_budget
from common.config import PrivacyConfig
from common.privacy.accounting import Mechanism, calibrate, epsilons
from common.privacy.ledger import Ledger, LedgerError, verify
from opacus.accountants import PRVAccountant, RDPAccountant


def _images(root: Path, n: int, start: int = 0) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        p = root / f"img{i:03d}.png"
        p.write_bytes(f"image {i}".encode())  # only the bytes matter: fingerprints are by content
        out.append(p)
    return out


def _guard(budget, cfg, images, rnd, run_id="run-a", rounds=3):
    return guard_round("site_a", budget, cfg, run_id=run_id, rnd=rnd, planned_rounds=rounds, images=images,
                       batch_size=4, local_epochs=1, max_steps=None, model_version="initial", seed=0)


def test_ledger_chain_detects_edit_delete_reorder_and_truncation(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    for i in range(4):
        ledger.append("round", {"round": i + 1, "epsilon": 0.5 * (i + 1)})
    assert verify(path)[0].ok and verify(path)[0].entries == 4
    lines = path.read_text().splitlines()

    def broken(new_lines):
        path.write_text("\n".join(new_lines) + "\n")
        v = verify(path)[0]
        path.write_text("\n".join(lines) + "\n")
        return v

    edited = json.loads(lines[1]) | {"epsilon": 0.1}
    v = broken([lines[0], json.dumps(edited), *lines[2:]])
    assert not v.ok and v.line == 2 and "edited" in v.problem
    v = broken([lines[0], *lines[2:]])  # deleted entry 2
    assert not v.ok and v.line == 2
    v = broken([lines[0], lines[2], lines[1], lines[3]])
    assert not v.ok and v.line == 2
    v = broken(lines[:3])  # last entry cut off: the head file still records 4
    assert not v.ok and "missing" in v.problem
    v = broken([*lines[:2], "{not json", *lines[3:]])
    assert not v.ok and v.line == 3
    assert verify(path)[0].ok
    path.write_text("\n".join([lines[0], json.dumps(edited), *lines[2:]]) + "\n")
    with pytest.raises(LedgerError, match="damaged"):
        ledger.append("round", {"round": 5})  # a damaged ledger is never extended


def test_accountant_rebuilt_from_ledger_equals_one_that_never_stopped(tmp_path):
    cfg = PrivacyConfig(mode="dp_sgd", target_epsilon=6.0, ceiling_epsilon=8.0, ledger_dir=str(tmp_path / "l"))
    budget = site_budget("site_a", {}, cfg)
    images = _images(tmp_path / "img", 40)
    rdp, prv = RDPAccountant(), PRVAccountant()
    for rnd in (1, 2, 3):  # every round builds everything anew from the files: a restarted process
        guard = _guard(budget, cfg, images, rnd)
        steps = 10
        for _ in range(steps):
            rdp.step(noise_multiplier=guard.hook.noise_multiplier, sample_rate=guard.hook.sample_rate)
            prv.step(noise_multiplier=guard.hook.noise_multiplier, sample_rate=guard.hook.sample_rate)
        rep = guard.commit(steps)
        delta = rep["delta"]
        assert rep["epsilon_rdp"] == pytest.approx(rdp.get_epsilon(delta), rel=1e-9)
        assert rep["epsilon_prv"] == pytest.approx(prv.get_epsilon(delta), rel=1e-3)
    assert rep["epsilon"] <= cfg.target_epsilon * 1.01  # the plan ends at the target


def test_new_run_on_same_or_grown_data_continues_spending_and_ceiling_holds(tmp_path):
    cfg = PrivacyConfig(mode="dp_sgd", target_epsilon=3.0, ceiling_epsilon=4.0, ledger_dir=str(tmp_path / "l"))
    budget = site_budget("site_a", {}, cfg)
    images = _images(tmp_path / "img", 40)
    for rnd in (1, 2):
        _guard(budget, cfg, images, rnd, rounds=2).commit(10)
    grown = images + _images(tmp_path / "img", 10, start=40)  # feedback added ten images
    later = _guard(budget, cfg, grown, 1, run_id="run-b", rounds=1)
    assert later.plan["epsilon"] > 2.9  # the new run starts from what the old images already spent
    assert later.commit(10)["epsilon"] <= cfg.target_epsilon * 1.01
    lower = site_budget("site_a", {"privacy-target-epsilon": 2.5}, cfg)
    with pytest.raises(PrivacyRefused, match="budget exhausted") as refused:
        _guard(lower, cfg, grown, 1, run_id="run-c")
    assert refused.value.report["epsilon"] > 2.9  # the refusal reports what is already spent
    disjoint = _images(tmp_path / "other", 40, start=100)  # a wholly new set starts fresh (parallel composition)
    assert _guard(budget, cfg, disjoint, 1, run_id="run-d").plan["epsilon"] == 0.0
    entries = Ledger(Path(cfg.ledger_dir) / "site_a" / "ledger.jsonl").entries()
    assert any(e["kind"] == "refused" for e in entries)
    assert all(e.get("epsilon", 0) <= cfg.ceiling_epsilon for e in entries)


def test_round_crossing_the_ceiling_is_refused(tmp_path):
    """A site's own stricter ceiling (node config) stops it mid-run; no entry ever exceeds the ceiling."""
    cfg = PrivacyConfig(mode="dp_sgd", target_epsilon=8.0, ceiling_epsilon=10.0, ledger_dir=str(tmp_path / "l"))
    images = _images(tmp_path / "img", 40)
    generous = site_budget("site_a", {}, cfg)
    guard = _guard(generous, cfg, images, 1, rounds=4)  # planned for 8.0 over 4 rounds
    first = guard.commit(10)["epsilon"]
    mech = Mechanism(guard.hook.noise_multiplier, guard.hook.sample_rate, 10)
    second = epsilons([mech, mech], guard.delta)["epsilon"]
    strict = site_budget("site_a", {"privacy-ceiling": (first + second) / 2}, cfg)  # room for one round only
    rounds_done = 1
    with pytest.raises(PrivacyRefused, match="ceiling"):
        for rnd in (2, 3, 4):
            _guard(strict, cfg, images, rnd, rounds=4).commit(10)
            rounds_done += 1
    assert rounds_done == 1
    entries = Ledger(Path(cfg.ledger_dir) / "site_a" / "ledger.jsonl").entries()
    assert max(e["epsilon"] for e in entries if e["kind"] == "round") <= strict.ceiling


def test_node_config_can_only_tighten_the_servers_proposal(tmp_path):
    cfg = PrivacyConfig(mode="dp_sgd", target_epsilon=8.0, ceiling_epsilon=10.0, ledger_dir="x",
                        sites={"site_a": {"target_epsilon": 6.0}})
    b = site_budget("site_a", {"privacy-ceiling": 5.0, "privacy-target-epsilon": 20.0,
                               "privacy-dir": str(tmp_path)}, cfg)
    assert (b.target, b.ceiling, b.ledger_dir) == (5.0, 5.0, tmp_path)  # target never above the ceiling
    assert site_budget("site_b", {}, cfg).target == 8.0


def test_unreadable_ledger_fails_closed(tmp_path):
    cfg = PrivacyConfig(mode="dp_sgd", ledger_dir=str(tmp_path / "l"))
    budget = site_budget("site_a", {}, cfg)
    images = _images(tmp_path / "img", 20)
    _guard(budget, cfg, images, 1).commit(5)
    ledger = Path(cfg.ledger_dir) / "site_a" / "ledger.jsonl"
    ledger.write_text(ledger.read_text().replace('"steps": 5', '"steps": 1'))  # someone lowers the spend
    with pytest.raises(PrivacyRefused, match="ledger"):
        _guard(budget, cfg, images, 2)


def test_calibration_accounts_for_what_was_already_spent():
    fresh = calibrate([], 0.1, 100, 4.0, 1e-5)
    used = calibrate([Mechanism(fresh, 0.1, 100)], 0.1, 100, 8.0, 1e-5)
    assert used is not None and epsilons([Mechanism(fresh, 0.1, 100), Mechanism(used, 0.1, 100)], 1e-5)["rdp"] <= 8.0
    assert calibrate([Mechanism(fresh, 0.1, 100)], 0.1, 100, 3.0, 1e-5) is None  # already past the target
