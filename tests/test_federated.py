"""Federated runs through Flower's real simulation engine (Ray backend): learning, screening, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests_support import toy_dataset

from common.cli import main

pytestmark = pytest.mark.slow

BASE = [
    "model=yolov7_nano",
    "partition=iid",
    "federation.sites=3",
    "federation.min_sites=3",
    "tracking=disabled",
    "train.imgsz=64",
    "train.batch_size=8",
    "train.optimizer=adamw",
    "train.lr=0.004",
    "train.grad_clip=null",
    "augment=none",
    "progress=false",
]
NO_EXPORT = ["export.enabled=false"]  # edge exports are tested once, in the first run, and in test_export.py


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines() if line.strip()]


def _pooled(records: list[dict], rnd: int) -> dict:
    return next(r["metrics"] for r in records if r["phase"] == "server" and r["round"] == rnd)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return toy_dataset(tmp_path_factory.mktemp("toy"), n=30, positives=24)


def test_three_sites_learn_and_publish(toy, tmp_path):
    run = tmp_path / "run"
    assert (
        main(
            [
                "simulate",
                *BASE,
                f"partition.source={toy}",
                "federation.rounds=3",
                "train.local_epochs=50",
                "export.every_k=3",
                "export.variants=[fp32,int8]",
                f"run_dir={run}",
            ]
        )
        == 0
    )
    records = _records(run)
    assert {r["round"] for r in records} == {0, 1, 2, 3}
    trained = [r for r in records if r["phase"] == "train"]
    assert len(trained) == 9 and all(r["status"] == "ok" for r in trained)
    assert {r["site"] for r in trained} == {"site_0", "site_1", "site_2"}
    before, after = _pooled(records, 0), _pooled(records, 3)
    assert after["map50"] > before["map50"] + 0.2  # the published global model is better than the initial one
    cards = sorted((run / "registry").glob("v*/card.json"))
    assert [json.loads(c.read_text())["round"] for c in cards] == [1, 2, 3]
    card = json.loads(cards[-1].read_text())
    assert card["metrics"]["pooled"]["map50"] == pytest.approx(after["map50"])
    assert {s["name"] for s in card["sites"]} == {"site_0", "site_1", "site_2"}
    assert (run / "report" / "summary.md").is_file() and (run / "report" / "curves.png").is_file()
    best = json.loads((run / "outcome.json").read_text())["best"]  # the server's choice of round, reported
    scores = {rnd: _pooled(records, rnd)["map50"] for rnd in (1, 2, 3)}
    assert best["map50"] == pytest.approx(max(scores.values())) and scores[best["round"]] == best["map50"]
    assert best["version"] == f"v{best['round']:04d}" and best["by"] == "pooled validation mAP50"
    # The last version's edge exports, made in the background while the run went on, are on its card.
    exports = {e["variant"]: e for e in card["exports"]}
    assert set(exports) == {"fp32", "int8"} and all(e["status"] == "ok" for e in exports.values()), exports
    assert exports["fp32"]["meets_goal"] and exports["fp32"]["map50_torch"] == pytest.approx(after["map50"])
    assert [json.loads(c.read_text())["exports"] for c in cards[:2]] == [[], []]  # every_k=3: only the last
    assert main(["registry", "verify", "all", "--registry", str(run / "registry")]) == 0  # through the real entry point
    assert main(["registry", "show", "latest", "--registry", str(run / "registry")]) == 0


@pytest.mark.parametrize("fault,reason", [("nan", "non-finite"), ("shape", "wrong shape")])
def test_broken_update_is_rejected_and_round_completes(toy, tmp_path, fault, reason):
    run = tmp_path / "run"
    assert (
        main(
            [
                "simulate",
                *BASE,
                f"partition.source={toy}",
                "federation.rounds=1",
                "train.local_epochs=2",
                f"federation.faults={{site_1: '{fault}'}}",
                *NO_EXPORT,
                f"run_dir={run}",
            ]
        )
        == 0
    )
    train = {r["site"]: r for r in _records(run) if r["phase"] == "train"}
    assert train["site_1"]["status"].startswith("rejected:") and reason in train["site_1"]["status"]
    assert train["site_0"]["status"] == "ok" and train["site_2"]["status"] == "ok"
    card = json.loads(next((run / "registry").glob("v*/card.json")).read_text())
    assert next(s for s in card["sites"] if s["name"] == "site_1")["status"].startswith("rejected")


def test_killed_server_resumes_without_repeating_or_losing_a_round(toy, tmp_path):
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "common.cli",
        "simulate",
        *BASE,
        f"partition.source={toy}",
        "federation.rounds=3",
        "train.local_epochs=1",
        *NO_EXPORT,
        f"run_dir={run}",
    ]
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = run / "checkpoint" / "checkpoint.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (pointer.is_file() and json.loads(pointer.read_text())["round"] >= 1):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the server and its Ray workers die mid-run
    proc.wait()
    done = json.loads(pointer.read_text())["round"]
    assert done < 3, "the run finished before it could be killed"

    assert main(["simulate", f"resume={run}"]) == 0
    records = _records(run)
    rounds = [r["round"] for r in records if r["phase"] == "server"]
    assert rounds == [0, 1, 2, 3]  # each round once, in order
    trained = [(r["round"], r["site"]) for r in records if r["phase"] == "train"]
    assert len(trained) == len(set(trained)) == 9
    # the resumed rounds accept every update: the checkpoint kept each tensor's shape (0-d counters included)
    assert all(r["status"] == "ok" for r in records if r["phase"] == "train"), records
    cards = [json.loads(c.read_text()) for c in sorted((run / "registry").glob("v*/card.json"))]
    assert [c["round"] for c in cards] == [1, 2, 3]
    assert [c["parent"] for c in cards][1:] == [cards[0]["version"], cards[1]["version"]]


DP = ["privacy=dp_sgd", "federation.rounds=1", "train.local_epochs=2", "federation.fraction_evaluate=0", *NO_EXPORT]


def test_dp_run_publishes_each_sites_epsilon_and_an_exhausted_site_is_refused(toy, tmp_path):
    """Run 1 spends each site's budget (target 3); run 2 (same images, same ledgers) raises two sites' targets,
    while site_2 lowers its own below what it already spent: site_2 refuses with "budget exhausted" and the round
    goes on with the other two."""
    ledgers = tmp_path / "ledgers"
    args = [*BASE, *DP, f"partition.source={toy}", f"privacy.ledger_dir={ledgers}"]
    assert (
        main(
            ["simulate", *args, "privacy.target_epsilon=3", "privacy.ceiling_epsilon=4", f"run_dir={tmp_path / 'run1'}"]
        )
        == 0
    )
    card1 = json.loads(next((tmp_path / "run1" / "registry").glob("v*/card.json")).read_text())
    spent = {s: f["epsilon"] for s, f in card1["privacy"]["sites"].items()}
    assert set(spent) == {"site_0", "site_1", "site_2"} and all(2.0 < e <= 3.0 * 1.01 for e in spent.values())

    run2 = tmp_path / "run2"
    assert (
        main(
            [
                "simulate",
                *args,
                "privacy.target_epsilon=6",
                "privacy.ceiling_epsilon=8",
                "+privacy.sites.site_2={target_epsilon: 2.5, ceiling_epsilon: 4}",
                f"run_dir={run2}",
            ]
        )
        == 0
    )
    train = {r["site"]: r for r in _records(run2) if r["phase"] == "train"}
    assert train["site_2"]["status"].startswith("refused: privacy budget exhausted")
    assert train["site_0"]["status"] == "ok" and train["site_1"]["status"] == "ok"
    card = json.loads(next((run2 / "registry").glob("v*/card.json")).read_text())
    assert next(s for s in card["sites"] if s["name"] == "site_2")["status"] == "budget exhausted"
    sites = card["privacy"]["sites"]
    assert sites["site_0"]["epsilon"] > spent["site_0"]  # spending continued from run 1, not from zero
    assert sites["site_0"]["epsilon"] <= 6.0 * 1.01 and sites["site_2"]["epsilon"] <= 4.0
    for site in ("site_0", "site_1", "site_2"):  # every site ledger intact, no entry above that site's ceiling
        assert main(["audit", "verify", str(ledgers / site)]) == 0
    assert main(["audit", "verify", str(run2 / "privacy-ledger.jsonl")]) == 0
    assert main(["audit", "verify", str(ledgers), "--against", str(tmp_path / "run1"), str(run2)]) == 0
    assert all(s["ledger_seq"] >= 1 for s in card["privacy"]["sites"].values())  # each site's head, on the card
    assert main(["audit", "show", str(ledgers), "--ceiling-check"]) == 0


def test_client_dp_clips_each_site_and_noises_the_aggregate(toy, tmp_path):
    """Flower's client-level DP through our loop: the global change between two rounds is the noise Flower adds
    (std = sigma * clip / sites per coordinate) plus at most the clipping norm, and the card states epsilon."""
    import numpy as np

    from common.nn.weights import read_weights
    from server.updates import split_state

    run = tmp_path / "run"
    sigma, clip = 0.05, 0.01
    assert (
        main(
            [
                "simulate",
                *BASE,
                *NO_EXPORT,
                "privacy=client_dp",
                f"privacy.max_grad_norm={clip}",
                f"privacy.noise_multiplier={sigma}",
                "privacy.ceiling_epsilon=1e9",
                "federation.rounds=2",
                "train.local_epochs=2",
                "federation.fraction_evaluate=0",
                f"partition.source={toy}",
                f"run_dir={run}",
            ]
        )
        == 0
    )
    v1, v2 = (
        {k: t.numpy() for k, t in read_weights(run / "registry" / v / "model.safetensors")[0].items()}
        for v in ("v0001", "v0002")
    )
    params, fixed = split_state(v1)
    change = np.sqrt(sum(float(((v2[k] - v1[k]).astype(np.float64) ** 2).sum()) for k in params))
    size = sum(v.size for v in params.values())
    noise = sigma * clip / 3 * np.sqrt(size)
    assert 0.9 * noise - clip <= change <= 1.1 * noise + clip  # unclipped local updates would be far larger
    assert all(np.array_equal(v1[k], v2[k]) for k in fixed)  # the fixed DFL projection is never noised
    card = json.loads((run / "registry" / "v0002" / "card.json").read_text())
    assert card["privacy"]["mode"] == "client_dp" and card["privacy"]["releases"] == 2
    assert (
        card["privacy"]["epsilon"]
        > json.loads((run / "registry" / "v0001" / "card.json").read_text())["privacy"]["epsilon"]
        > 0
    )


def test_best_round_falls_back_to_the_sites_weighted_validation():
    from server.history import RoundRecord
    from server.run import best_round

    rec = lambda rnd, site, phase, m, n=10, status="ok": RoundRecord(rnd, site, phase, n, status, {"map50": m})
    records = [
        rec(0, "pooled", "server", 0.9),
        rec(1, "pooled", "server", None),
        rec(1, "a", "evaluate", 0.2, 30),
        rec(1, "b", "evaluate", 0.8, 10),
        rec(2, "a", "evaluate", 0.4, 30),
        rec(2, "b", "evaluate", 0.1, 10),
        rec(2, "c", "evaluate", 0.99, 10, "failed: x"),
    ]
    best = best_round(records)
    assert best["round"] == 1 and best["map50"] == pytest.approx(0.35) and best["by"].startswith("sites'")
    assert best_round([rec(0, "pooled", "server", 0.5)]) is None  # the initial model is no round's result
