"""Shared fixtures: a small synthetic multi-site dataset and a tiny model's weights, made once per session; fracfl's
cache kept in a temp dir. Helpers that take arguments (NANO, save_nano, free_port, toy_dataset) are in tests_support."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports fracfl: Ultralytics' settings go to a throw-away folder, never the user's home.
if "FRACFL_CACHE_DIR" not in os.environ:
    os.environ["FRACFL_CACHE_DIR"] = tempfile.mkdtemp(prefix="fracfl-test-cache-")
    atexit.register(shutil.rmtree, os.environ["FRACFL_CACHE_DIR"], True)  # removed when the test run ends

TORCH_THREADS = 2  # every test computes with this many threads, whatever the machine or an earlier test set

FRACATLAS = Path(
    os.environ.get("FRACATLAS_DIR", Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fracatlas")
)
SITES = ("general_hospital", "trauma_center", "rural_clinic")


@pytest.fixture(autouse=True)
def same_torch_threads() -> None:
    """Float sums depend on how many threads split them: fixing the count makes a learning test's numbers the same on
    a laptop and a 16-core CI runner, and after a test (or code under test, e.g. `fracfl listen threads=1`) changed it."""
    import torch

    torch.set_num_threads(TORCH_THREADS)


# Variables that fracfl reads or sets for one run (its own and PATH); libraries' own settings are theirs to manage.
RUN_SCOPED_ENV = ("FRACFL_", "PATH")


@pytest.fixture(autouse=True)
def environment_left_as_found() -> Iterator[None]:
    """Later tests start Flower, Orthanc and Chromium as child processes that inherit this process's environment: a
    variable a test (or code under test) leaves behind changes what they run, so leaving one is a failure here."""
    before = dict(os.environ)
    yield
    changed = {k for k in before.keys() | os.environ.keys() if before.get(k) != os.environ.get(k)}
    leaked = sorted(k for k in changed if k.startswith(RUN_SCOPED_ENV))
    for k in leaked:  # put back, so that one failure does not spread to the tests after it
        if k in before:
            os.environ[k] = before[k]
        else:
            os.environ.pop(k, None)
    assert not leaked, f"the test left these environment variables changed: {leaked}"


@pytest.fixture
def deterministic() -> Iterator[None]:
    """For learning tests: PyTorch's deterministic kernels only (an op without one raises rather than varies)."""
    import torch

    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


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
