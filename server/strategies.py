"""Flower strategies by name, configured for fracfl's messages (the record and weight keys of common/protocol.py)."""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum, Strategy

from common.errors import ConfigError
from common.protocol import ARRAYS, CONFIG, NUM_EXAMPLES
from server.config import FederationConfig, StrategyConfig

STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
}


def build_strategy(cfg: StrategyConfig, fed: FederationConfig) -> Strategy:
    """The named Flower strategy with the federation's sampling settings and the strategy's own parameters."""
    if cfg.name not in STRATEGIES:
        raise ConfigError(f"strategy.name: unknown strategy {cfg.name!r}; choose one of {sorted(STRATEGIES)}")
    settings: dict[str, Any] = {
        "fraction_train": fed.fraction_train,
        "fraction_evaluate": fed.fraction_evaluate,
        "min_train_nodes": fed.min_sites,
        "min_evaluate_nodes": fed.min_sites if fed.fraction_evaluate > 0 else 0,
        "min_available_nodes": fed.min_sites,
        "weighted_by_key": NUM_EXAMPLES,
        "arrayrecord_key": ARRAYS,
        "configrecord_key": CONFIG,
    }
    try:
        return STRATEGIES[cfg.name](**settings, **dict(cfg.params))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"strategy.params: {cfg.name} rejects {dict(cfg.params)}: {e}") from e
