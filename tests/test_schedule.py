"""Scheduled runs: what is due when (pure), a loop that logs failed runs and goes on, and, through Flower's
simulation engine, a periodic run, a check run that no site asked for (skipped) and one a site asked for because its
reviewers disagree with the model (trained, warm-started from the previous version)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
from test_disagreement import _case, fill_store
from tests_support import toy_dataset

from common.errors import ConfigError
from server.schedule import CHECK, PERIODIC, History, Policy, due, duration, fill, read_log, serve, wait

DAY = 86400.0


def test_durations():
    assert [duration(t) for t in ("90s", "15m", "6h", "7d", "30", "0.5h")] == [90, 900, 21600, 7 * DAY, 30, 1800]
    with pytest.raises(ConfigError, match="7x"):
        duration("7x")
    with pytest.raises(ConfigError, match="--every"):
        Policy()


def test_what_is_due():
    both = Policy(every=7 * DAY, check_every=3600, min_gap=DAY)
    assert due(0, both, History()) == PERIODIC  # never ran
    ran = History(last_periodic=0, last_started=0, last_trained=0)
    assert due(3600, both, ran) is None  # asked an hour ago, but a run trained less than min_gap ago
    assert wait(3600, both, ran) == DAY - 3600
    assert due(DAY, both, ran) == CHECK
    assert due(7 * DAY, both, ran) == PERIODIC  # a periodic run asks the sites too: no check beside it
    skipped = History(last_periodic=0, last_started=2 * DAY, last_trained=0)  # a check two days in, nobody asked
    assert due(2 * DAY + 1800, both, skipped) is None and wait(2 * DAY + 1800, both, skipped) == 1800
    assert due(10, Policy(check_every=60), History()) == CHECK
    assert due(10, Policy(every=60), History(last_periodic=0, last_started=0)) is None


def test_history_from_the_log_counts_failed_runs_as_attempts():
    log = [
        {"t": 100.0, "kind": PERIODIC, "trained": False, "error": "exit code 1"},
        {"t": 200.0, "kind": CHECK, "trained": True},
        {"t": 300.0, "kind": CHECK, "trained": False, "skipped": "no site requested a round"},
    ]
    assert History.from_log(log) == History(last_periodic=100.0, last_started=300.0, last_trained=200.0)
    assert fill(["x", "run_dir={run_dir}", "--mode={round_requests}", "{run_id}"], "r1", Path("/d"), CHECK) == [
        "x",
        "run_dir=/d",
        "--mode=require",
        "r1",
    ]


def _cli(*argv: str) -> int:
    from server.commands.schedule import register

    parser = argparse.ArgumentParser(prog="fracfl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_failed_runs_are_logged_and_the_loop_goes_on(tmp_path):
    fails = [sys.executable, "-c", "import sys; print('broken'); sys.exit(3)", "{run_dir}"]
    assert _cli("schedule", "--dir", str(tmp_path), "--every", "0s", "--max-runs", "2", "--", *fails) == 0
    entries = read_log(tmp_path)
    assert [(e["kind"], e["exit_code"], e["trained"]) for e in entries] == [(PERIODIC, 3, False)] * 2
    assert all(e["error"].startswith("exit code 3") for e in entries)
    assert (Path(entries[0]["run_dir"]) / "schedule-run.log").read_text().strip() == "broken"
    assert len({e["run_dir"] for e in entries}) == 2
    (tmp_path / "schedule.jsonl").open("a").write("{cut short\n")  # a write interrupted by a crash
    assert serve(Policy(every=0), [str(tmp_path / "missing-program"), "{run_dir}"], tmp_path, max_runs=1) == 1
    entries = read_log(tmp_path)
    assert len(entries) == 3 and entries[-1]["exit_code"] is None and "cannot start" in entries[-1]["error"]
    with pytest.raises(ConfigError, match="run_dir"):
        serve(Policy(every=0), ["fracfl", "simulate"], tmp_path, max_runs=1)


BASE = [
    "model=yolov7_nano",
    "partition=iid",
    "federation.sites=3",
    "federation.min_sites=3",
    "federation.rounds=1",
    "tracking=disabled",
    "train.imgsz=64",
    "train.batch_size=8",
    "train.local_epochs=2",
    "augment=none",
    "export.enabled=false",
    "progress=false",
]


def _pooled(run_dir: str, rnd: int) -> float:
    records = [json.loads(line) for line in (Path(run_dir) / "records.jsonl").read_text().splitlines()]
    return next(r["metrics"]["map50"] for r in records if r["phase"] == "server" and r["round"] == rnd)


@pytest.mark.slow
def test_periodic_skipped_and_requested_runs_through_the_simulation_engine(tmp_path):
    toy = toy_dataset(tmp_path / "toy", n=24, positives=18)
    registry, folder, db = tmp_path / "registry", tmp_path / "schedule", tmp_path / "site_0" / "feedback.db"
    store = fill_store(db, reviewed=5, disagreeing=5)  # every review disagrees, but 5 are below the site's minimum
    site_toml = tmp_path / "site_0" / "site.toml"
    site_toml.write_text(
        f'[continual]\nfeedback_db = "{db}"\ndisagreement_threshold = 0.3\ndisagreement_min_reviewed = 10\n'
    )
    command = [
        sys.executable,
        "-m",
        "common.cli",
        "simulate",
        *BASE,
        f"partition.source={toy}",
        f"registry={registry}",
        "federation.warm_start=latest",
        f"+site_configs.site_0={site_toml}",
        "run_dir={run_dir}",
        "run_id={run_id}",
        "federation.round_requests={round_requests}",
    ]
    policy = Policy(every=7 * DAY, check_every=0)
    for _ in range(2):  # the periodic run (it trains), then a check that no site asked for
        assert serve(policy, command, folder, max_runs=1) == 1
    for _ in range(7):  # now 12 reviewed images of the current model, 6 disagreeing: site_0 asks for a round
        _case(store, f"2.25.8{_}", "v0002", "confirm" if _ < 6 else "reject")
    assert serve(policy, command, folder, max_runs=1) == 1

    periodic, skipped, requested = read_log(folder)
    assert [e["kind"] for e in (periodic, skipped, requested)] == [PERIODIC, CHECK, CHECK]
    assert [e.get("error") for e in (periodic, skipped, requested)] == [None] * 3
    assert (periodic["trained"], periodic["latest"], periodic["warm_start"]) == (True, "v0001", None)
    asked = periodic["round_requests"]
    assert (asked["asked"], asked["answered"], asked["requesting"]) == (3, 3, [])
    assert asked["disagreement"] == {"site_0": None, "site_1": None, "site_2": None}  # too few reviews: no rate

    assert not skipped["trained"] and skipped["skipped"].startswith("no site requested a round")
    assert not (Path(skipped["run_dir"]) / "records.jsonl").exists()  # nothing evaluated, trained or published
    assert sorted(p.name for p in registry.glob("v0*")) == ["v0001", "v0002"]

    assert requested["trained"] and requested["round_requests"]["requesting"] == ["site_0"]
    assert requested["round_requests"]["disagreement"]["site_0"] == 0.5  # 6 of 12, coarsened, numbers only
    assert (requested["warm_start"], requested["latest"]) == ("v0001", "v0002")
    card = json.loads((registry / "v0002" / "card.json").read_text())
    assert card["parent"] == "v0001" and card["run_id"] == requested["run_id"]
    # the requested run started from v0001's weights: its initial model scores what v0001 scored
    assert _pooled(requested["run_dir"], 0) == pytest.approx(_pooled(periodic["run_dir"], 1))
