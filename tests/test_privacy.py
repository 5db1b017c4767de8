"""Privacy budgets at a site: the ledger's chain, spending that survives restarts and new runs, the ceiling."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from client.privacy import PrivacyRefused, check_mode, guard_round, site_budget
from client.site_config import load_site_privacy, write_site_config
from common.config import PrivacyConfig
from common.errors import ConfigError
from common.privacy.accounting import Mechanism, calibrate, epsilons
from common.privacy.ledger import Ledger, LedgerError, entry_hash, verify


def _images(root: Path, n: int, start: int = 0) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        p = root / f"img{i:03d}.png"
        p.write_bytes(f"image {i}".encode())  # only the bytes matter: fingerprints are by content
        out.append(p)
    return out


def _guard(budget, cfg, images, rnd, run_id="run-a", rounds=3):
    return guard_round(
        "site_a",
        budget,
        cfg,
        run_id=run_id,
        rnd=rnd,
        planned_rounds=rounds,
        images=images,
        batch_size=4,
        local_epochs=1,
        max_steps=None,
        model_version="initial",
        seed=0,
    )


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
    lower = site_budget("site_a", {}, replace(cfg, sites={"site_a": {"target_epsilon": 2.5}}))
    with pytest.raises(PrivacyRefused, match="budget exhausted") as refused:
        _guard(lower, cfg, grown, 1, run_id="run-c")
    assert refused.value.report["epsilon"] > 2.9  # the refusal reports what is already spent
    disjoint = _images(tmp_path / "other", 40, start=100)  # a wholly new set starts fresh (parallel composition)
    assert _guard(budget, cfg, disjoint, 1, run_id="run-d").plan["epsilon"] == 0.0
    entries = Ledger(Path(cfg.ledger_dir) / "site_a" / "ledger.jsonl").entries()
    assert any(e["kind"] == "refused" for e in entries)
    assert all(e.get("epsilon", 0) <= cfg.ceiling_epsilon for e in entries)


def test_round_crossing_the_ceiling_is_refused(tmp_path):
    """A stricter ceiling stops a site mid-run; no entry ever exceeds the ceiling."""
    cfg = PrivacyConfig(mode="dp_sgd", target_epsilon=8.0, ceiling_epsilon=10.0, ledger_dir=str(tmp_path / "l"))
    images = _images(tmp_path / "img", 40)
    generous = site_budget("site_a", {}, cfg)
    guard = _guard(generous, cfg, images, 1, rounds=4)  # planned for 8.0 over 4 rounds
    first = guard.commit(10)["epsilon"]
    mech = Mechanism(guard.hook.noise_multiplier, guard.hook.sample_rate, 10)
    second = epsilons([mech, mech], guard.delta)["epsilon"]
    strict = site_budget("site_a", {}, replace(cfg, sites={"site_a": {"ceiling_epsilon": (first + second) / 2}}))
    rounds_done = 1
    with pytest.raises(PrivacyRefused, match="ceiling"):
        for rnd in (2, 3, 4):
            _guard(strict, cfg, images, rnd, rounds=4).commit(10)
            rounds_done += 1
    assert rounds_done == 1
    entries = Ledger(Path(cfg.ledger_dir) / "site_a" / "ledger.jsonl").entries()
    assert max(e["epsilon"] for e in entries if e["kind"] == "round") <= strict.ceiling


def _real_site(tmp_path, **limits):
    """A hospital's node config: its data, and its own site.toml as `fracfl site init` writes it."""
    path = write_site_config(tmp_path / "site", **limits)
    return {"site-name": "site_a", "data-dir": str(tmp_path / "data"), "site-config": str(path)}


def test_a_real_site_takes_its_limits_and_ledger_from_its_own_file(tmp_path):
    node = _real_site(tmp_path, target_epsilon=4.0, ceiling_epsilon=6.0, delta=1e-6)
    b = site_budget("site_a", node, PrivacyConfig(mode="dp_sgd", target_epsilon=3.0, ceiling_epsilon=5.0))
    assert (b.target, b.ceiling, b.delta) == (3.0, 5.0, 1e-6)  # the server may ask for less
    assert b.ledger_dir == (tmp_path / "site" / "privacy").resolve() and b.ledger_dir.is_absolute()
    same = site_budget(
        "site_a", node, PrivacyConfig(mode="dp_sgd", target_epsilon=4.0, ceiling_epsilon=6.0, delta=1e-3)
    )
    assert (same.target, same.ceiling, same.delta) == (4.0, 6.0, 1e-6)  # a looser delta is ignored
    sim = site_budget(
        "site_a",
        {},
        PrivacyConfig(mode="dp_sgd", ledger_dir=str(tmp_path / "l"), sites={"site_a": {"target_epsilon": 6.0}}),
    )
    assert (sim.target, sim.ledger_dir) == (6.0, tmp_path / "l" / "site_a")  # simulated: the run's own values


