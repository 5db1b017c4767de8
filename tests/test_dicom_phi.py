"""No patient data escapes: synthetic DICOM with made-up identities through the whole site pipeline, ingest and a
real federated round (Flower simulation, wandb offline); every file and every line printed or logged is searched."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from dicom_files import names_in, without_patient_identity
from tests_support import save_nano

from client.dicom import DicomPipeline
from common.cli import main
from common.config import EvalConfig
from common.synth import generate_dataset, get_profile

pytestmark = pytest.mark.slow

SITE = "general_hospital"


def _identities(site: Path) -> set[bytes]:
    """Every identifying value the generator wrote, in the spellings a leak could take."""
    needles: set[str] = set()
    for line in (site / "ground_truth.jsonl").read_text().splitlines():
        record = json.loads(line)
        ds = pydicom.dcmread(site / record["dicom"], stop_before_pixels=True)
        family, given = record["dicom_patient_name"].split("^")
        birth = str(ds.PatientBirthDate)
        needles |= {
            record["dicom_patient_name"],
            f"{family} {given}",
            f"{given} {family}",
            record["dicom_patient_id"],
            str(ds.AccessionNumber),
            birth,
            f"{birth[:4]}-{birth[4:6]}-{birth[6:]}",
        }
    return {n.encode() for n in needles}


def _leaks(files: list[Path], needles: set[bytes]) -> list[str]:
    found = []
    for path in files:
        data = path.read_bytes()
        found += [f"{path}: {n.decode()}" for n in needles if n in data]
    return found


def test_no_patient_data_leaves_the_site_pipeline(tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    synth = tmp_path / "synth"
    generate_dataset(synth, [get_profile(SITE)], images_per_site=12, size=128, dicom=True, progress=False)
    site = synth / SITE
    needles = _identities(site)
    assert len(needles) > 20

    work = tmp_path / "work"  # everything the site and the federation produce lands here
    weights = save_nano(work / "model.safetensors")

    # 1. The network listener's path: each received file through the pipeline, de-identified copies kept.
    pipeline = DicomPipeline(
        weights,
        work / "results",
        work / "quarantine",
        eval_cfg=EvalConfig(conf=0.01, max_det=3),
        keep_dir=work / "kept",
        site_dir=work / "site_keys",
        burned_in="accept",
        heatmap=False,
    )
    results = [pipeline.process(p) for p in sorted((site / "dicom").glob("*.dcm"))]
    assert all(r.ok and r.kept is not None for r in results)
    # 2. fracfl predict with DICOM results, and ingest of de-identified DICOM + labels into a training set.
    assert (
        main(
            [
                "predict",
                str(site / "dicom"),
                "--model",
                str(weights),
                "--out",
                str(work / "predict"),
                "--json",
                "--conf",
                "0.01",
                "--dicom-results",
            ]
        )
        == 0
    )
    # Ingest splits by a keyed hash of the pseudonymous patient (a fresh random site secret here): with one patient
    # per image, 12 images at 0.5 leave a split empty with probability 2 * 0.5**12 (at 0.3 with 8 images: 6 %).
    assert (
        main(
            [
                "ingest",
                str(site / "dicom"),
                "--labels",
                str(site / "labels"),
                "--out",
                str(work / "site_data"),
                "--keys",
                str(work / "site_keys"),
                "--burned-in",
                "accept",
                "--val-fraction",
                "0.5",
            ]
        )
        == 0
    )
    assert len(list((work / "site_data" / "images").rglob("*.png"))) == 12
    # 3. A real federated round on the de-identified training set, with wandb tracking offline.
    run = work / "run"
    assert (
        main(
            [
                "simulate",
                "model=yolov7_nano",
                "partition=iid",
                "federation.sites=2",
                "federation.min_sites=2",
                "tracking=offline",
                "train.imgsz=64",
                "train.batch_size=4",
                "train.local_epochs=1",
                "augment=none",
                "federation.rounds=1",
                "progress=false",
                f"partition.source={work / 'site_data'}",
                f"run_dir={run}",
            ]
        )
        == 0
    )
    assert list((run / "registry").glob("v*/card.json")) and list(run.rglob("wandb/**/*.wandb"))

    # Results that go back to the PACS belong in the patient's record: they must carry the identity (this also
    # proves the search below finds identities inside binary DICOM). So must the site's own linking table.
    to_pacs = {p for r in results for p in r.outputs} | set((work / "predict").rglob("*.dcm"))
    assert to_pacs and all(_leaks([p], needles) for p in to_pacs if p.name == "sc.dcm")
    assert _leaks([work / "site_keys" / "links.sqlite"], needles)

    everything = [p for p in work.rglob("*") if p.is_file() and p not in to_pacs and p.parent != work / "site_keys"]
    assert len(everything) > 50
    out, err = capfd.readouterr()
    (work / "console.txt").write_text(out + err + "\n".join(r.getMessage() for r in caplog.records))
    leaks = _leaks(everything + [work / "console.txt"], needles)
    assert not leaks, "patient data found:\n" + "\n".join(leaks[:20])


def test_names_from_library_warnings_never_reach_predict_or_ingest_output(tmp_path):
    """highdicom's person-name check quotes a patient's and a referring physician's name in a warning when it has
    no '^'. `fracfl predict --dicom-results` and `fracfl ingest`, run as a site runs them, on such a file without
    PatientID: stdout, stderr and every file written hold neither name (the warning is there, redacted)."""
    inbox, labels = tmp_path / "inbox", tmp_path / "labels"
    inbox.mkdir()
    labels.mkdir()
    source = without_patient_identity(inbox / "xr1.dcm")
    (labels / "xr1.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    weights = save_nano(tmp_path / "model.safetensors")
    fracfl = Path(sys.executable).parent / "fracfl"
    runs = [
        [
            str(fracfl),
            "predict",
            str(inbox),
            "--model",
            str(weights),
            "--out",
            str(tmp_path / "pred"),
            "--json",
            "--conf",
            "0.01",
            "--dicom-results",
            "--no-heatmap",
        ],
        [
            str(fracfl),
            "ingest",
            str(inbox),
            "--labels",
            str(labels),
            "--out",
            str(tmp_path / "site_data"),
            "--keys",
            str(tmp_path / "keys"),
            "--burned-in",
            "accept",
            "--val-fraction",
            "0",
        ],
    ]
    console = b""
    for args in runs:
        done = subprocess.run(args, capture_output=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "always"})
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        console += done.stdout + done.stderr
    assert b"<PatientName>" in console and b"<ReferringPhysicianName>" in console  # the warnings fired, redacted
    assert not names_in(console), names_in(console)
    records = json.loads((tmp_path / "pred" / "predictions.json").read_text())["images"]
    assert records[0]["ok"] and len(records[0]["dicom_results"]) == 3  # results despite the missing PatientID
    to_pacs = {Path(p) for p in records[0]["dicom_results"]}
    assert all(names_in(p.read_bytes()) for p in to_pacs)  # results for the PACS carry the name: the search works
    written = [
        p for p in tmp_path.rglob("*") if p.is_file() and p not in to_pacs and p != source and inbox not in p.parents
    ]
    assert len(written) > 8
    leaks = {str(p): names_in(p.read_bytes()) for p in written if names_in(p.read_bytes())}
    assert not leaks, leaks
