"""Where the ServerApp's job comes from: a job file written by `fracfl simulate`, or Hydra overrides in the Flower
run config (`flwr run . --run-config "overrides='strategy=fedprox federation.rounds=5'"`)."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import entry_points
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from omegaconf import OmegaConf

from common.config import CONF_DIR, to_typed
from common.errors import ConfigError
from common.protocol import ASK, CONFIG, REAL_SITE, SITE
from server.config import ServerJob
from server.identity import SiteNames

SITE_BUILDERS = "fracfl.simulation"


def compose(overrides: list[str], config_name: str = "federated") -> Any:
    """Compose conf/<config_name>.yaml with overrides, outside of a Hydra app (as the ServerApp runs)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


def load_job(
    run_config: dict[str, Any], job_file: str | None = None, grid: Grid | None = None
) -> tuple[ServerJob, str | None]:
    """The typed job and the simulation's site manifest (None in a deployment). With `simulate` in the run config,
    the nodes on `grid` are asked first whether they are real sites (see `refuse_real_sites`)."""
    path = run_config.get("job-file") or job_file
    if path:
        cfg = OmegaConf.load(path)
        manifest = cfg.get("sites_manifest")
    else:
        cfg = compose(shlex.split(str(run_config.get("overrides", ""))))
        OmegaConf.resolve(cfg)
        manifest = None
        if run_config.get("simulate"):  # `flwr run .` on a local simulation: build the sites as `fracfl simulate` does
            if grid is not None:
                refuse_real_sites(grid, min(float(cfg.federation.round_timeout), 300.0))
            manifest, cfg.val_data = simulated_sites()(cfg)
    if not cfg.get("run_id"):
        cfg.run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    keep = [k for k in cfg.keys() if k in ServerJob.__dataclass_fields__]
    return to_typed(OmegaConf.masked_copy(cfg, keep), ServerJob), manifest


def simulated_sites() -> Callable[[Any], tuple[str, str]]:
    """The site builder a simulation package registers (entry point `fracfl.simulation: sites`): composed config in,
    (site manifest, pooled validation data.yaml) out. Looked up, not imported, so that the server neither knows
    simulations exist nor needs them installed to run a deployment."""
    found = entry_points(group=SITE_BUILDERS, name="sites")
    if not found:
        raise ConfigError(
            "run config simulate=true: no simulation package is installed with this server (entry "
            f"point group {SITE_BUILDERS}); use simulate=false for real sites"
        )
    return next(iter(found)).load()


def refuse_real_sites(grid: Grid, timeout: float) -> None:
    """Stop a simulation (`simulate = true`, the default of `flwr run .`) started on a federation of real sites.

    Their SuperNodes would train on their own data while the server built synthetic sites and scored every
    published model on synthetic images: a model card whose pooled metrics mean nothing, with no warning. Every
    node is asked (a query message) before anything is built; a node that does not answer counts as real, and no
    node at all is refused too. Real sites are named by their registered names (server/identity.py): the answer
    carries only the flag (QUERY_FIELDS)."""
    nodes = sorted(grid.get_node_ids())
    if not nodes:  # a simulation's virtual nodes exist from its start; a deployment's may not be online yet
        raise ConfigError(
            "run config simulate=true, but no SuperNode is connected, so whether they are real sites "
            "cannot be checked: a simulation's nodes are there from its start"
        )
    ask = [
        Message(RecordDict({CONFIG: ConfigRecord({ASK: REAL_SITE})}), dst_node_id=n, message_type=MessageType.QUERY)
        for n in nodes
    ]
    replies = {m.metadata.src_node_id: m for m in grid.send_and_receive(ask, timeout=timeout)}
    names, real = SiteNames(grid), []
    for n in nodes:
        m = replies.get(n)
        info = m.content[SITE] if m is not None and not m.has_error() and SITE in m.content else None
        if info is None or info.get(REAL_SITE, True):
            real.append(names.of(n) + (" (no answer)" if info is None else ""))
    if real:
        raise ConfigError(
            f"run config simulate=true, but {len(real)} of {len(nodes)} SuperNodes are real sites or "
            f"did not answer ({', '.join(real)}): nothing was built or trained; start the run with "
            '--run-config "simulate=false" (see docs/deployment.md)'
        )
