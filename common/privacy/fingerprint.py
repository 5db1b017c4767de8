"""Which images a training set holds, by content: the key that keeps privacy spending from resetting.

Each image file is hashed (SHA-256 of its bytes); the set's fingerprint is the hash of the sorted image hashes.
The member hashes are kept beside the ledger, so later spending can be matched to earlier sets that share any image.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=65536)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:  # size/mtime in the key: a changed file is re-hashed
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def image_hashes(paths: list[Path]) -> list[str]:
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append(_file_hash(str(p), st.st_size, st.st_mtime_ns))
    return out


def fingerprint(hashes: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(set(hashes))).encode()).hexdigest()
