"""Writes that survive a crash or power cut: fsynced files, atomic replacement, fsynced folders; and the lock
that keeps two writers of one folder apart.

Used wherever acknowledged work must not be lost: the registry, the DICOM listener's queue, privacy ledgers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks (fracfl's services run on Linux)
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `lock_file` (created, with its folder) for the block: writers in other
    threads or processes (a CLI beside a SuperNode, two publishes) wait their turn."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def fsync_dir(path: Path) -> None:
    """Make a rename or new file in `path` durable."""
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_durable(path: Path, data: str | bytes) -> None:
    """Write `data` to `path` and fsync it before returning."""
    with open(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())


def replace_atomic(path: Path, data: str | bytes) -> None:
    """Write a temp file beside `path`, fsync it, rename it over `path`, fsync the folder: readers see the old
    content or the new, never half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_durable(tmp, data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
