"""Where a new run's weights come from when it continues from a published model (`federation.warm_start`).

Continuous learning trains each run from the last model rather than from scratch: `latest` is the registry's
newest version (the configured initial weights while the registry is still empty, so a schedule's first run can
use it too), or a named version. The version must be the same network as the run's model (architecture, width,
depth, normalisation, classes): anything else is refused with both specs named, never loaded tensor by tensor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from common.errors import ConfigError, DataError
from common.nn.model import ModelSpec
from common.records import State
from server.registry import Registry

log = logging.getLogger("fracfl.server")

LATEST = "latest"


@dataclass(frozen=True)
class WarmStart:
    version: str  # the registry version the run starts from: its first published card names it as parent
    state: State


def _spec_text(spec: ModelSpec) -> str:
    classes = ", ".join(spec.names[k] for k in sorted(spec.names))
    return f"{spec.arch} width {spec.width:g} depth {spec.depth:g} norm {spec.norm} classes [{classes}]"


def warm_start(registry: Registry, which: str | None, spec: ModelSpec, init: str | None = None) -> WarmStart | None:
    """The published weights a new run starts from, or None (start from the initial weights).

    ConfigError when the setting is unusable: both `model.init` and a warm start, a version that does not exist, or
    a model that is not `spec`. DataError when the version's weights do not match its card's hash."""
    if which is None or not str(which).strip():
        return None
    which = str(which).strip()
    if init is not None:
        raise ConfigError(
            f"federation.warm_start={which} and model.init={init}: a run starts from one model; set one of them"
        )
    if which.lower() == LATEST and not registry.versions():
        log.warning("federation.warm_start=latest: %s has no version yet; starting from the initial weights", registry)
        return None
    try:
        version = registry.get(which).version
    except DataError as e:  # no such version (the message lists what there is)
        raise ConfigError(f"federation.warm_start={which}: {e}") from e
    model, their_spec, _ = registry.load(version)  # DataError when the weights do not match the card's hash
    if their_spec != spec:
        raise ConfigError(
            f"federation.warm_start={which}: {version} is a {_spec_text(their_spec)} model, but this run's model is "
            f"{_spec_text(spec)}; choose a version of the same model or change the model group to match it"
        )
    log.info("warm start: the run starts from registry version %s", version)
    return WarmStart(version, {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
