"""Release approval: a version is used clinically only with a record of who approved it, when, on which figures,
signed with the site's key (the Ed25519 key that signs its privacy ledger, common.privacy.signing).

The signature covers the SHA-256 of the record's canonical JSON, which names the weights' and card's hashes: a
changed weights file, a changed record or a record signed with another key all fail `check_approval`. The public key
a checker trusts comes from its own configuration (the site's key file), never from the record itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from client.models.store import CARD, ModelStore, sha256_file
from common.errors import ConfigError, FracflError
from common.inference.load import WEIGHTS_FILE
from common.privacy import signing

SIGNED = ("version", "weights_sha256", "card_sha256", "approved_by", "approved_at", "figures", "basis", "key")


def operating_point(record: Mapping[str, Any]) -> float | None:
    """The score threshold the approving gate chose for this version (`[gate] target_fp_per_image`: each model at
    its own point), or None when the gate judged it at a fixed threshold, so the user's configured one applies. It
    lies inside the signed figures: changing it breaks the signature."""
    figures = record.get("figures") or {}
    conf = (figures.get("challenger") or {}).get("conf")
    if figures.get("target_fp_per_image") is None or not isinstance(conf, (int, float)):
        return None
    return float(conf)


class NotApproved(FracflError):
    """A version lacks a valid approval record: the message says which version and what is wrong."""


def check_approver(name: str) -> str:
    """A person's name or login as typed: one short line (it is shown in status and kept in local files only)."""
    name = " ".join(str(name).split())
    if not name or len(name) > 64:
        raise ConfigError(f"approver {name!r}: give who approves (1-64 characters)")
    return name


def _digest(record: Mapping[str, Any]) -> str:
    body = {k: record.get(k) for k in SIGNED}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sign_approval(
    store: ModelStore, version: str, approver: str, figures: Mapping[str, Any], basis: str, key: Ed25519PrivateKey
) -> dict[str, Any]:
    """A signed approval record for an installed, intact version (`basis`: the gate decision, or the reason for
    approving without one)."""
    problems = store.check(version)
    if problems:
        raise NotApproved(f"{version} cannot be approved: " + "; ".join(problems))
    folder = store.folder(version)
    record: dict[str, Any] = {
        "version": folder.name,
        "weights_sha256": sha256_file(folder / WEIGHTS_FILE),
        "card_sha256": sha256_file(folder / CARD),
        "approved_by": check_approver(approver),
        "approved_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "figures": dict(figures),
        "basis": basis,
        "key": signing.public_hex(key),
    }
    record["signature"] = signing.sign(key, _digest(record))
    return record


def check_approval(store: ModelStore, record: Mapping[str, Any] | None, public_key: str) -> list[str]:
    """Why `record` does not make its version clinically usable (empty: it does): missing, not signed by
    `public_key`, changed since signing, or naming files that are no longer those approved."""
    if record is None:
        return ["no approval record (approve it with `fracfl site promote` or `fracfl site approve`)"]
    version = str(record.get("version"))
    if record.get("key") != public_key:
        return [f"{version}: approval not signed with this site's key"]
    if not signing.valid(public_key, _digest(record), str(record.get("signature"))):
        return [f"{version}: approval record changed after it was signed (signature invalid)"]
    try:
        folder = store.folder(version)
        problems = store.check(version)
    except FracflError as e:
        return [str(e)]
    if sha256_file(folder / WEIGHTS_FILE) != record.get("weights_sha256"):
        problems.append(f"{version}/{WEIGHTS_FILE}: not the weights that were approved")
    if sha256_file(folder / CARD) != record.get("card_sha256"):
        problems.append(f"{version}/{CARD}: not the card that was approved")
    return problems


def public_key_of(path: str | Path) -> str:
    """The public key (hex) a checker trusts: from the site's private key file, or from a public key PEM."""
    path = Path(path)
    try:
        pem = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the site's key ({e})") from e
    try:
        if b"PRIVATE KEY" in pem:
            key = serialization.load_pem_private_key(pem, password=None)
            if isinstance(key, Ed25519PrivateKey):
                return signing.public_hex(key)
        else:
            pub = serialization.load_pem_public_key(pem)
            if isinstance(pub, Ed25519PublicKey):
                raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
                return raw.hex()
    except ValueError as e:
        raise ConfigError(f"{path}: not a PEM key ({e})") from e
    raise ConfigError(f"{path}: not an Ed25519 key")


def public_pem(key: Ed25519PrivateKey) -> bytes:
    """The public half as PEM, for a listener that should not hold the private key."""
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_site_key(path: str | Path | None) -> Ed25519PrivateKey:
    """The site's private key for signing approvals; never made here (a new key would not be the site's)."""
    if path is None:
        raise ConfigError(
            "no site key: set [models] key in site.toml, or [privacy] ledger_dir (its ledger-key.pem), or --key"
        )
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: the site's key is missing (`fracfl site init` makes it; restore it from backup)")
    try:
        return signing.load_or_create(path)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from e
