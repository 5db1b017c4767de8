"""The typed job of `fracfl simulate`: a server job plus how to build the simulated sites."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.config import ServerJob
from simulations.partition import PartitionConfig


@dataclass
class SimulationJob(ServerJob):
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    sites_manifest: str | None = None
    resume: str | None = None
