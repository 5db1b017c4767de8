"""Governance's view: budgets per site from site and server ledgers, verification exit codes, the HTML report."""

from __future__ import annotations

from common.cli import main
from common.privacy.ledger import Ledger
from server.audit import read_all, render_html

SITE = {"site": "st_marys", "run_id": "r1", "ceiling_epsilon": 5.0, "target_epsilon": 4.0, "delta": 1e-5}


def _ledgers(tmp_path):
    site = Ledger(tmp_path / "sites" / "st_marys" / "ledger.jsonl")
    site.append("plan", {**SITE, "round": 1, "epsilon": 0.0, "planned_rounds": 3, "projected_epsilon": 4.0})
    e1 = site.append("round", {**SITE, "round": 1, "epsilon": 2.5})
    server = Ledger(tmp_path / "run" / "privacy-ledger.jsonl")
    server.append("site-report", {**SITE, "round": 1, "epsilon": 2.5, "ledger_head": e1["hash"], "status": "ok"})
    server.append("site-report", {**SITE, "site": "north", "round": 1, "epsilon": 6.0, "ledger_head": "x",
                                  "status": "ok"})  # above its ceiling: must be flagged
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
