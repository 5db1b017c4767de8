"""Findings reach the feedback store from the listener's processor and from `fracfl predict --feedback-db`, through
the real pipeline on a tiny model, referencing only de-identified copies."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from dicom_files import PATIENT_NAME
from tests_support import NANO

from client.dicom import DicomPipeline
from client.feedback.store import FeedbackStore
from client.listener.config import ListenConfig
from client.listener.inference import PipelineProcessor
from common.cli import main
from common.config import EvalConfig
from common.errors import ConfigError
from common.nn.model import build_model
from common.nn.weights import save_weights
from common.synth import generate_dataset, get_profile

CFG = EvalConfig(conf=0.01, max_det=3)  # an untrained model scores low: a low operating point still yields boxes


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    spec = NANO
    return save_weights(build_model(spec), spec, tmp_path_factory.mktemp("model") / "tiny.safetensors", {"imgsz": 128})


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    """Two synthetic DX files whose patient carries a unique name and id (they must never reach the store)."""
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, [get_profile("general_hospital")], images_per_site=2, size=128, dicom=True, progress=False)
    files = sorted((out / "general_hospital" / "dicom").glob("*.dcm"))
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID = PATIENT_NAME, f"PHI-PID-{k}-QZV"
        ds.save_as(path, enforce_file_format=True)
    return files


def _assert_clean(db: Path, sources: list[Path]) -> None:
    data = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    for src in sources:
        ds = pydicom.dcmread(src, stop_before_pixels=True)
        for value in (PATIENT_NAME, str(ds.PatientID), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)):
            assert value.encode() not in data, value


def test_listener_records_each_kept_image_once(weights, sources, tmp_path):
    store = FeedbackStore(tmp_path / "feedback.db")
    pipeline = DicomPipeline(
        weights,
        tmp_path / "results",
        tmp_path / "quarantine",
        eval_cfg=CFG,
        keep_dir=tmp_path / "keep",
        burned_in="accept",
    )
    process = PipelineProcessor(pipeline, store)
    for src in sources:
        assert len(process(src)) == 3
    process(sources[0])  # a retried job (after a crash) does not duplicate the finding
    rows = store.worklist()
    assert len(rows) == 2
    for row in rows:
        kept = Path(row.image_ref)
        assert kept.parent == tmp_path / "keep" and kept.stem == row.sop_uid
        assert pydicom.dcmread(kept).PatientIdentityRemoved == "YES"
        assert (
            row.patient.startswith("ANON-") and row.origin == "listen" and row.model_version == pipeline.model_version
        )
        assert row.heatmap_ref and Path(row.heatmap_ref).is_file()
        assert len(row.boxes) >= 1 and all(b.box.score >= CFG.conf and b.status == "proposed" for b in row.boxes)
        assert row.probability == pytest.approx(max(b.box.score for b in row.boxes), abs=1e-3)
    assert store.class_names() == ["fracture"]
    _assert_clean(tmp_path / "feedback.db", sources)


def test_images_not_kept_are_not_recorded(weights, sources, tmp_path):
    store = FeedbackStore(tmp_path / "feedback.db")
    refusing = DicomPipeline(
        weights, tmp_path / "results", tmp_path / "quarantine", eval_cfg=CFG, heatmap=False, keep_dir=tmp_path / "keep"
    )  # synthetic DX are flagged BurnedInAnnotation=YES
    assert len(PipelineProcessor(refusing, store)(sources[0])) == 3  # results still go to the PACS
    assert store.worklist() == []


def test_feedback_db_needs_keep_dir():
    with pytest.raises(ConfigError, match="feedback_db: set keep_dir"):
        ListenConfig(model="w", feedback_db="var/feedback.db").check()
    ListenConfig(model="w", feedback_db="var/feedback.db", keep_dir="var/keep").check()


def test_predict_records_dicom_inputs(weights, sources, tmp_path, capsys):
    db = tmp_path / "site" / "feedback.db"
    png = tmp_path / "plain.png"
    png.write_bytes(next((sources[0].parent.parent / "images").rglob("*.png")).read_bytes())
    assert (
        main(
            [
                "predict",
                str(sources[0]),
                str(png),
                "--model",
                str(weights),
                "--out",
                str(tmp_path / "pred"),
                "--conf",
                "0.01",
                "--no-heatmap",
                "--feedback-db",
                str(db),
                "--burned-in",
                "accept",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "recorded as feedback image 1" in out and "not recorded: only DICOM inputs" in out
    (row,) = FeedbackStore(db).worklist()
    assert row.origin == "predict" and Path(row.image_ref).parent == tmp_path / "site" / "kept"
    assert row.heatmap_ref is None
    _assert_clean(db, sources)
