"""Which site this ClientApp serves and where its data is, from the SuperNode's node config.

In a deployment the hospital starts its SuperNode with `--node-config "site-name='st-marys' data-dir='/data/fx'"`.
In a simulation every virtual node has a `partition-id`, mapped to a site by the manifest the simulation wrote.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.site_config import NODE_KEY
from common.errors import ConfigError

SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Site:
    name: str
    data: Path  # data.yaml or dataset folder with train/val splits
    config: Path | None = None  # the site's own site.toml: node config `site-config`, or the simulation manifest's


def resolve_site(node_config: Mapping[str, Any], manifest: str | None = None) -> Site:
    """The site from `site-name`/`data-dir` in the node config, else from the simulation manifest."""
    if "data-dir" in node_config:
        name = str(node_config.get("site-name", "site"))
        config = node_config.get(NODE_KEY)
        site = Site(name, Path(str(node_config["data-dir"])), Path(str(config)) if config else None)
    elif manifest is not None and "partition-id" in node_config:
        entries = json.loads(Path(manifest).read_text())
        pid = int(node_config["partition-id"])
        if not 0 <= pid < len(entries):
            raise ConfigError(f"node config partition-id {pid}: the manifest {manifest} lists {len(entries)} sites")
        config = entries[pid].get(NODE_KEY)
        site = Site(entries[pid]["name"], Path(entries[pid]["data"]), Path(config) if config else None)
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
