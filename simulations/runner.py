"""`fracfl simulate`: build the simulated sites, then run the real ServerApp and ClientApp on Flower's simulation
engine (Ray backend) with explicit per-site CPU/GPU resources."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from client.models.store import NODE_KEY as MODELS_KEY
from client.site_config import NODE_KEY
from common.config import to_typed
from common.data.spec import load_spec
from common.errors import ConfigError, FracflError
from simulations.config import SimulationJob
from simulations.partition import make_sites

log = logging.getLogger("fracfl.simulate")


class SimulationFailed(FracflError):
    """The simulation engine ended without the server finishing its rounds."""


def sites_for_server(cfg: Any) -> tuple[str, str]:
    """The server's `fracfl.simulation: sites` entry point (`flwr run .` with simulate=true): the composed config's
    sites built as `fracfl simulate` builds them; returns (site manifest, pooled validation data.yaml)."""
    job = to_typed(cfg, SimulationJob)
    manifest, _ = prepare_sites(job, Path(job.run_dir))
    return str(manifest), str(Path(job.run_dir) / "pooled_val.yaml")


def prepare_sites(job: SimulationJob, run_dir: Path) -> tuple[Path, Path]:
    """Partition once per run folder; returns (site manifest, pooled validation list). Reused on resume."""
    manifest, pooled = run_dir / "sites.json", run_dir / "pooled_val.txt"
    if manifest.is_file() and pooled.is_file():
        return manifest, pooled
    sites = make_sites(job.partition, run_dir / "data", progress=job.progress)
    entries = [{"name": s.name, "data": str(s.data_yaml)} for s in sites]
    # A site's own site.toml and model store, under the keys a real site's node config names them with.
    for field_name, key in (("site_configs", NODE_KEY), ("site_models", MODELS_KEY)):
        given = getattr(job, field_name)
        unknown = set(given) - {s.name for s in sites}
        if unknown:
            raise ConfigError(f"{field_name}: no simulated site named {', '.join(sorted(unknown))}")
        for e in entries:
            if e["name"] in given:
                e[key] = str(Path(given[e["name"]]).resolve())
    manifest.write_text(json.dumps(entries, indent=1))
    images = [str(p) for s in sites for p in load_spec(s.data_yaml).images("val")]
    pooled.write_text("\n".join(images) + "\n")
    (run_dir / "pooled_val.yaml").write_text(f"val: {pooled.name}\nnames: {{0: fracture}}\n")
    return manifest, pooled


def run_simulation_job(job: SimulationJob, run_dir: Path) -> dict:
    """Run (or resume) a simulation whose job file and data live in `run_dir`."""
    from flwr.simulation import run_simulation

    from client.client_app import app as client_app
    from server.run import OUTCOME
    from server.server_app import app as server_app

    _check_gpu(job.train.device, job.federation.client_gpus)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest, _ = prepare_sites(job, run_dir)
    n_sites = len(json.loads(manifest.read_text()))
    job.sites_manifest, job.val_data, job.run_dir = str(manifest), str(run_dir / "pooled_val.yaml"), str(run_dir)
    job.privacy.ledger_dir = str(Path(job.privacy.ledger_dir).resolve())  # simulated sites' ledgers, any cwd
    job_file = run_dir / "job.yaml"
    OmegaConf.save(OmegaConf.structured(job), job_file)
    outcome = run_dir / OUTCOME
    outcome.unlink(missing_ok=True)
    fed = job.federation
    backend = {
        "client_resources": {"num_cpus": fed.client_cpus, "num_gpus": fed.client_gpus},
        "init_args": {"include_dashboard": False, "num_cpus": os.cpu_count() or 1},
    }
    log.info("simulating %d sites for %d rounds (%s) in %s", n_sites, fed.rounds, job.strategy.name, run_dir)
    with _job_for_server_app(job_file):
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n_sites, backend_config=backend)
    if not outcome.is_file():
        raise SimulationFailed(f"the server did not finish; see {run_dir / 'simulate.log'} and the output above")
    return json.loads(outcome.read_text())


@contextmanager
def _job_for_server_app(job_file: Path) -> Iterator[None]:
    """Tell the in-process ServerApp where its job is (FRACFL_JOB) for this run only: a value left behind would
    make any later ServerApp started from this process (a SuperLink's, say) run this job instead of its own."""
    before = os.environ.get("FRACFL_JOB")
    os.environ["FRACFL_JOB"] = str(job_file)
    try:
        yield
    finally:
        if before is None:
            del os.environ["FRACFL_JOB"]
        else:
            os.environ["FRACFL_JOB"] = before


def _check_gpu(device: str, client_gpus: float) -> None:
    """Ray hides the GPU from a site given no GPU share (CUDA_VISIBLE_DEVICES=""): say so before the rounds."""
    import torch

    if client_gpus > 0:
        return
    if device.startswith("cuda"):
        raise ConfigError(
            f"train.device={device}: simulated sites see a GPU only with federation.client_gpus > 0 "
            "(e.g. 0.33: three sites share one GPU)"
        )
    if device == "auto" and torch.cuda.is_available():
        log.warning(
            "federation.client_gpus=0: the sites train on the CPU although a GPU is present; set "
            "federation.client_gpus (e.g. 0.33 for three sites on one GPU)"
        )


def load_resumed(run_dir: Path) -> SimulationJob:
    """The job of an earlier run, to continue it after its last completed round."""
    job_file = run_dir / "job.yaml"
    if not job_file.is_file():
        raise SimulationFailed(f"resume={run_dir}: no job.yaml there; is it a fracfl simulate run folder?")
    return to_typed(OmegaConf.load(job_file), SimulationJob)
