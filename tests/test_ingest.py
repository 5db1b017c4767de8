"""`fracfl ingest` says how its splits stand: a site folder with an empty split cannot serve a federated run."""

from __future__ import annotations

import json

import pytest

from common.cli import main
from common.synth import generate_dataset, get_profile

SITE = "general_hospital"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, [get_profile(SITE)], images_per_site=4, size=64, dicom=True, progress=False)
    return root / SITE


def _ingest(site, out, keys, fraction: str) -> int:
    return main(["ingest", str(site / "dicom"), "--labels", str(site / "labels"), "--out", str(out), "--keys", str(keys),
                 "--burned-in", "accept", "--val-fraction", fraction])


def test_an_empty_validation_split_is_reported(site, tmp_path, capsys):
    assert _ingest(site, tmp_path / "data", tmp_path / "keys", "0") == 0
    out = capsys.readouterr().out
    assert "4 image(s) added" in out and "(now 4 train, 0 val)" in out
    assert "warning: the val split is empty" in out and "train split is empty" not in out
    assert json.loads((tmp_path / "data" / "ingest.json").read_text())["splits"] == {"train": 4, "val": 0}

    # Ingesting the same studies again rewrites them in place (same pseudonymous names, same split).
    assert _ingest(site, tmp_path / "data", tmp_path / "keys", "0") == 0
    assert len(list((tmp_path / "data" / "images").rglob("*.png"))) == 4


def test_a_folder_keeps_the_validation_share_it_was_split_with(site, tmp_path, capsys):
    assert _ingest(site, tmp_path / "data", tmp_path / "keys", "0.5") == 0
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "data").rglob("*.png"))
    capsys.readouterr()
    assert _ingest(site, tmp_path / "data", tmp_path / "keys", "0.25") != 0
    assert "--val-fraction 0.25: this folder was split with 0.5" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "data").rglob("*.png")) == before


@pytest.mark.parametrize("fraction", ["1", "-0.1", "1.5"])
def test_a_validation_share_outside_0_to_1_is_refused(site, tmp_path, capsys, fraction):
    assert _ingest(site, tmp_path / "data", tmp_path / "keys", fraction) != 0
    assert f"--val-fraction {float(fraction)}" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