@pytest.mark.parametrize(
    "asked, why",
    [
        (dict(ceiling_epsilon=20.0), "ceiling_epsilon 20.00 above this site's 10.00"),
        (dict(target_epsilon=9.0), "target_epsilon 9.00 above this site's 8.00"),
        (dict(sites={"site_a": {"ceiling_epsilon": 11.0}}), "ceiling_epsilon 11.00 above"),
        (dict(ledger_dir="/tmp/fresh-ledger"), "another ledger folder"),
        (dict(reproducible_noise=True), "does not allow research mode"),
    ],
)
def test_a_real_site_refuses_a_run_that_asks_for_more(tmp_path, asked, why):
    node = _real_site(tmp_path)
    with pytest.raises(PrivacyRefused, match=why) as e:
        site_budget("site_a", node, PrivacyConfig(mode="dp_sgd", **asked))
    assert str(tmp_path) not in str(e.value)  # the reason goes to the server: no paths


def test_a_real_site_without_a_usable_configuration_refuses(tmp_path, caplog):
    cfg = PrivacyConfig(mode="dp_sgd")
    with pytest.raises(PrivacyRefused, match="no privacy configuration"):
        site_budget("site_a", {"data-dir": str(tmp_path)}, cfg)
    assert "fracfl site init" in caplog.text
    bad = tmp_path / "site.toml"
    for text, field in [
        ("[privacy]\nceiling_epsilon = 10.0\nledger_dir = '/x'\n", "target_epsilon is missing"),
        (
            "[privacy]\ntarget_epsilon = 8\nceiling_epsilon = -1\nledger_dir = '/x'\n",
            "ceiling_epsilon must be a positive number",
        ),
        (
            "[privacy]\ntarget_epsilon = 8\nceiling_epsilon = 10\nledger_dir = 'rel'\n",
            "ledger_dir must be an absolute folder",
        ),
        ("[privacy\n", "cannot read"),
    ]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=field):
            load_site_privacy(bad)
        caplog.clear()
        with pytest.raises(PrivacyRefused, match="unusable"):
            site_budget("site_a", {"data-dir": str(tmp_path), "site-config": str(bad)}, cfg)
        assert str(bad) in caplog.text and field.split()[0] in caplog.text  # the details stay in the site's log
    with pytest.raises(ConfigError, match="absolute path"):
        load_site_privacy("site.toml")


@pytest.mark.parametrize("mode", ["none", "client_dp"])
def test_a_real_site_trains_only_under_the_modes_its_file_lists(tmp_path, mode):
    """The server cannot switch a hospital's noise off (`privacy=none`) or move it to itself (`client_dp`)."""
    node = _real_site(tmp_path)
    assert load_site_privacy(node["site-config"]).modes == ("dp_sgd",)  # what `fracfl site init` writes
    check_mode("site_a", node, PrivacyConfig(mode="dp_sgd"))
    with pytest.raises(PrivacyRefused, match=f"privacy mode '{mode}'; this site trains only under dp_sgd"):
        check_mode("site_a", node, PrivacyConfig(mode=mode))
    with pytest.raises(PrivacyRefused, match="no privacy configuration"):  # no file: no mode at all
        check_mode("site_a", {"data-dir": str(tmp_path)}, PrivacyConfig(mode=mode))
    check_mode("site_a", {}, PrivacyConfig(mode=mode))  # a simulated site: the coordinator's own data
    toml = Path(node["site-config"])
    toml.write_text(toml.read_text().replace('modes = ["dp_sgd"]', f'modes = ["dp_sgd", "{mode}"]'))
    check_mode("site_a", node, PrivacyConfig(mode=mode))  # the site's governance added it, knowingly
    toml.write_text(toml.read_text().replace(f'modes = ["dp_sgd", "{mode}"]', 'modes = ["off"]'))
    with pytest.raises(ConfigError, match="modes must be a non-empty list"):
        load_site_privacy(toml)


def test_site_init_writes_a_configuration_it_never_overwrites(tmp_path, capsys):
    from common.cli import main

    assert main(["site", "init", str(tmp_path / "s"), "--target-epsilon", "4", "--ceiling-epsilon", "6"]) == 0
    own = load_site_privacy(tmp_path / "s" / "site.toml")
    assert (own.target_epsilon, own.ceiling_epsilon, own.research_mode) == (4.0, 6.0, False)
    assert own.ledger_dir.is_dir() and "site-config=" in capsys.readouterr().out
    before = (tmp_path / "s" / "site.toml").read_text()
    assert main(["site", "init", str(tmp_path / "s")]) == 2
    assert (tmp_path / "s" / "site.toml").read_text() == before


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


