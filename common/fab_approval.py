"""Signed approvals of Flower app bundles (FABs): a publisher signs the SHA-256 of the exact bundle that `flwr run`
ships; a site checks the signature against the publisher keys it trusts before adding the hash to its allow-list
(`client/fab_gate.py`), outside any bundle.

Flower 1.42's own `flower-supernode --trusted-entities` accepts only signatures that Flower Hub attaches to bundles
it serves; a bundle sent by `flwr run APP_DIR` never carries one, so it cannot be used offline.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from common.errors import ConfigError

KIND = "fracfl-fab-approval"


def fab_sha256(app_dir: Path) -> str:
    """The hash Flower gives the bundle `flwr run APP_DIR` sends (bundles are built byte-for-byte reproducibly)."""
    from flwr.cli.build import build_fab_from_disk

    if not (app_dir / "pyproject.toml").is_file():
        raise ConfigError(f"{app_dir}: no pyproject.toml; give the app's source folder (what `flwr run` is given)")
    return hashlib.sha256(build_fab_from_disk(app_dir)).hexdigest()


def _message(sha: str, signed_at: str, note: str) -> bytes:
    return f"{KIND}\n{sha}\n{signed_at}\n{note}".encode()


def _raw(key: ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: ed25519.Ed25519PublicKey) -> str:
    return hashlib.sha256(_raw(key)).hexdigest()[:16]


def sign(sha: str, key_file: Path, note: str = "") -> dict[str, str]:
    """An approval of the bundle with hash `sha`, signed with the publisher's Ed25519 key."""
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{key_file}: cannot read the publisher key ({e})") from e
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{key_file}: not an Ed25519 key (make one with `fracfl deploy publisher-key`)")
    signed_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    signature = key.sign(_message(sha, signed_at, note))
    return {
        "kind": KIND,
        "fab_sha256": sha,
        "signed_at": signed_at,
        "note": note,
        "publisher": key_id(key.public_key()),
        "signature": base64.b64encode(signature).decode(),
    }


def trusted_keys(folder: Path) -> dict[str, tuple[Path, ed25519.Ed25519PublicKey]]:
    """The publisher keys (`*.pub`, OpenSSH Ed25519) in `folder`, by key id."""
    keys = {}
    for path in sorted(folder.glob("*.pub")) if folder.is_dir() else []:
        try:
            key = serialization.load_ssh_public_key(path.read_bytes())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: not an OpenSSH public key ({e})") from e
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ConfigError(f"{path}: publisher keys are Ed25519 (`fracfl deploy publisher-key`)")
        keys[key_id(key)] = (path, key)
    return keys


def verify(approval_file: Path, publishers: Path) -> dict[str, Any]:
    """The approval in `approval_file` if a publisher key in `publishers` signed it; ConfigError says why not."""
    try:
        approval = json.loads(approval_file.read_text(encoding="utf-8"))
        sha, signed_at, note = approval["fab_sha256"], approval["signed_at"], approval.get("note", "")
        signature = base64.b64decode(approval["signature"], validate=True)
        if approval.get("kind") != KIND or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError("not a fracfl bundle approval")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{approval_file}: cannot read the approval ({e})") from e
    keys = trusted_keys(publishers)
    if not keys:
        raise ConfigError(f"{publishers}: no trusted publisher key (*.pub); copy the publisher's .pub file there")
    found = keys.get(str(approval.get("publisher")))
    if found is None:
        raise ConfigError(
            f"{approval_file}: signed by publisher {approval.get('publisher')!r}, not one in {publishers}"
        )
    path, key = found
    try:
        key.verify(signature, _message(sha, signed_at, note))
    except InvalidSignature as e:
        raise ConfigError(f"{approval_file}: the signature does not verify with {path}: the file was altered") from e
    return approval | {"publisher_key": str(path)}
