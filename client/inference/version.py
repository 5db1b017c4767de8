"""The model version stamped on every result, so a finding in the PACS can be traced to the model that made it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from common.inference.load import weights_path
from common.nn.weights import read_weights


def model_version(ref: str | Path) -> str:
    """'run_id/v0003' for a published registry version, the round's name for a kept global model
    (client.models.fetch), else the weights file's name and content hash."""
    path = weights_path(ref)
    _, _, meta = read_weights(path)
    if meta.get("model_version"):
        return str(meta["model_version"])
    if meta.get("registry_version"):
        return f"{meta.get('run_id') or 'fracfl'}/{meta['registry_version']}"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"{path.stem}@{digest}"