def _rechain(entries: list[dict], **changes) -> list[str]:
    """What an insider can do: change entries and recompute every link and hash."""
    from common.privacy.ledger import GENESIS, entry_hash

    out, prev = [], GENESIS
    for e in entries:
        e = {k: v for k, v in e.items() if k != "hash"} | changes | {"prev": prev}
        e["hash"] = prev = entry_hash(e)
        out.append(json.dumps(e, sort_keys=True))
    return out


def test_head_must_match_the_last_entry_exactly(tmp_path):
    """Issue 12.2's tampering that used to pass as intact: forged appends and a deleted tail with its head."""
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    for i in range(3):
        ledger.append("round", {"round": i + 1, "epsilon": 0.5 * (i + 1)})
    good = ledger.entries()
    forged = {"seq": 4, "prev": good[-1]["hash"], "kind": "round", "round": 4, "epsilon": 1.0, "time": "x"}
    path.write_text("".join(json.dumps(e) + "\n" for e in (*good, forged | {"hash": entry_hash(forged)})))
    v = verify(path)[0]  # appended with a recomputed hash, head untouched
    assert not v.ok and v.line == 4 and "not recorded by the head" in v.problem
    extra = {**forged, "epsilon": 0.124}
    path.write_text("\n".join(_rechain([*good, extra], epsilon=0.5)) + "\n")
    assert not verify(path)[0].ok  # whole chain rewritten plus one entry, head untouched
    path.write_text("\n".join(_rechain(good, epsilon=0.5)) + "\n")
    v = verify(path)[0]  # rewritten, same length, head untouched
    assert not v.ok and "differs from the head" in v.problem
    path.write_text("".join(json.dumps(e) + "\n" for e in good[:2]))
    (tmp_path / "ledger.jsonl.head").unlink()
    v = verify(path)[0]  # last entry and head file deleted
    assert not v.ok and "head file ledger.jsonl.head missing" in v.problem
    with pytest.raises(LedgerError, match="damaged"):
        ledger.entries()
    path.unlink()
    assert verify(path)[0].ok  # no ledger and no head: a site that never trained


def test_a_refusal_under_a_lowered_ceiling_does_not_trip_the_ceiling_alarm(tmp_path, capsys):
    from common.cli import main

    cfg = PrivacyConfig(mode="dp_sgd", target_epsilon=3.0, ceiling_epsilon=4.0, ledger_dir=str(tmp_path / "l"))
    images = _images(tmp_path / "img", 40)
    spent = _guard(site_budget("site_a", {}, cfg), cfg, images, 1, rounds=1).commit(10)["epsilon"]
    lowered = replace(cfg, sites={"site_a": {"ceiling_epsilon": spent / 2}})
    with pytest.raises(PrivacyRefused, match="budget exhausted"):
        _guard(site_budget("site_a", {}, lowered), lowered, images, 1, run_id="run-b")
    assert main(["audit", "show", cfg.ledger_dir, "--ceiling-check"]) == 0  # it refused: nothing was spent
    out = capsys.readouterr().out
    assert "ABOVE CEILING" not in out and "refused" in out


def test_the_card_lists_a_site_refused_without_a_report_and_why(tmp_path):
    from server.history import RoundRecord
    from server.privacy import dp_sgd_section, latest_reports

    cfg = PrivacyConfig(mode="dp_sgd", ledger_dir=str(tmp_path / "l"))
    first = _guard(site_budget("site_a", {}, cfg), cfg, _images(tmp_path / "img", 20), 1).commit(5)
    with pytest.raises(PrivacyRefused) as refused:  # a real site asked for a higher ceiling: no report
        site_budget("site_b", _real_site(tmp_path), PrivacyConfig(mode="dp_sgd", ceiling_epsilon=20.0))
    assert refused.value.report is None
    records = [
        RoundRecord(1, "site_a", "train", privacy=first),
        RoundRecord(1, "site_b", "train", status=f"refused: {refused.value}"),
        RoundRecord(1, "site_b", "evaluate"),
    ]
    sites = dp_sgd_section(latest_reports(records))["sites"]
    assert set(sites) == {"site_a", "site_b"} and sites["site_a"]["status"] == "trained"
    assert sites["site_b"] == {"status": f"refused: {refused.value}"[:120]}
    later = latest_reports(
        [RoundRecord(2, "site_a", "train", status="failed: internal error")], latest_reports(records)
    )
    assert later["site_a"]["epsilon"] == first["epsilon"]  # what it spent stays on the card beside why it stopped
    assert later["site_a"]["status"] == "failed: internal error"


