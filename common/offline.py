"""Ultralytics' offline switches, set before Ultralytics is first imported anywhere in fracfl.

Ultralytics downloads weights, fonts and datasets on demand and checks connectivity at import time. A hospital
machine may have no network at all, and nothing in fracfl may fetch anything, so every module that imports
Ultralytics imports this module first. The settings folder lives in fracfl's cache, not in the user's home.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """fracfl's cache folder: $FRACFL_CACHE_DIR, else ~/.cache/fracfl."""
    root = os.environ.get("FRACFL_CACHE_DIR") or Path.home() / ".cache" / "fracfl"
    return Path(root)


def _apply() -> None:
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ.setdefault("YOLO_VERBOSE", "0")
    config = cache_dir() / "ultralytics"
    config.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(config)
    os.environ.setdefault("MPLCONFIGDIR", str(cache_dir() / "matplotlib"))  # font cache, not in the home folder


_apply()
