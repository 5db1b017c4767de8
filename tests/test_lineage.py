"""Lineage: a run warm-starts from the registry's latest or a named version (same model only), its first card names
that version as parent, a resumed run continues from its checkpoint instead of warm-starting again, and
`fracfl registry show` walks the parents. A warm start through real Flower rounds: test_schedule.py."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from tests_support import NANO

from common.config import ModelConfig
from common.errors import ConfigError
from common.nn.model import build_model
from common.nn.weights import numpy_state
from server.checkpoint import save_checkpoint, save_strategy, strategy_snapshot
from server.config import ServerJob
from server.registry import CardError, Registry, clean_card
from server.registry.lineage import Lineage, lineage
from server.run import _parent, begin, prepare, resume
from server.warm_start import warm_start

NANO_CONFIG = ModelConfig(arch=NANO.arch, width=NANO.width, depth=NANO.depth)


def _card(run_id: str, rnd: int, parent: str | None = None) -> dict:
    return {"run_id": run_id, "round": rnd, "strategy": {"name": "fedavg"}, "parent": parent}


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(NANO)


@pytest.fixture
def reg(tmp_path) -> Registry:
    """v1, v2 (run a), v3 (run b, warm-started from v2), v4 (run b), v5 (run c, from scratch)."""
    r = Registry(tmp_path / "registry")
    r.publish(_model(1), NANO, _card("a", 1))
    r.publish(_model(2), NANO, _card("a", 2))
    r.publish(_model(3), NANO, _card("b", 1, parent="v0002"))
    r.publish(_model(4), NANO, _card("b", 2))
    r.publish(_model(5), NANO, _card("c", 1))
    return r


def test_lineage_walks_parents_across_runs_and_says_where_it_leaves_the_registry(reg):
    assert lineage(reg, "latest") == Lineage(["v0005"])
    assert lineage(reg, 4) == Lineage(["v0004", "v0003", "v0002", "v0001"])
    shutil.rmtree(reg.root / "v0002")  # e.g. a registry restored without its older versions
    walked = lineage(reg, "v0004")
    assert walked == Lineage(["v0004", "v0003"], missing="v0002")
    assert walked.text() == "v0004 <- v0003 <- v0002 (not in this registry; the chain cannot be followed further)"


def test_registry_show_prints_the_chain(reg, capsys):
    from server.commands.registry import register

    parser = argparse.ArgumentParser(prog="fracfl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["registry", "show", "v4", "--registry", str(reg.root)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Fracture detection model v0004") and "builds on v0003" in out
    assert out.rstrip().endswith("trained from the next): v0004 <- v0003 <- v0002 <- v0001")


def test_card_parent_must_name_a_version():
    assert clean_card(_card("a", 1, parent="7"), NANO)["parent"] == "v0007"
    for bad in ("latest", "../v0001", 3):
        with pytest.raises(CardError, match="card.parent"):
            clean_card(_card("a", 1, parent=bad), NANO)


def test_warm_start_loads_latest_or_a_named_version_of_the_same_model(reg, tmp_path):
    latest = warm_start(reg, "latest", NANO)
    assert latest.version == "v0005"
    expected = numpy_state(_model(5))
    assert set(latest.state) == set(expected)
    assert all(np.array_equal(latest.state[k], expected[k]) for k in expected)
    assert warm_start(reg, "v2", NANO).version == "v0002"
    assert warm_start(reg, None, NANO) is None
    assert warm_start(Registry(tmp_path / "empty"), "latest", NANO) is None  # a schedule's first run
    with pytest.raises(ConfigError, match=r"warm_start=v9.*no version v0009.*available: v0001"):
        warm_start(reg, "v9", NANO)
    with pytest.raises(ConfigError, match=r"model.init"):
        warm_start(reg, "latest", NANO, init="weights.safetensors")


def test_warm_start_refuses_another_model_naming_both(reg):
    other = replace(NANO, norm="group", names={0: "fracture", 1: "dislocation"})
    with pytest.raises(ConfigError) as e:
        warm_start(reg, "latest", other)
    msg = str(e.value)
    assert "v0005 is a yolov7-tiny width 0.125 depth 0.5 norm batch classes [fracture]" in msg
    assert "this run's model is yolov7-tiny width 0.125 depth 0.5 norm group classes [fracture, dislocation]" in msg


def _job(tmp_path, reg: Registry, **federation) -> ServerJob:
    job = ServerJob(model=NANO_CONFIG, registry=str(reg.root), run_dir=str(tmp_path / "run"), run_id="d")
    job.federation = replace(job.federation, **federation)
    job.tracking.mode = "disabled"
    return job


def test_a_resumed_run_continues_from_its_checkpoint_not_from_the_registry(reg, tmp_path):
    job = _job(tmp_path, reg, warm_start="latest")
    run, initial = prepare(job)
    start = begin(run, initial)
    assert start.round == 1 and run.started["warm_start"] == "v0005"
    assert all(np.array_equal(start.state[k], v) for k, v in numpy_state(_model(5)).items())
    assert _parent(run) == "v0005"  # the run's first published version names the warm start as its parent

    # round 1 completes (published as v0006, parent v0005); then another run publishes v0007: the registry's latest
    trained = {k: v + 1 if v.dtype.kind == "f" else v for k, v in start.state.items()}
    save_strategy(run.checkpoint, 1, strategy_snapshot(run.strategy))
    save_checkpoint(run.checkpoint, 1, trained, run.config_hash)
    assert reg.publish(trained, NANO, _card("d", 1, parent=_parent(run))).card["parent"] == "v0005"
    assert _parent(run) is None  # later rounds: the registry names the run's previous version
    reg.publish(_model(7), NANO, _card("e", 1))

    again, _ = prepare(job)  # the server restarts with the same job (warm_start=latest)
    resumed = resume(again)
    assert resumed is not None and resumed.round == 2
    assert all(np.array_equal(resumed.state[k], trained[k]) for k in trained)
    assert again.started["warm_start"] == "v0005"  # as recorded when the run began, not today's latest


def test_round_requests_require_skips_a_run_nobody_asked_for(reg, tmp_path):
    from server.requests import RoundRequests, SiteAnswer
    from server.run import finish

    job = _job(tmp_path, reg, round_requests="require", warm_start="latest")
    run, initial = prepare(job)
    start = begin(run, initial, RoundRequests(2, [SiteAnswer("a", False, 0.1), SiteAnswer("b", False, None)]))
    assert start.round > job.federation.rounds  # no round runs
    outcome = finish(run)
    assert outcome["skipped"].startswith("no site requested a round") and outcome["latest"] is None
    assert outcome["round_requests"]["disagreement"] == {"a": 0.1, "b": None}
    run, initial = prepare(job)
    assert begin(run, initial, RoundRequests(2, [SiteAnswer("a", True, 0.5)])).round == 1
