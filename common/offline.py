"""Offline switches for Ultralytics and Flower, set before either is first imported anywhere in fracfl.

Ultralytics downloads weights, fonts and datasets on demand and checks connectivity at import time. A hospital
machine may have no network at all, and nothing in fracfl may fetch anything, so every module that imports
Ultralytics imports this module first. The settings folder lives in fracfl's cache, not in the user's home.
Flower sends usage telemetry and checks for updates unless told not to; both are off unless the user says otherwise.
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
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


_apply()
