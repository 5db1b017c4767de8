"""Which site this ClientApp serves and where its data is, from the SuperNode's node config.

In a deployment the hospital starts its SuperNode with `--node-config "site-name='st-marys' data-dir='/data/fx'"`
(and optionally `min-val-images=N`, `models-dir=M`). In a simulation every virtual node has a `partition-id`, mapped
to a site by the manifest the simulation wrote; an entry carries the other keys a real site's node config would.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.models.store import NODE_KEY as MODELS_KEY
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
    models: Path | None = None  # the site's model store (client/models/store.py): node config `models-dir`


def _entry(node_config: Mapping[str, Any], manifest: str | None) -> dict[str, Any] | None:
    """A simulated site's manifest entry (None for a real site, whose node config names its data)."""
    if "data-dir" in node_config or manifest is None or "partition-id" not in node_config:
        return None
    entries = json.loads(Path(manifest).read_text())
    pid = int(node_config["partition-id"])
    if not 0 <= pid < len(entries):
        raise ConfigError(f"node config partition-id {pid}: the manifest {manifest} lists {len(entries)} sites")
    return dict(entries[pid])


def _path(value: object) -> Path | None:
    return Path(str(value)) if value else None


def resolve_site(node_config: Mapping[str, Any], manifest: str | None = None) -> Site:
    """The site from `site-name`/`data-dir` in the node config, else from the simulation manifest."""
    entry = _entry(node_config, manifest)
    if "data-dir" in node_config:
        site = Site(
            str(node_config.get("site-name", "site")),
            Path(str(node_config["data-dir"])),
            _path(node_config.get(NODE_KEY)),
            min_val_images=_min_val(node_config),
            models=_path(node_config.get(MODELS_KEY)),
        )
    elif entry is not None:
        site = Site(
            entry["name"],
            Path(entry["data"]),
            _path(entry.get(NODE_KEY)),
            simulated=True,
            models=_path(entry.get(MODELS_KEY)),
        )
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


def site_store(node_config: Mapping[str, Any], node_id: int, manifest: str | None = None) -> tuple[str, Path | None]:
    """The site's name and model store, as `resolve_site` reads them but without its data: a node may only receive
    models. The name is ``node-<id>`` where none is given, or none that is safe to send."""
    entry = _entry(node_config, manifest)
    where = entry if entry is not None else node_config
    name = str(where.get("name" if entry is not None else "site-name", ""))
    return (name if SAFE_NAME.match(name) else f"node-{node_id}"), _path(where.get(MODELS_KEY))
