"""The server's resume point: global weights, strategy state and the last completed round.

Written after every round: the strategy state first, then (for a round that is published) the registry version,
then the JSON pointer, replaced atomically last. A published round's weights are the registry's file, referenced
by path and hash rather than written twice. A server killed at any moment resumes from a complete round: never a
half-written one, never a round twice (a round published but not yet pointed to is adopted on resume).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as load_numpy

from common.errors import ConfigError, DataError
from common.nn.weights import write_safetensors
from common.utils.durable import replace_atomic, write_durable

STRATEGY_STATE = ("current_arrays", "m_t", "v_t")  # FedOpt family (FedAdam, FedYogi, ...) server optimiser state


@dataclass
class Checkpoint:
    round: int
    state: dict[str, np.ndarray]
    strategy_state: dict[str, Any]


def strategy_snapshot(strategy: object) -> bytes:
    """The server optimiser's state, pickled now: the next round changes it while the checkpoint is written.
    `strategy` is the federated-learning strategy itself, not a privacy wrapper around it (server/run.py keeps
    both)."""
    return pickle.dumps({k: getattr(strategy, k) for k in STRATEGY_STATE if getattr(strategy, k, None) is not None})


def save_strategy(folder: Path, rnd: int, strategy_state: bytes) -> None:
    """Round `rnd`'s strategy state, on disk before the round can become visible anywhere (registry, pointer)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_durable(folder / f"strategy-r{rnd:04d}.pkl", strategy_state)


def save_checkpoint(
    folder: Path,
    rnd: int,
    state: dict[str, np.ndarray] | None,
    config_hash: str = "",
    published: tuple[Path, str] | None = None,
) -> None:
    """Move the resume point to round `rnd` (its strategy state saved first). The weights are the registry's copy
    when the round was `published` (its path and SHA-256: the 32 MB are not written twice), else `state` is saved
    here."""
    if published is not None:
        weights = {"weights": str(Path(published[0]).resolve()), "weights_sha256": published[1]}
    else:
        name = f"state-r{rnd:04d}.safetensors"
        write_safetensors(folder / name, state)  # dtypes and 0-d shapes kept (screening compares them on resume)
        weights = {"weights": name}
    replace_atomic(
        folder / "checkpoint.json",
        json.dumps({"round": rnd, **weights, "strategy": f"strategy-r{rnd:04d}.pkl", "config_hash": config_hash}),
    )
    for old in folder.glob("*-r*.*"):
        if f"-r{rnd:04d}." not in old.name:
            old.unlink()


def load_checkpoint(folder: Path, config_hash: str = "") -> Checkpoint | None:
    """The last completed round, or None when the run never finished one.

    A checkpoint written under another configuration (model, strategy, local training...) is refused: resuming it
    would silently mix two runs in one history. Weights kept in the registry must still match their hash.
    """
    pointer = folder / "checkpoint.json"
    if not pointer.is_file():
        return None
    try:
        meta = json.loads(pointer.read_text())
        saved = meta.get("config_hash", "")
        if config_hash and saved and saved != config_hash:
            raise ConfigError(
                f"resume: {pointer} was written by a run with config hash {saved}, this job's is "
                f"{config_hash}; start a new run folder or resume with the original job"
            )
        weights = folder / meta["weights"]  # an absolute path (the registry's copy) stays as it is
        data = weights.read_bytes()
        if "weights_sha256" in meta and hashlib.sha256(data).hexdigest() != meta["weights_sha256"]:
            raise DataError(
                weights, "changed since the checkpoint referenced it (hash mismatch); the run cannot resume from it"
            )
        state = load_numpy(data)
        strategy_state = pickle.loads((folder / meta["strategy"]).read_bytes())  # written by this server only
    except (ConfigError, DataError):
        raise
    except FileNotFoundError as e:
        raise DataError(pointer, f"the checkpoint's file {e.filename} is missing") from e
    except Exception as e:
        raise DataError(pointer, f"unreadable checkpoint: {e}") from e
    return Checkpoint(int(meta["round"]), state, strategy_state)


def restore_strategy(strategy: object, saved: dict[str, Any]) -> None:
    for k, v in saved.items():
        setattr(strategy, k, v)
