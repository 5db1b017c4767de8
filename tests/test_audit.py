"""Governance's view: budgets per site from site and server ledgers, verification exit codes, the HTML report."""

from __future__ import annotations

import json

from client.privacy import report
from common.cli import main
from common.privacy.ledger import Ledger, verify
from server.audit import read_all, render_html, verify_all
from server.history import RoundRecord
from server.privacy import append_site_reports

SITE = {"site": "st_marys", "run_id": "r1", "ceiling_epsilon": 5.0, "target_epsilon": 4.0, "delta": 1e-5}


def _ledgers(tmp_path):
    site = Ledger(tmp_path / "sites" / "st_marys" / "ledger.jsonl")
    site.append("plan", {**SITE, "round": 1, "epsilon": 0.0, "planned_rounds": 3, "projected_epsilon": 4.0})
    e1 = site.append("round", {**SITE, "round": 1, "epsilon": 2.5})
    server = Ledger(tmp_path / "run" / "privacy-ledger.jsonl")
    server.append("site-report", {**SITE, "round": 1, "epsilon": 2.5, "ledger_head": e1["hash"], "status": "ok"})
    server.append(
        "site-report", {**SITE, "site": "north", "round": 1, "epsilon": 6.0, "ledger_head": "x", "status": "ok"}
    )  # above its ceiling: must be flagged
    return site, server


def test_budgets_count_each_round_once_and_flag_entries_above_the_ceiling(tmp_path):
    _ledgers(tmp_path)
    verdicts, sites = read_all([tmp_path])
    assert all(v.ok for v in verdicts.values()) and len(verdicts) == 2
    b = sites["st_marys"]
    assert (b.spent, b.ceiling, b.remaining, b.rounds_trained) == (2.5, 5.0, 2.5, 1)  # site + server copy: once
    assert b.projected == 4.0  # two of three planned rounds still to come
    assert sites["north"].over_ceiling and not b.over_ceiling
    page = render_html(verdicts, sites)
    assert "st_marys" in page and page.count("data:image/png;base64,") == 2


def test_audit_commands_exit_codes(tmp_path, capsys):
    site, _ = _ledgers(tmp_path)
    assert main(["audit", "verify", str(tmp_path)]) == 0
    assert main(["audit", "show", str(tmp_path / "sites")]) == 0
    assert main(["audit", "show", str(tmp_path), "--ceiling-check"]) == 1  # north is above its ceiling
    assert main(["audit", "report", str(tmp_path), "--out", str(tmp_path / "a.html")]) == 0
    assert (tmp_path / "a.html").read_text().startswith("<!doctype html>")
    lines = site.path.read_text().splitlines()
    site.path.write_text(lines[0] + "\n" + lines[1].replace('"epsilon": 2.5', '"epsilon": 0.5') + "\n")
    assert main(["audit", "verify", str(tmp_path / "sites")]) == 1
    assert "broken at line 2" in capsys.readouterr().out
    assert main(["audit", "show", str(tmp_path / "missing")]) == 2  # a clear error, not a traceback


def _reported_run(tmp_path, rounds: int = 3):
    """A site ledger and the server's summary ledger of what the site reported, through the real code paths."""
    site = Ledger(tmp_path / "site" / "privacy" / "ledger.jsonl")
    run = tmp_path / "run" / "privacy-ledger.jsonl"
    for rnd in range(1, rounds + 1):
        rep = report(site.append("round", {**SITE, "round": rnd, "epsilon": 0.5 * rnd}), None)
        append_site_reports(run, "r1", [RoundRecord(rnd, "st_marys", "train", privacy=rep)])
    return site, run


def _replace(site: Ledger, lines: list[str]) -> None:
    """Rewrite the ledger and its head consistently, as an insider with write access can."""
    site.path.write_text("".join(line + "\n" for line in lines))
    last = json.loads(lines[-1])
    site.path.with_name("ledger.jsonl.head").write_text(json.dumps({"seq": last["seq"], "hash": last["hash"]}))


def test_a_consistently_rewritten_ledger_is_caught_by_the_heads_the_server_recorded(tmp_path, capsys):
    from tests.test_privacy import _rechain

    site, run = _reported_run(tmp_path, rounds=2)
    older = tmp_path / "older"  # a backup taken after round 2, with its head
    older.mkdir()
    for f in site.path.parent.iterdir():
        (older / f.name).write_bytes(f.read_bytes())
    rnd3 = report(site.append("round", {**SITE, "round": 3, "epsilon": 1.5}), None)
    append_site_reports(run, "r1", [RoundRecord(3, "st_marys", "train", privacy=rnd3)])
    assert main(["audit", "verify", str(tmp_path / "site"), "--against", str(tmp_path / "run")]) == 0
    assert "matching all 3 heads the server recorded" in capsys.readouterr().out
    entries = site.entries()
    cases = {
        "rewritten": _rechain(entries, epsilon=0.5),
        "rewritten plus one": _rechain([*entries, {**entries[-1], "seq": 4, "round": 4}], epsilon=0.5),
        "rolled back": (older / "ledger.jsonl").read_text().splitlines(),
    }
    for case, lines in cases.items():
        _replace(site, lines)
        assert verify(site.path)[0].ok, case  # consistent on its own: only the server's heads can tell
        assert main(["audit", "verify", str(site.path), "--against", str(run)]) == 1, case
        out = capsys.readouterr().out
        assert "recorded" in out and ("rewritten" in out or "rolled back" in out), case
        assert main(["audit", "verify", str(tmp_path / "site"), str(tmp_path / "run")]) == 1, case  # found: checked
        capsys.readouterr()
    site.path.write_text("".join(json.dumps(e) + "\n" for e in entries[:-1]))  # last entry and head deleted
    site.path.with_name("ledger.jsonl.head").unlink()
    assert main(["audit", "verify", str(site.path), "--against", str(run)]) == 1
    assert "head file ledger.jsonl.head missing" in capsys.readouterr().out


def test_cross_check_only_uses_the_sites_own_heads(tmp_path):
    site, run = _reported_run(tmp_path, rounds=1)
    other = Ledger(tmp_path / "north" / "ledger.jsonl")
    other.append("round", {**SITE, "site": "north", "round": 1, "epsilon": 1.0})
    verdicts, _ = verify_all([site.path, other.path, run])
    assert verdicts[site.path].anchored == 1 and verdicts[other.path].anchored == 0
    assert "recorded no head" in str(verdicts[other.path])
    assert verdicts[run].anchored is None  # the server's own ledger is checked on its own
