"""Which site this ClientApp serves and where its data is, from the SuperNode's node config.

In a deployment the hospital starts its SuperNode with `--node-config "site-name='st-marys' data-dir='/data/fx'"`
(and optionally `min-val-images=N`). In a simulation every virtual node has a `partition-id`, mapped to a site by the
manifest the simulation wrote.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.site_config import NODE_KEY
from common.errors import ConfigError
from common.protocol import SAFE_NAME

MIN_VAL_KEY = "min-val-images"  # node config: fewer validation images than this and the site reports no figures
MIN_VAL_IMAGES = 20  # a real site's default; a simulated site's data is the coordinator's own (0)


@dataclass(frozen=True)
class Site:
    name: str
    data: Path  # data.yaml or dataset folder with train/val splits
    config: Path | None = None  # the site's own site.toml: node config `site-config`, or the simulation manifest's
    simulated: bool = False  # built by a simulation from its manifest, not a hospital's own node config
    min_val_images: int = 0  # the site's own minimum validation size for reporting figures (a run may raise it)


def resolve_site(node_config: Mapping[str, Any], manifest: str | None = None) -> Site:
    """The site from `site-name`/`data-dir` in the node config, else from the simulation manifest."""
    if "data-dir" in node_config:
        name = str(node_config.get("site-name", "site"))
        config = node_config.get(NODE_KEY)
        site = Site(
            name,
            Path(str(node_config["data-dir"])),
            Path(str(config)) if config else None,
            min_val_images=_min_val(node_config),
        )
    elif manifest is not None and "partition-id" in node_config:
        entries = json.loads(Path(manifest).read_text())
        pid = int(node_config["partition-id"])
        if not 0 <= pid < len(entries):
            raise ConfigError(f"node config partition-id {pid}: the manifest {manifest} lists {len(entries)} sites")
        config = entries[pid].get(NODE_KEY)
        site = Site(entries[pid]["name"], Path(entries[pid]["data"]), Path(config) if config else None, simulated=True)
    else:
        raise ConfigError(
            "node config: set data-dir (and site-name) for this SuperNode, e.g. "
            "--node-config \"site-name='site_a' data-dir='/data/site_a'\""
        )
    if not SAFE_NAME.match(site.name):
        raise ConfigError(
            f"node config site-name {site.name!r}: use 1-64 letters, digits, '.', '_' or '-' "
            "(it appears in logs and model cards, so never a patient or person name)"
        )
    if not site.data.exists():
        raise ConfigError(f"node config data-dir {str(site.data)!r} of site {site.name} does not exist")
    return site


def _min_val(node_config: Mapping[str, Any]) -> int:
    value = node_config.get(MIN_VAL_KEY, MIN_VAL_IMAGES)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"node config {MIN_VAL_KEY}={value!r}: give a whole number of images >= 0")
    return value
