"""The server's resume point: complete rounds only, strategy state kept, a different job refused."""

import json

import numpy as np
import pytest
from tests_support import NANO

from common.errors import ConfigError, DataError
from common.nn.model import build_model
from common.nn.weights import numpy_state
from server.checkpoint import load_checkpoint, restore_strategy, save_checkpoint, save_strategy, strategy_snapshot
from server.publish import adopt_published
from server.registry import Registry


class _Strategy:
    m_t = {"w": np.ones(3)}


def test_round_trip_and_only_the_latest_round_kept(tmp_path):
    state = {"w": np.arange(4, dtype=np.float32), "n": np.array(7, np.int64)}
    for rnd, s in ((1, state), (2, {**state, "w": state["w"] + 1})):
        save_strategy(tmp_path, rnd, strategy_snapshot(_Strategy()))
        save_checkpoint(tmp_path, rnd, s, "abc")
    ck = load_checkpoint(tmp_path, "abc")
    assert ck.round == 2 and ck.state["w"].tolist() == [1, 2, 3, 4] and ck.state["n"].dtype == np.int64
    assert {k: v.shape for k, v in ck.state.items()} == {"w": (4,), "n": ()}  # a 0-d buffer stays 0-d
    fresh = type("S", (), {})()
    restore_strategy(fresh, ck.strategy_state)
    assert fresh.m_t["w"].tolist() == [1, 1, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.json",
        "state-r0002.safetensors",
        "strategy-r0002.pkl",
    ]


def test_other_config_refused_and_damage_reported(tmp_path):
    assert load_checkpoint(tmp_path) is None
    save_strategy(tmp_path, 1, strategy_snapshot(_Strategy()))
    save_checkpoint(tmp_path, 1, {"w": np.zeros(2, np.float32)}, "abc")
    with pytest.raises(ConfigError, match="config hash abc"):
        load_checkpoint(tmp_path, "xyz")
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    (tmp_path / meta["weights"]).write_bytes(b"truncated")
    with pytest.raises(DataError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path, "abc")


SPEC = NANO


def _publish(registry: Registry, state: dict, rnd: int):
    card = {
        "run_id": "r",
        "round": rnd,
        "strategy": {"name": "fedavg", "params": {}},
        "config_hash": "abc",
        "model": {"arch": SPEC.arch},
        "sites": [],
        "metrics": {"pooled": None, "per_site": {}},
        "privacy": None,
        "exports": [],
    }
    return registry.publish(state, SPEC, card)


def test_published_round_references_the_registry_copy_and_checks_its_hash(tmp_path):
    state = numpy_state(build_model(SPEC))
    pub = _publish(Registry(tmp_path / "registry"), state, 1)
    folder = tmp_path / "checkpoint"
    save_strategy(folder, 1, strategy_snapshot(_Strategy()))
    save_checkpoint(folder, 1, None, "abc", published=(pub.weights, pub.card["hashes"]["model.safetensors"]))
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.json", "strategy-r0001.pkl"]  # no second copy
    ck = load_checkpoint(folder, "abc")
    assert ck.round == 1 and all(
        np.array_equal(ck.state[k], v) and ck.state[k].shape == v.shape for k, v in state.items()
    )
    pub.weights.write_bytes(pub.weights.read_bytes()[:-4] + b"\0\0\0\1")  # the registry file changed
    with pytest.raises(DataError, match="hash mismatch"):
        load_checkpoint(folder, "abc")
    pub.weights.unlink()
    with pytest.raises(DataError, match="missing"):
        load_checkpoint(folder, "abc")


def test_a_round_published_before_its_pointer_moved_is_adopted_not_repeated(tmp_path):
    """Killed between publishing round 2 and moving the checkpoint: resume takes the published version as round 2."""
    registry, folder = Registry(tmp_path / "registry"), tmp_path / "checkpoint"
    state = numpy_state(build_model(SPEC))
    one = _publish(registry, state, 1)
    save_strategy(folder, 1, strategy_snapshot(_Strategy()))
    save_checkpoint(folder, 1, None, "abc", published=(one.weights, one.card["hashes"]["model.safetensors"]))
    assert not adopt_published(registry, "r", folder, 1, "abc")  # nothing newer: nothing to adopt
    save_strategy(folder, 2, strategy_snapshot(_Strategy()))
    two = _publish(registry, {k: v + 1 if v.dtype.kind == "f" else v for k, v in state.items()}, 2)
    assert adopt_published(registry, "r", folder, 1, "abc")
    ck = load_checkpoint(folder, "abc")
    assert ck.round == 2 and np.array_equal(ck.state["model.0.conv.weight"], state["model.0.conv.weight"] + 1)
    assert json.loads((folder / "checkpoint.json").read_text())["weights"] == str(two.weights.resolve())
