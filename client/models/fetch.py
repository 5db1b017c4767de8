"""Getting a published version into the site's store, with its card and TFLite builds, hashes checked on the way:

- from a registry folder the site can read (same host, shared storage): `fetch_from_registry`;
- from the federation: after a run the ServerApp delivers, over the sites' authenticated Flower channel
  (server/deliver.py), the run's last published version (`federation.deliver`) and the versions the site requested
  (client/models/requested.py); the ClientApp checks each and leaves it in M/inbox/ (`receive`), and
  `fracfl site fetch V` installs it from there (`fetch_from_inbox`);
- the global model a site received in its last round, kept by the ClientApp (`keep_received`), installed as a
  version named after the round (`fetch_received`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from client.models.store import CARD, ModelStore, folder_files, normalise, sha256_file, write_version
from common.errors import DataError
from common.inference.load import WEIGHTS_FILE
from common.nn.model import ModelSpec
from common.nn.weights import write_state
from common.protocol import VERSION_NAME

RECEIVED_INFO = "received.json"


def _registry_version(root: Path, version: str) -> str:
    """`latest` resolved as the registry does (the newest version folder); else the normalised name."""
    if version.strip().lower() != "latest":
        return normalise(version)
    have = sorted((p.name for p in root.glob("v[0-9]*") if p.is_dir()), key=lambda v: int(v[1:]))
    if not have:
        raise DataError(root, "no versions in this registry yet")
    return have[-1]


def fetch_from_registry(store: ModelStore, registry: str | Path, version: str) -> Path:
    """Copy a published version (`latest` allowed) from a registry folder into the store, checking every file."""
    root = Path(registry)
    version = _registry_version(root, version)
    folder = root / version
    if not folder.is_dir():
        raise DataError(root, f"no version {version} in this registry")
    return store.install(version, folder_files(folder))


def receive(store: ModelStore, version: str, files: Mapping[str, bytes]) -> Path:
    """A delivered version, checked against its card's hashes, into M/inbox/<version> (refused when damaged)."""
    version = normalise(version)
    store.inbox.mkdir(parents=True, exist_ok=True)
    return write_version(store.inbox / version, version, files)


def fetch_from_inbox(store: ModelStore, version: str) -> Path:
    """Install a delivered version from the inbox (checked again: the inbox is just a folder)."""
    version = normalise(version)
    folder = store.inbox / version
    if not folder.is_dir():
        ask = f"; `fracfl site request {version}` asks the federation for it" if VERSION_NAME.match(version) else ""
        have = ", ".join(store.delivered()) or "none"
        raise DataError(store.inbox, f"no delivered {version} here (delivered: {have}){ask}")
    return store.install(version, folder_files(folder))


def keep_received(
    store: ModelStore, state: Mapping[str, np.ndarray], spec: ModelSpec, imgsz: int, model_version: str
) -> Path:
    """Keep the global model received this round in M/received/ (replacing the previous one), with which model
    version it is (the server's `run_id:rNNNN`)."""
    store.received.mkdir(parents=True, exist_ok=True)
    tmp = store.received / f".{WEIGHTS_FILE}.tmp"
    digest = write_state(tmp, dict(state), spec, {"imgsz": imgsz, "model_version": model_version})
    tmp.replace(store.received / WEIGHTS_FILE)
    info = {
        "model_version": model_version,
        "sha256": digest,
        "received_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (store.received / RECEIVED_INFO).write_text(json.dumps(info, indent=1) + "\n")
    return store.received / WEIGHTS_FILE


def fetch_received(store: ModelStore) -> Path:
    """Install the kept global model as a version named after its round (`run_id:r0003` -> `run_id-r0003`), with
    a card that records its hash and where it came from."""
    try:
        info: dict[str, Any] = json.loads((store.received / RECEIVED_INFO).read_text())
    except (OSError, ValueError) as e:
        raise DataError(store.received, f"no kept global model here ({e})") from e
    weights = store.received / WEIGHTS_FILE
    if not weights.is_file() or sha256_file(weights) != info.get("sha256"):
        raise DataError(weights, "missing or not the model that was received (hash differs)")
    version = normalise(str(info["model_version"]).replace(":", "-"))
    card = {
        "version": version,
        "source": f"received in round {info['model_version']}",
        "hashes": {WEIGHTS_FILE: info["sha256"]},
    }
    return store.install(version, {CARD: json.dumps(card, indent=1).encode(), WEIGHTS_FILE: weights})
