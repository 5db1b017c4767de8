"""The training setup a canary audit reproduces: a site's, composed exactly as the server composes the run it sends
(the same Hydra config and overrides, or the run's own job file), so the audit trains with the site's augmentation,
loss weighting, batch (hence sampling rate), optimiser, local epochs and DP-SGD settings; and a list of every
setting the auditor changed on top of it."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from common.config import LocalTrainConfig, PrivacyConfig, TrainConfig, to_typed
from common.errors import ConfigError

DEFAULT_OVERRIDES = "privacy=dp_sgd"  # a DP-SGD site as `fracfl simulate privacy=dp_sgd` trains it


@dataclass(frozen=True)
class SiteSetup:
    """A site's local training (one round) and DP-SGD settings, and where they came from."""

    train: TrainConfig
    privacy: PrivacyConfig
    source: str


def site_setup(run_config: str | None = None, overrides: str | None = None) -> SiteSetup:
    """From a run's job file (`fracfl simulate` writes one; a run folder's `.hydra/config.yaml` works too), or from
    the run's Hydra overrides composed on conf/federated.yaml (default: `privacy=dp_sgd`)."""
    if run_config is not None:
        path = Path(run_config)
        if not path.is_file():
            raise ConfigError(f"audit mia: --run-config {path}: no such file")
        try:
            cfg = OmegaConf.load(path)
        except Exception as e:
            raise ConfigError(f"audit mia: --run-config {path}: not a run configuration ({e})".splitlines()[0]) from e
        source = f"the run configuration {path}"
    else:
        from server.job import compose

        text = DEFAULT_OVERRIDES if overrides is None else overrides
        try:
            cfg = compose(shlex.split(text))
        except Exception as e:  # Hydra's errors for an unknown group or key name what is wrong
            raise ConfigError(f"audit mia: --overrides '{text}': {e}".splitlines()[0]) from e
        source = f"conf/federated.yaml with overrides '{text}'"
    for key in ("train", "privacy"):
        if key not in cfg:
            raise ConfigError(f"audit mia: the run configuration has no '{key}' section ({source})")
    local = to_typed(_section(cfg, "train"), LocalTrainConfig)
    return SiteSetup(
        replace(local, epochs=local.local_epochs), to_typed(_section(cfg, "privacy"), PrivacyConfig), source
    )  # a round trains `local_epochs` epochs, as client.task.train_site sets it


def _section(cfg: Any, key: str) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg[key], resolve=True)  # type: ignore[return-value]
    except Exception as e:
        raise ConfigError(f"audit mia: run configuration key {key}: {e}".splitlines()[0]) from e


def apply(
    setup: SiteSetup, train: dict[str, Any], privacy: dict[str, Any]
) -> tuple[TrainConfig, dict[str, Any], list[str]]:
    """The setup with the auditor's options applied (None: keep the site's value); returns the training config,
    the DP settings and one line per setting that now differs from the site's."""
    differs: list[str] = []
    given = {k: v for k, v in train.items() if v is not None}
    for k, v in given.items():
        if v != getattr(setup.train, k):
            differs.append(f"train.{k} {v!r} instead of the site's {getattr(setup.train, k)!r}")
    dp = {k: getattr(setup.privacy, k) for k in privacy}
    for k, v in privacy.items():
        if v is not None and v != dp[k]:
            differs.append(f"privacy.{k} {v!r} instead of the site's {dp[k]!r}")
            dp[k] = v
    return replace(setup.train, **given), dp, differs
