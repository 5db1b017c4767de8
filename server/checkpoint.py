"""The server's resume point: global weights, strategy state and the last completed round.

Written after every round. The JSON pointer is replaced atomically last, so a server killed at any moment
resumes from a complete round: never a half-written one, never a round twice.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from common.errors import ConfigError, DataError

STRATEGY_STATE = ("current_arrays", "m_t", "v_t")  # FedOpt family (FedAdam, FedYogi, ...) server optimiser state


@dataclass
class Checkpoint:
    round: int
    state: dict[str, np.ndarray]
    strategy_state: dict[str, Any]


def strategy_snapshot(strategy: object) -> bytes:
    """The server optimiser's state, pickled now: the next round changes it while the checkpoint is written."""
    inner = getattr(strategy, "strategy", strategy)  # inside a DP wrapper
    return pickle.dumps({k: getattr(inner, k) for k in STRATEGY_STATE if getattr(inner, k, None) is not None})


def save_checkpoint(folder: Path, rnd: int, state: dict[str, np.ndarray], strategy_state: bytes,
                    config_hash: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"state-r{rnd:04d}.safetensors"
    # np.require, not np.ascontiguousarray: that one turns 0-d buffers (num_batches_tracked) into shape (1,), and
    # after a resume the screening would then reject every site's update as the wrong shape.
    save_file({k: np.require(v, requirements="C") for k, v in state.items()}, str(weights))
    (folder / f"strategy-r{rnd:04d}.pkl").write_bytes(strategy_state)
    tmp = folder / "checkpoint.json.tmp"
    tmp.write_text(json.dumps({"round": rnd, "weights": weights.name, "strategy": f"strategy-r{rnd:04d}.pkl",
                               "config_hash": config_hash}))
    for written in (weights, folder / f"strategy-r{rnd:04d}.pkl", tmp):  # data on disk before the pointer moves
        with open(written, "rb") as f:
            os.fsync(f.fileno())
    tmp.replace(folder / "checkpoint.json")
    for old in folder.glob("*-r*.*"):
        if f"-r{rnd:04d}." not in old.name:
            old.unlink()


def load_checkpoint(folder: Path, config_hash: str = "") -> Checkpoint | None:
    """The last completed round, or None when the run never finished one.

    A checkpoint written under another configuration (model, strategy, local training...) is refused: resuming it
    would silently mix two runs in one history.
    """
    pointer = folder / "checkpoint.json"
    if not pointer.is_file():
        return None
    try:
        meta = json.loads(pointer.read_text())
        saved = meta.get("config_hash", "")
        if config_hash and saved and saved != config_hash:
            raise ConfigError(f"resume: {pointer} was written by a run with config hash {saved}, this job's is "
                              f"{config_hash}; start a new run folder or resume with the original job")
        state = load_file(str(folder / meta["weights"]))
        strategy_state = pickle.loads((folder / meta["strategy"]).read_bytes())  # written by this server only
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001  (safetensors and pickle raise their own error types)
        raise DataError(pointer, f"unreadable checkpoint: {e}") from e
    return Checkpoint(int(meta["round"]), state, strategy_state)


def restore_strategy(strategy: object, saved: dict[str, Any]) -> None:
    for k, v in saved.items():
        setattr(strategy, k, v)
