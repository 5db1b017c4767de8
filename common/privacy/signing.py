"""The site's ledger key: an Ed25519 key pair that signs each ledger entry's hash.

A hash chain can be recomputed by anyone who can write the file; a signature needs the private key. The key lives
beside the ledger (`ledger-key.pem`, readable by its owner only; `fracfl site init` makes it). Each entry carries
the public key (`key`, covered by the entry's hash) and the signature of the hash (`sig`). The heads the server
recorded fix the key too: a ledger re-signed with a new key has other hashes.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_NAME = "ledger-key.pem"


def public_hex(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def load_or_create(path: Path) -> Ed25519PrivateKey:
    """The key at `path`, made (mode 0600) if absent. A lost or replaced key changes the public key, which the
    ledger's earlier entries and the server's records then contradict: the site stops training (fail closed)."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    return key


def sign(key: Ed25519PrivateKey, digest: str) -> str:
    return key.sign(digest.encode()).hex()


def valid(public: str, digest: str, sig: str) -> bool:
    """Whether `sig` is the signature of `digest` by the public key `public` (hex)."""
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public)).verify(bytes.fromhex(sig), digest.encode())
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
