"""The server's resume point: complete rounds only, strategy state kept, a different job refused."""

import json

import numpy as np
import pytest

from common.errors import ConfigError, DataError
from server.checkpoint import load_checkpoint, restore_strategy, save_checkpoint, strategy_snapshot


class _Strategy:
    m_t = {"w": np.ones(3)}


def test_round_trip_and_only_the_latest_round_kept(tmp_path):
    state = {"w": np.arange(4, dtype=np.float32), "n": np.array(7, np.int64)}
    save_checkpoint(tmp_path, 1, state, strategy_snapshot(_Strategy()), "abc")
    save_checkpoint(tmp_path, 2, {**state, "w": state["w"] + 1}, strategy_snapshot(_Strategy()), "abc")
    ck = load_checkpoint(tmp_path, "abc")
    assert ck.round == 2 and ck.state["w"].tolist() == [1, 2, 3, 4] and ck.state["n"].dtype == np.int64
    assert {k: v.shape for k, v in ck.state.items()} == {"w": (4,), "n": ()}  # a 0-d buffer stays 0-d
    fresh = type("S", (), {})()
    restore_strategy(fresh, ck.strategy_state)
    assert fresh.m_t["w"].tolist() == [1, 1, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "state-r0002.safetensors", "strategy-r0002.pkl"]


def test_other_config_refused_and_damage_reported(tmp_path):
    assert load_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path, 1, {"w": np.zeros(2, np.float32)}, strategy_snapshot(_Strategy()), "abc")
    with pytest.raises(ConfigError, match="config hash abc"):
        load_checkpoint(tmp_path, "xyz")
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    (tmp_path / meta["weights"]).write_bytes(b"truncated")
    with pytest.raises(DataError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path, "abc")
