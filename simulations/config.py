"""The typed job of `fracfl simulate`: a server job plus how to build the simulated sites."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.config import ServerJob
from simulations.partition import PartitionConfig


@dataclass
class SimulationJob(ServerJob):
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    sites_manifest: str | None = None
    # Simulated sites' own site.toml files, by site name (e.g. a [continual] table naming a feedback store, so a
    # simulated site can request a round): they reach the sites through the manifest, as node config does at a real one.
    site_configs: dict[str, str] = field(default_factory=dict)
    # Simulated sites' model stores (client/models/store.py), by site name: as node config `models-dir` at a real one.
    site_models: dict[str, str] = field(default_factory=dict)
    resume: str | None = None
