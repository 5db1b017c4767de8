"""The loop's calls into the site's pool (client/continual, POOL), warm-started rounds (LINEAGE) and the site's model
store and gate (client/models, MODELS): the only module of the simulated loop that needs them.

Each step is a thin call with the simulation's values mapped onto the owner's config; nothing here re-implements
them. The imports sit inside the functions so the rest of simulations/continual imports and tests without them.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from simulations.config import SimulationJob
from simulations.continual.config import ContinualConfig


def build_pool(store: Any, data_dir: Path, cfg: ContinualConfig, salt: bytes) -> Any:
    """The site's training pool after this period's verdicts (a new PoolVersion only when they changed it): labels
    from confirmed/moved/added boxes, hard negatives from rejected boxes and "no fracture" images, the held-out
    split drawn by patient with `salt`, under `data_dir`/pool/."""
    from client.continual.pool import PoolConfig
    from client.continual.pool import build_pool as build

    return build(store, data_dir, PoolConfig(holdout_fraction=cfg.holdout_fraction, salt=salt))


def held_out(patient: str, cfg: ContinualConfig, salt: bytes) -> bool:
    """Whether this patient's cases are in the site's held-out split (the pool's own rule, so the report scores
    exactly the cases the gate sees)."""
    from client.continual.holdout import in_holdout

    return in_holdout(patient, cfg.holdout_fraction, salt)


def federated_round(job: SimulationJob, run_dir: Path, manifest: Path, pooled_val: Path, warm: bool) -> Path | None:
    """One period's federated run in `run_dir` on the sites of `manifest` (their original data plus their pool,
    mixed by `continual.replay_mix`), publishing into the job's registry; warm-started from the registry's latest
    version when `warm`. Returns the newest published version's folder, or None when nothing was published."""
    from server.registry.store import Registry
    from simulations.runner import run_simulation_job

    run_dir.mkdir(parents=True, exist_ok=True)
    for src in (manifest, pooled_val, pooled_val.with_suffix(".yaml")):  # prepare_sites reuses a run's sites
        shutil.copy(src, run_dir / src.name)
    job = dataclasses.replace(job, run_id=f"{job.run_id}-{run_dir.name}")  # one registry run per period
    if warm:
        job = dataclasses.replace(job, federation=dataclasses.replace(job.federation, warm_start="latest"))
    run_simulation_job(job, run_dir)
    latest = Registry(job.registry).latest()
    return None if latest is None else latest.path


def install(models_dir: Path, version: Path) -> str:
    """Put a published version (a registry folder) into the site's model store; returns its name there."""
    from client.models import install_version

    return install_version(models_dir, version)


def clinical_model(models_dir: Path) -> tuple[str, Path] | None:
    """The site's current clinical model (version, weights or version folder), None before the first promotion."""
    from client.models import status

    current = status(models_dir)
    return None if current is None else (current.version, current.path)


def gate(champion: Path | None, challenger: Path, pool: Any, cfg: ContinualConfig) -> Any:
    """The champion/challenger gate on the pool's held-out reviewed cases: a GateDecision (accepted, figures,
    reasons), also appended to the site's decisions.jsonl by the gate itself."""
    from client.models import GateConfig
    from client.models import gate as decide

    g = cfg.gate
    margins = GateConfig(max_sensitivity_drop=g.max_sensitivity_drop, max_fp_per_image=g.max_fp_per_image,
                         bootstrap=g.bootstrap)  # fmt: skip
    return decide(champion, challenger, pool.data_yaml, pool.holdout_split, margins)


def promote(models_dir: Path, version: str, approver: str) -> None:
    """Make `version` the site's clinical model, approved by the simulated reviewer."""
    from client.models import promote as make_current

    make_current(models_dir, version, approver)
