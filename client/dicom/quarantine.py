"""Files the pipeline will not process are moved aside with their reason, never dropped silently.

Layout: QUARANTINE/<reason>/<time>_<name> and beside it <time>_<name>.reason.json ({reason, problem, ...}). The
reason file is written first, then the file is moved: a crash in between leaves the input where it was (it will be
retried), never a quarantined file without its reason.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from client.inference.analyse import atomic_json

REASON_SUFFIX = ".reason.json"


def quarantine(path: str | Path, root: str | Path, reason: str, problem: str, move: bool = True) -> Path:
    """Move `path` into `root/reason/` (copy when `move` is False) beside a JSON reason; returns the new path."""
    path = Path(path)
    folder = Path(root) / reason
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = folder / f"{stamp}_{path.name}"
    n = 1
    while target.exists():
        target = folder / f"{stamp}_{n}_{path.name}"
        n += 1
    atomic_json(
        target.with_name(target.name + REASON_SUFFIX),
        {"reason": reason, "problem": problem, "original_name": path.name, "quarantined_at": stamp},
    )
    if path.exists():
        (shutil.move if move else shutil.copy2)(str(path), str(target))
    return target
