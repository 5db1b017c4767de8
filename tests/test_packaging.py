"""A non-editable install (`pip install .`) carries conf/ and composes its configs from the installed copy."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as a wheel (no network: the venv's setuptools) and unpacked into a folder of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            str(ROOT),
            "-w",
            str(tmp),
        ],
        check=True,
        cwd=tmp,
    )
    (wheel,) = tmp.glob("fracfl-*.whl")
    site = tmp / "site"
    zipfile.ZipFile(wheel).extractall(site)
    return site


def test_wheel_carries_every_config(installed: Path) -> None:
    shipped = {p.relative_to(installed / "conf") for p in (installed / "conf").rglob("*") if p.is_file()}
    source = {
        p.relative_to(ROOT / "conf") for p in (ROOT / "conf").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }
    assert source <= shipped, f"missing from the wheel: {sorted(map(str, source - shipped))}"


def test_installed_copy_composes_a_job(installed: Path, tmp_path: Path) -> None:
    # PYTHONPATH puts the installed copy ahead of the editable source tree; cwd is elsewhere, so nothing is found
    # relative to the checkout.
    env = {**os.environ, "PYTHONPATH": str(installed)}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from common.config import CONF_DIR; print(CONF_DIR)\n"
            "from server.job import compose\n"
            "cfg = compose(['experiment=demo'])\n"
            "print(cfg.federation.rounds, cfg.privacy.mode)",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    conf_dir, summary = out.stdout.strip().splitlines()[-2:]
    assert Path(conf_dir).is_relative_to(installed), conf_dir
    rounds, mode = summary.split()
    assert int(rounds) >= 1 and mode == "dp_sgd"
