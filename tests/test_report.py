"""Run report: CSV, curves, the Markdown summary and its facts (JSON) from synthetic round records."""

from __future__ import annotations

import csv
import json
import math

from server.history import RoundRecord
from server.report import report_facts, write_report

SITES = ("general_hospital", "trauma_center", "rural_clinic")
ROUNDS = 4  # rounds 1..4 after the initial model (round 0)
REJECTED = (2, "trauma_center")  # its update had non-finite values
EXHAUSTED = (3, "rural_clinic")  # privacy budget used up from round 3 on


def synthetic_records() -> list[RoundRecord]:
    """3 sites x 4 rounds: per round, each site trains and evaluates, then the server evaluates the pooled model."""
    return [RoundRecord(**r) for r in synthetic_dicts()]


def synthetic_dicts() -> list[dict]:
    pooled_map = {0: 0.05, 1: 0.22, 2: 0.31, 3: 0.44, 4: 0.41}  # best round: 3
    recs = [
        {
            "round": 0,
            "site": "pooled",
            "phase": "server",
            "examples": 120,
            "status": "ok",
            "metrics": {"map50": 0.05, "map50_95": 0.02, "sensitivity": 0.3, "specificity": 0.6, "roc_auc": 0.52},
        }
    ]
    for rnd in range(1, ROUNDS + 1):
        for i, site in enumerate(SITES):
            if site == EXHAUSTED[1] and rnd >= EXHAUSTED[0]:
                recs.append(
                    {
                        "round": rnd,
                        "site": site,
                        "phase": "train",
                        "examples": 0,
                        "status": "budget exhausted",
                        "metrics": {},
                    }
                )
                continue
            status = "rejected: non-finite values" if (rnd, site) == REJECTED else "ok"
            loss = math.inf if status != "ok" else 2.0 / (rnd + i * 0.3)
            recs.append(
                {
                    "round": rnd,
                    "site": site,
                    "phase": "train",
                    "examples": 40 + 10 * i,
                    "status": status,
                    "metrics": {"loss": loss},
                }
            )
        for i, site in enumerate(SITES):
            m = pooled_map[rnd] + 0.06 * (i - 1) + 0.02 * (i == 1) * (-1) ** rnd
            recs.append(
                {
                    "round": rnd,
                    "site": site,
                    "phase": "evaluate",
                    "examples": 12 + 4 * i,
                    "status": "ok",
                    "metrics": {
                        "map50": m,
                        "map50_95": m / 2.2,
                        "sensitivity": 0.53 + 0.08 * rnd - 0.06 * i,
                        "specificity": 0.72 + 0.03 * rnd - 0.05 * (i - 1) * (-1) ** rnd,
                        "roc_auc": 0.6 + 0.06 * rnd - 0.04 * i,
                    },
                }
            )
        m = pooled_map[rnd]
        recs.append(
            {
                "round": rnd,
                "site": "pooled",
                "phase": "server",
                "examples": 120,
                "status": "ok",
                "metrics": {
                    "map50": m,
                    "map50_95": m / 2,
                    "sensitivity": 0.5 + 0.08 * rnd,
                    "specificity": 0.7 + 0.04 * rnd,
                    "roc_auc": 0.6 + 0.06 * rnd,
                },
            }
        )
    return recs


def test_write_report(tmp_path):
    recs = synthetic_records()
    paths = write_report(
        recs,
        tmp_path / "report",
        "Demo federation",
        {"strategy": "fedavg", "rounds": ROUNDS, "dp": {"epsilon": 8.0, "delta": 1e-5}},
    )
    assert set(paths) == {"rounds_csv", "curves_png", "forgetting_png", "summary_md", "facts_json"}
    assert paths["facts_json"].name == "facts.json"

    with paths["rounds_csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "round",
        "site",
        "phase",
        "examples",
        "status",
        "map50",
        "map50_95",
        "sensitivity",
        "specificity",
        "roc_auc",
        "loss",
    ]
    assert len(rows) == len(recs)
    rejected = next(r for r in rows if r["status"].startswith("rejected"))
    assert (int(rejected["round"]), rejected["site"], rejected["loss"], rejected["map50"]) == (
        2,
        "trauma_center",
        "inf",
        "",
    )
    assert sum(r["status"] == "budget exhausted" for r in rows) == 2

    assert paths["curves_png"].stat().st_size > 10_000
    assert paths["curves_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    md = paths["summary_md"].read_text()
    assert md.startswith("# Demo federation")
    assert "- round 2, trauma_center (train): rejected: non-finite values" in md
    assert "- round 3, rural_clinic (train): budget exhausted" in md
    assert "**Best pooled round by mAP@0.5:** round 3 (mAP@0.5 0.440)" in md
    assert "| dp.epsilon | 8.0 |" in md
    assert "| rural_clinic | train | 4 | 0 | budget exhausted |" in md

    facts = json.loads(paths["facts_json"].read_text())
    assert facts["best_pooled"]["round"] == 3
    assert facts["sites"] == sorted(SITES)
    assert facts["rounds"] == {"first": 0, "last": 4, "count": 5}
    assert [e["round"] for e in facts["events"]] == [2, 3, 4]
    assert [p["round"] for p in facts["pooled"]] == [0, 1, 2, 3, 4]
    rej = next(f for f in facts["final"] if f["site"] == "trauma_center" and f["phase"] == "train")
    assert rej["status"] == "ok" and rej["round"] == 4


def test_empty_report(tmp_path):
    paths = write_report([], tmp_path, "Nothing yet", {})
    assert "No round records yet." in paths["summary_md"].read_text()
    assert paths["curves_png"].exists()


def test_resumed_round_latest_wins():
    recs = synthetic_records()
    redo = RoundRecord(4, "pooled", "server", 120, "ok", {"map50": 0.6})
    facts = report_facts(recs + [redo], "Resumed", {})  # the facts only: no need to draw
    assert facts["best_pooled"]["round"] == 4 and facts["best_pooled"]["map50"] == 0.6
    assert [p["round"] for p in facts["pooled"]] == [0, 1, 2, 3, 4]
