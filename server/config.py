"""Typed configuration of a federated run, as the server reads it (Hydra groups `strategy/`, `federation/`,
`tracking/` on top of the shared `model/`, `train/`, `augment/`, `eval/`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.config import EvalConfig, LocalTrainConfig, ModelConfig, PrivacyConfig
from server.export.config import ExportConfig


@dataclass
class StrategyConfig:
    name: str = "fedavg"  # fedavg | fedprox | fedadam | fedmedian | fedtrimmedavg | krum
    params: dict[str, Any] = field(default_factory=dict)  # passed to the Flower strategy (e.g. proximal_mu, beta)


@dataclass
class FederationConfig:
    sites: int = 3
    rounds: int = 3
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0  # 0 skips the sites' local validation
    min_sites: int = 2  # fewer connected sites than this and the round waits (deployment) or fails (simulation)
    publish_every: int = 1  # publish to the registry every k rounds (and always after the last)
    max_update_norm: float = 1000.0  # L2 norm bound of a site's weight change; larger updates are rejected
    server_eval: bool = True  # evaluate each global model on the pooled validation set (simulation)
    round_timeout: float = 3600.0
    client_cpus: float = 1.0  # Ray resources per simulated site
    client_gpus: float = 0.0
    faults: dict[str, str] | None = None  # simulations only: site -> nan | scale | shape
    deliver: bool = False  # after the run, send its last published version to the sites (server/deliver.py)
    answer_requests: bool = True  # after the run, send each site the published versions it requested (`site request`)
    # Continuous learning (docs/continuous-learning.md). warm_start: null (the model group's initial weights) |
    # latest (the registry's newest version; the initial weights while the registry is empty) | a version (v0007).
    warm_start: str | None = None
    # Before a new run, ask the sites whether they request a round: off | ask (record their answers in
    # outcome.json) | require (also: no training unless at least one site requests a round).
    round_requests: str = "off"
    min_site_val_images: int = 0  # sites withhold validation figures below this many images (raises their own)


@dataclass
class TrackingConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "fracfl"


@dataclass
class ServerJob:
    """What the ServerApp needs for a run; simulations add their partition on top."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: LocalTrainConfig = field(default_factory=LocalTrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    export: ExportConfig = field(default_factory=ExportConfig)  # edge builds of published versions
    registry: str = "registry"
    run_dir: str = "runs/federated"
    run_id: str = ""
    val_data: str | None = None  # pooled validation set for the server's own evaluation
    seed: int = 0
    progress: bool = True
