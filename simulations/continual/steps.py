"""The loop's calls into the site's pool (client/continual), warm-started rounds (server/warm_start.py) and the site's
model store and gate (client/models): the only module of the simulated loop that needs them.

Each step is a thin call with the simulation's values mapped onto the owner's config; nothing here re-implements
them. A simulated site runs the same code a hospital runs, with two differences a coordinator chooses: its held-out
salt and its bootstrap seed come from the simulation's seed (so a run can be repeated), and its approvals are signed
with a key made for the simulation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.continual.config import PoolConfig
from client.continual.disagreement import Disagreement
from client.continual.disagreement import disagreement as site_disagreement
from client.continual.holdout import SALT_FILE, in_holdout
from client.continual.pool import PoolVersion
from client.continual.pool import build_pool as build
from client.feedback.store import FeedbackStore
from client.models import lifecycle
from client.models.approval import operating_point
from client.models.fetch import fetch_from_registry
from client.models.settings import GateConfig
from client.models.store import ModelStore
from common.config import EvalConfig
from common.privacy import signing
from server.registry.store import Registry

if TYPE_CHECKING:  # the config module checks its gate margins through gate_config below
    from simulations.config import SimulationJob
    from simulations.continual.config import ContinualConfig, GateMargins

KEY_FILE = "site-key.pem"  # in the site's home: signs its approvals (a hospital's is its ledger key)


def build_pool(store: FeedbackStore, data_dir: Path, cfg: ContinualConfig, salt: bytes) -> PoolVersion:
    """The site's training pool after this period's verdicts (a new version only when they changed it), under
    `data_dir`/pool/; the held-out split is drawn by patient with `salt`, written where the pool reads it."""
    path = data_dir / SALT_FILE
    if not path.exists():
        path.write_text(salt.hex() + "\n")
    return build(store, data_dir, PoolConfig(cfg.holdout_fraction))


def held_out(patient: str, cfg: ContinualConfig, salt: bytes) -> bool:
    """Whether this patient's cases are in the site's held-out split (the pool's own rule, so the report scores
    exactly the cases the gate sees)."""
    return in_holdout(patient, cfg.holdout_fraction, salt)


def disagreement(store: FeedbackStore) -> Disagreement:
    """The reviewers' disagreement rate with the site's clinical model, exactly as its round request computes it
    (the reviewed images of the version that made the store's latest finding)."""
    return site_disagreement(store)


def federated_round(
    job: SimulationJob, run_dir: Path, manifest: Path, pooled_val: Path, warm: bool, target_epsilon: float | None = None
) -> Path | None:
    """One period's federated run in `run_dir` on the sites of `manifest` (their original data plus their pool,
    mixed by `train.replay`), publishing into the job's registry; warm-started from the registry's latest
    version when `warm`; with DP-SGD its noise planned to end at `target_epsilon` when given (never above the
    job's). Returns the newest published version's folder, or None when nothing was published."""
    from simulations.runner import run_simulation_job

    run_dir.mkdir(parents=True, exist_ok=True)
    for src in (manifest, pooled_val, pooled_val.with_suffix(".yaml")):  # prepare_sites reuses a run's sites
        shutil.copy(src, run_dir / src.name)
    job = dataclasses.replace(job, run_id=f"{job.run_id}-{run_dir.name}")  # one registry run per period
    if warm:
        job = dataclasses.replace(job, federation=dataclasses.replace(job.federation, warm_start="latest"))
    if target_epsilon is not None:
        target = min(target_epsilon, job.privacy.target_epsilon)
        job = dataclasses.replace(job, privacy=dataclasses.replace(job.privacy, target_epsilon=target))
    run_simulation_job(job, run_dir)
    latest = Registry(job.registry).latest()
    return None if latest is None else latest.path


def install(models_dir: Path, version: Path) -> str:
    """Put a published version (a registry folder) into the site's model store, hashes checked; returns its name."""
    fetch_from_registry(ModelStore(models_dir), version.parent, version.name)
    return version.name


def clinical_model(models_dir: Path, eval_cfg: EvalConfig) -> tuple[str, Path, EvalConfig] | None:
    """The site's current clinical model (version, version folder, the evaluation settings at its approved operating
    point, as the site's listener would use it), None before the first promotion."""
    store = ModelStore(models_dir)
    current = store.current()  # read once: the version and its approved point come from the same record
    if current is None:
        return None
    version, point = str(current["version"]), operating_point(current)
    return version, store.folder(version), eval_cfg if point is None else dataclasses.replace(eval_cfg, conf=point)


def gate_config(margins: GateMargins, seed: int) -> GateConfig:
    """The site gate's config from the simulation's margins, with a bootstrap seed fixed by the run's seed."""
    cfg = GateConfig(**dataclasses.asdict(margins), seed=seed)
    cfg.check("continual.gate")
    return cfg


def adopt(models_dir: Path, version: str, approver: str) -> None:
    """Period 0: the site's first clinical model, approved without a gate (there is no champion and no held-out
    case yet); the store logs it as forced, with the reason."""
    store = ModelStore(models_dir)
    lifecycle.promote(store, version, approver, _key(models_dir), force_reason="simulation period 0: the first model")


def gate_and_promote(models_dir: Path, version: str, pool: PoolVersion, cfg: ContinualConfig, seed: int) -> bool:
    """The champion/challenger gate on the pool's held-out reviewed cases, then approval and promotion when it
    accepts; every step is logged in the store's decisions.jsonl. Returns whether the challenger became current."""
    store = ModelStore(models_dir)
    gate = gate_config(cfg.gate, seed)
    _, record = lifecycle.promote(
        store, version, cfg.radiologist.reviewer, _key(models_dir), data=pool.data_yaml, cfg=gate
    )
    return record is not None


def recheck_or_roll_back(models_dir: Path, pool: PoolVersion, cfg: ContinualConfig, seed: int) -> bool:
    """The site's check of a promotion as reviewed held-out cases accumulate: its clinical model is judged again
    against the version it replaced, with the same gate and margins, on the pool's held-out split; when the gate
    refuses it, the site rolls back to that version (`fracfl site rollback`'s call, recorded with who and why).
    Returns whether it rolled back; a first model, which replaced nothing, is never re-checked."""
    store = ModelStore(models_dir)
    decision = lifecycle.recheck(store, pool.data_yaml, gate_config(cfg.gate, seed))
    if decision is None or decision.accepted:
        return False
    why = f"re-check on the held-out cases of pool v{pool.version:04d}: " + "; ".join(decision.reasons)
    lifecycle.rollback(store, cfg.radiologist.reviewer, _key(models_dir), reason=why)
    return True


def gate_seed(job_seed: int, site: str, period: int) -> int:
    """A bootstrap seed per site and period, from the run's seed (a hospital's gate draws a secure one)."""
    digest = hashlib.sha256(f"fracfl-sim-gate/{job_seed}/{site}/{period}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _key(models_dir: Path) -> Ed25519PrivateKey:
    return signing.load_or_create(models_dir.parent / KEY_FILE)
