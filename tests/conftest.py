"""Shared fixtures: a small synthetic multi-site dataset and a tiny model's weights, made once per session; fracfl's
cache kept in a temp dir. Helpers that take arguments (NANO, save_nano, free_port, toy_dataset) are in tests_support."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Before anything imports fracfl: Ultralytics' settings go to a throw-away folder, never the user's home.
if "FRACFL_CACHE_DIR" not in os.environ:
    os.environ["FRACFL_CACHE_DIR"] = tempfile.mkdtemp(prefix="fracfl-test-cache-")
    atexit.register(shutil.rmtree, os.environ["FRACFL_CACHE_DIR"], True)  # removed when the test run ends

FRACATLAS = Path(os.environ.get("FRACATLAS_DIR", Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fracatlas"))
SITES = ("general_hospital", "trauma_center", "rural_clinic")


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three simulated hospitals, 16 radiographs each at 128 px: the pooled data.yaml."""
    from common.synth import generate_dataset, get_profile

    out = tmp_path_factory.mktemp("synth") / "sites"
    return generate_dataset(out, [get_profile(s) for s in SITES], images_per_site=16, size=128, seed=0, progress=False)


@pytest.fixture
def fracatlas() -> Path:
    if not (FRACATLAS / "data.yaml").is_file():
        pytest.skip(f"FracAtlas not available at {FRACATLAS} (set FRACATLAS_DIR); real-data checks skipped")
    return FRACATLAS


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained yolov7_nano weights file (trained-at size 128 px), shared read-only by the whole run."""
    from tests_support import save_nano

    return save_nano(tmp_path_factory.mktemp("model") / "tiny.safetensors")