def test_each_privacy_mode_is_one_object_on_the_server(tmp_path):
    """The run asks the mode's object; an unknown mode is refused, never run without privacy."""
    from flwr.serverapp.strategy import FedAvg

    from server.history import RoundRecord
    from server.privacy import server_privacy

    def mode(name: str, **kw):
        return server_privacy(PrivacyConfig(mode=name, ledger_dir=str(tmp_path / "l"), **kw), tmp_path, "r1", 3, 1.0)

    plain, strategy = mode("none"), FedAvg()
    assert plain.wrap(strategy) is strategy and not plain.equal_weights and plain.card_section({}) is None
    dp = mode("dp_sgd")
    assert dp.wrap(strategy) is strategy and not dp.equal_weights
    assert dp.audit(tmp_path / "report") is None  # no site reported: no audit page
    cfg = PrivacyConfig(mode="dp_sgd", ledger_dir=str(tmp_path / "l"))
    report = _guard(site_budget("site_a", {}, cfg), cfg, _images(tmp_path / "img", 20), 1).commit(5)
    dp.recorded([RoundRecord(1, "site_a", "train", 20, privacy=report)])
    dp.recorded([RoundRecord(1, "site_a", "train", 20, privacy=report)])  # a resumed round is not recorded twice
    assert len(Ledger(tmp_path / "privacy-ledger.jsonl").entries()) == 1
    assert dp.audit(tmp_path / "report").name == "privacy-audit.html"
    assert dp.card_section({"site_a": report})["sites"]["site_a"]["epsilon"] == report["epsilon"]
    client = mode("client_dp", noise_multiplier=0.1, max_grad_norm=1.0, ceiling_epsilon=100.0)
    wrapped = client.wrap(strategy)
    assert wrapped is not strategy and wrapped.strategy is strategy and client.equal_weights
    client.resumed(2)  # a resumed run composes the releases it had made
    assert client.card_section({})["releases"] == 2 and client.card_section({})["epsilon"] > 0
    with pytest.raises(ConfigError, match="privacy.mode: unknown mode 'dpsgd'"):
        mode("dpsgd")


def test_the_sample_rate_counts_every_copy_the_sampler_draws(tmp_path):
    cfg = PrivacyConfig(mode="dp_sgd", ledger_dir=str(tmp_path / "l"))
    images = _images(tmp_path / "img", 20)
    copy = tmp_path / "img" / "copy.png"
    copy.write_bytes(images[0].read_bytes())  # the same radiograph under another name
    guard = _guard(site_budget("site_a", {}, cfg), cfg, [*images, copy], 1)
    assert guard.plan["images"] == 21 and guard.hook.sample_rate == pytest.approx(4 / 21)


def test_a_signed_ledger_rejects_entries_without_its_key(tmp_path):
    """Signatures catch what an attacker without the site's key appends, even with a consistent head."""
    from common.privacy.signing import KEY_NAME, load_or_create

    cfg = PrivacyConfig(mode="dp_sgd", ledger_dir=str(tmp_path / "l"))
    _guard(site_budget("site_a", {}, cfg), cfg, _images(tmp_path / "img", 20), 1).commit(5)
    folder = Path(cfg.ledger_dir) / "site_a"
    assert (folder / KEY_NAME).stat().st_mode & 0o077 == 0  # the private key is owner-only
    entries = Ledger(folder / "ledger.jsonl").entries()
    assert all(e["sig"] and e["key"] == entries[0]["key"] for e in entries)
    assert str(verify(folder / "ledger.jsonl")[0]).endswith(", signed")
    intruder = Ledger(folder / "ledger.jsonl", load_or_create(tmp_path / "other.pem"))
    with pytest.raises(LedgerError, match="another key"):
        intruder.append("round", {"round": 2, "epsilon": 0.1})
    unsigned = {"seq": len(entries) + 1, "prev": entries[-1]["hash"], "kind": "round", "epsilon": 0.1}
    unsigned["hash"] = entry_hash(unsigned)
    with open(folder / "ledger.jsonl", "a") as f:
        f.write(json.dumps(unsigned) + "\n")
    (folder / "ledger.jsonl.head").write_text(json.dumps({"seq": unsigned["seq"], "hash": unsigned["hash"]}))
    v = verify(folder / "ledger.jsonl")[0]
    assert not v.ok and v.line == unsigned["seq"] and "not signed" in v.problem
