"""The site's held-out patients: drawn once per patient pseudonym, never trained on, the site's own test set.

Membership is a keyed hash of the pseudonym, so it is stable as cases arrive (a patient never moves between train
and test) and unpredictable without the key. The key (`D/holdout.salt`, 32 random bytes made at the site on first
use) never comes from the server: a server that could choose or compute the salt could steer which patients a
site tests its models on.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from common.errors import ConfigError, DataError

SALT_FILE = "holdout.salt"


def in_holdout(patient: str, fraction: float, salt: bytes) -> bool:
    """Whether `patient` (a pseudonym) belongs to the held-out share `fraction` of patients under `salt`."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"held-out fraction {fraction}: must be at least 0 and below 1")
    if len(salt) < 16:
        raise ConfigError("held-out salt: at least 16 bytes are needed")
    digest = hmac.new(salt, patient.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def holdout_salt(data_dir: Path, *, create: bool = True) -> bytes:
    """The site's salt from `data_dir/holdout.salt`, made (owner-only) when missing and `create` is set."""
    path = Path(data_dir) / SALT_FILE
    if not path.exists():
        if not create:
            raise DataError(path, "missing: the held-out split of this site's data cannot be drawn without it")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{SALT_FILE}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        try:  # a link never replaces: of two processes making it at once, both read the first one's salt
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    try:
        salt = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as e:
        raise DataError(path, f"unreadable held-out salt ({e}); restore it from a backup, never remake it") from e
    if len(salt) < 16:
        raise DataError(path, "held-out salt shorter than 16 bytes; restore it from a backup")
    return salt
