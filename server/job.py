"""Where the ServerApp's job comes from: a job file written by `fracfl simulate`, or Hydra overrides in the Flower
run config (`flwr run . --run-config "overrides='strategy=fedprox federation.rounds=5'"`)."""

from __future__ import annotations

import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from common.config import CONF_DIR, to_typed
from server.config import ServerJob


def compose(overrides: list[str], config_name: str = "federated") -> Any:
    """Compose conf/<config_name>.yaml with overrides, outside of a Hydra app (as the ServerApp runs)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


def load_job(run_config: dict[str, Any], job_file: str | None = None) -> tuple[ServerJob, str | None]:
    """The typed job and the simulation's site manifest (None in a deployment)."""
    path = run_config.get("job-file") or job_file
    if path:
        cfg = OmegaConf.load(path)
        manifest = cfg.get("sites_manifest")
    else:
        cfg = compose(shlex.split(str(run_config.get("overrides", ""))))
        OmegaConf.resolve(cfg)
        manifest = None
        if run_config.get("simulate"):  # `flwr run .` on a local simulation: build the sites as `fracfl simulate` does
            from simulations.config import SimulationJob
            from simulations.runner import prepare_sites

            sim = to_typed(cfg, SimulationJob)
            manifest_path, _ = prepare_sites(sim, Path(sim.run_dir))
            manifest, cfg.val_data = str(manifest_path), str(Path(sim.run_dir) / "pooled_val.yaml")
    if not cfg.get("run_id"):
        cfg.run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    keep = [k for k in cfg.keys() if k in ServerJob.__dataclass_fields__]
    return to_typed(OmegaConf.masked_copy(cfg, keep), ServerJob), manifest
