"""`fracfl simulate [HYDRA OVERRIDES]`: multi-site federated simulations for research coordinators."""

from __future__ import annotations

import argparse
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from common.config import to_typed
from common.hydra_app import register_hydra_command


def _output_dir(cfg: DictConfig) -> Path:
    """Hydra's run folder, also as the job's `run_dir`: `${now:...}` in `run_id` resolves again (later) when the
    job is read, so keys built on it (`registry`, a demo's ledgers) would otherwise land in a second folder."""
    out = Path(HydraConfig.get().runtime.output_dir)
    with open_dict(cfg):
        cfg.run_dir = str(out)
    return out


def _job(cfg: DictConfig) -> None:
    from simulations.config import SimulationJob
    from simulations.runner import load_resumed, run_simulation_job

    if cfg.get("continual") is not None:
        _continual(cfg)
        return
    if cfg.get("resume"):
        run_dir = Path(cfg.resume)
        job = load_resumed(run_dir)
    else:
        run_dir = _output_dir(cfg)
        job = to_typed(cfg, SimulationJob)
    outcome = run_simulation_job(job, run_dir)
    print(f"run {job.run_id}: last published {outcome.get('latest')}; report {outcome.get('report')}")


def _continual(cfg: DictConfig) -> None:
    from common.errors import ConfigError
    from simulations.continual.config import ContinualJob
    from simulations.continual.loop import run_continual

    if cfg.get("resume"):
        raise ConfigError("resume: a continual simulation cannot be resumed yet; start it again in a new run folder")
    run_dir = _output_dir(cfg)
    job = to_typed(cfg, ContinualJob)
    files = run_continual(job, run_dir)
    print(f"continual run {job.run_id}: report {files['html']}")


def register(sub: argparse._SubParsersAction) -> None:
    register_hydra_command(
        sub,
        "simulate",
        "federated",
        help="federated simulation of several sites on Flower's simulation engine (Hydra overrides)",
        description="Simulate a federation: sites are built by the partition group (synthetic hospitals by default), "
        "then the real ServerApp/ClientApp run on Flower's Ray backend. Examples: `strategy=fedprox "
        "federation.sites=5 train.local_epochs=2`, `partition=fracatlas_regions`, `--multirun strategy=fedavg,fedprox`,"
        " `resume=runs/federated/RUN` to continue a killed run, `+continual=default` (or `experiment=continual_demo`) for "
        "T periods of continuous learning (docs/continuous-learning.md).",
        job=_job,
    )
