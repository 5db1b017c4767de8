"""The site DICOM pipeline end to end on a tiny model: results a PACS shows, quarantine, kept copies, predict CLI."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from contextlib import redirect_stdout
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_files import PATIENT_NAME, PHYSICIAN_NAME, raw_dataset, small_cr, without_patient_identity
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate

from client.dicom import DicomPipeline
from client.dicom.quarantine import REASON_SUFFIX
from client.dicom.results import UNPAIRED_BODY_PARTS
from client.inference.predict import summary_line
from common.cli import main
from common.config import EvalConfig
from common.synth import generate_dataset, get_profile

DCIODVFY = Path("/usr/bin/dciodvfy")  # dicom3tools (Debian package), installed by .ci/run

CFG = EvalConfig(conf=0.01, max_det=3)  # an untrained model scores low: a low operating point still yields boxes


@pytest.fixture(scope="module")
def synth_dicom(tmp_path_factory) -> Path:
    """Synthetic DX: general_hospital writes MONOCHROME2, trauma_center MONOCHROME1."""
    out = tmp_path_factory.mktemp("synth") / "sites"
    generate_dataset(
        out,
        [get_profile("general_hospital"), get_profile("trauma_center")],
        images_per_site=2,
        size=128,
        dicom=True,
        progress=False,
    )
    return out


@pytest.fixture(scope="module")
def pipeline(tiny_weights, tmp_path_factory) -> DicomPipeline:
    """One loaded pipeline for the tests that need no special options (loading a model costs seconds here)."""
    root = tmp_path_factory.mktemp("pipeline")
    return DicomPipeline(tiny_weights, root / "out", root / "quarantine", eval_cfg=CFG)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _referenced_uids(ds) -> set[str]:
    """Every ReferencedSOPInstanceUID anywhere in a dataset."""
    found = set()
    for elem in ds.iterall():
        if elem.keyword == "ReferencedSOPInstanceUID":
            found.add(str(elem.value))
    return found


def _sources(synth_dicom: Path, tmp_path: Path) -> list[Path]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    files = [next((synth_dicom / s / "dicom").glob("*.dcm")) for s in ("general_hospital", "trauma_center")]
    files.append(Path(get_testdata_file("RG3_UNCR.dcm")))  # real CR, MONOCHROME1, 10-bit
    return [Path(shutil.copy(f, inbox / f.name)) for f in files]


def test_results_validate_and_reference_the_source(pipeline, synth_dicom, tmp_path):
    for src in _sources(synth_dicom, tmp_path):
        before = _sha(src)
        result = pipeline.process(src)
        assert result.ok and result.quarantined is None, result.problem
        assert _sha(src) == before  # the original is never modified
        source = pydicom.dcmread(src)
        uid = str(source.SOPInstanceUID)
        gsps, sr_file, sc = (pydicom.dcmread(p) for p in result.outputs)
        findings = result.prediction.findings()
        assert findings, "operating point chosen so the tiny model reports boxes"

        assert gsps.SOPClassUID == pydicom.uid.GrayscaleSoftcopyPresentationStateStorage
        assert uid in _referenced_uids(gsps)
        expected = "INVERSE" if source.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY"
        assert gsps.PresentationLUTShape == expected
        objects = gsps.GraphicAnnotationSequence[0].GraphicObjectSequence
        assert len(objects) == len(findings) and objects[0].GraphicType == "POLYLINE"
        x1, y1, x2, y2 = findings[0]["box"]
        np.testing.assert_allclose(
            np.asarray(objects[0].GraphicData, float).reshape(-1, 2)[:3], [[x1, y1], [x2, y1], [x2, y2]], atol=0.01
        )
        assert result.model_version in gsps.SeriesDescription and gsps.SoftwareVersions == result.model_version

        sr = hd.sr.srread(io.BytesIO(result.outputs[1].read_bytes()))
        groups = sr.content.get_planar_roi_measurement_groups()
        assert len(groups) == len(findings)
        assert groups[0].finding_type.value == "125605004"
        assert [m.name.meaning for m in groups[0].get_measurements()][0] == "Detection score"
        assert groups[0].get_measurements()[0].value == pytest.approx(findings[0]["score"], abs=1e-4)
        assert uid in _referenced_uids(sr_file) and result.model_version in sr_file.SeriesDescription
        if source.get("PixelSpacing"):  # box size in mm needs the spacing
            assert {"Width", "Height"} <= {m.name.meaning for m in groups[0].get_measurements()}

        assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert sc.PhotometricInterpretation == "RGB" and (sc.Rows, sc.Columns) == (source.Rows, source.Columns)
        assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.BurnedInAnnotation == "YES"
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert result.model_version in sc.SeriesDescription
        assert (
            len({gsps.SeriesInstanceUID, sr_file.SeriesInstanceUID, sc.SeriesInstanceUID, source.SeriesInstanceUID})
            == 4
        )

        summary = json.loads((result.outputs[0].parent / "result.json").read_text())
        assert summary["model_version"] == result.model_version and summary["findings"] == findings
        heat = result.outputs[0].parent / "image.heatmap.png"
        assert heat.is_file() and (result.outputs[0].parent / "image.annotated.png").is_file()


def test_same_input_same_result_uids(pipeline, synth_dicom, tmp_path):
    src = _sources(synth_dicom, tmp_path)[0]
    first = [pydicom.dcmread(p).SOPInstanceUID for p in pipeline.process(src).outputs]
    again = [pydicom.dcmread(p).SOPInstanceUID for p in pipeline.process(src).outputs]
    assert first == again  # a re-sent result replaces its copy in the PACS instead of duplicating it


def _bad_inputs(folder: Path) -> dict[str, str]:
    """One file per kind of bad input, each made to pass every earlier check; file name -> expected reason."""
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    (folder / "report.dcm").write_bytes(Path(get_testdata_file("test-SR.dcm")).read_bytes())
    shutil.copy(get_testdata_file("SC_rgb.dcm"), folder / "colour.dcm")
    for name, source in (("multi.dcm", "emri_small.dcm"), ("truncated.dcm", "MR_truncated.dcm")):
        ds = pydicom.dcmread(get_testdata_file(source))
        ds.Modality = "CR"  # past the modality check, so the real defect is what is reported
        ds.save_as(folder / name)
    ds = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    del ds.PixelData
    ds.save_as(folder / "nopixels.dcm")
    ds = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2: no decoder
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" * 4])
    ds.save_as(folder / "mpeg.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    ds = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    ds.Rows = ds.Rows // 2  # the header's size no longer matches the pixel data
    ds.save_as(folder / "halved.dcm")
    ds = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    del ds.SeriesInstanceUID  # results could not reference it
    ds.save_as(folder / "noseries.dcm")
    (folder / "photo.dcm").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))  # a PNG renamed .dcm
    return {
        "notes.txt": "not_dicom",
        "report.dcm": "non_image",
        "colour.dcm": "colour",
        "multi.dcm": "multi_frame",
        "truncated.dcm": "truncated_pixel_data",
        "nopixels.dcm": "no_pixel_data",
        "mpeg.dcm": "unsupported_codec",
        "ct.dcm": "unsupported_modality",
        "halved.dcm": "dimension_mismatch",
        "noseries.dcm": "bad_header",
        "photo.dcm": "not_dicom",
    }


def test_bad_input_quarantined_with_reason(pipeline, tmp_path):
    expected = _bad_inputs(tmp_path / "inbox")
    for name, reason in expected.items():
        result = pipeline.process(tmp_path / "inbox" / name)  # never raises
        assert not result.ok and result.reason == reason, (name, result.reason, result.problem)
        assert result.outputs == [] and not (tmp_path / "inbox" / name).exists()
        assert result.quarantined.parent == pipeline.quarantine_dir / reason and result.quarantined.is_file()
        why = json.loads(result.quarantined.with_name(result.quarantined.name + REASON_SUFFIX).read_text())
        assert why["reason"] == reason and why["problem"] == result.problem and why["original_name"] == name


def test_results_for_images_without_patient_identity(pipeline, tmp_path):
    """Older and third-party files omit PatientID and other optional patient/study attributes: results are made
    anyway, with what is present copied and the Type 2 attributes empty. A raw dataset (no preamble) works too."""
    source = without_patient_identity(tmp_path / "noid.dcm")
    result = pipeline.process(source)
    assert result.ok and len(result.outputs) == 3, (result.reason, result.problem)
    for path in result.outputs:
        ds = pydicom.dcmread(path)
        assert ds.PatientID == "" and ds.PatientBirthDate in ("", None) and ds.AccessionNumber in ("", None)
        assert ds.PatientName == PATIENT_NAME and ds.StudyID in ("", None)
        if ds.SOPClassUID != pydicom.uid.Comprehensive3DSRStorage:
            assert ds.ReferringPhysicianName == PHYSICIAN_NAME
            assert ds.BodyPartExamined == "EXTREMITY" and ds.Laterality == ""  # paired body part, side unknown
    raw = pipeline.process(raw_dataset(tmp_path / "raw"))
    assert raw.ok and len(raw.outputs) == 3, (raw.reason, raw.problem)


def test_gsps_and_sc_copy_laterality(pipeline, tmp_path):
    ds = small_cr()  # RG3: Laterality R, BodyPartExamined EXTREMITY
    del ds.Laterality
    ds.ImageLaterality = "L"
    ds.save_as(tmp_path / "left.dcm")
    gsps, sr, sc = (pydicom.dcmread(p) for p in pipeline.process(tmp_path / "left.dcm").outputs)
    assert gsps.Laterality == sc.Laterality == "L" and "Laterality" not in sr
    ds.BodyPartExamined, ds.ImageLaterality = "CHEST", "U"
    assert "CHEST" in UNPAIRED_BODY_PARTS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "chest.dcm")
    gsps, _, sc = (pydicom.dcmread(p) for p in pipeline.process(tmp_path / "chest.dcm").outputs)
    assert "Laterality" not in gsps and "Laterality" not in sc  # unpaired: the attribute must be absent


@pytest.mark.skipif(not DCIODVFY.is_file(), reason="dciodvfy not installed (apt-get install dicom3tools)")
def test_every_result_type_passes_dciodvfy(pipeline, tmp_path):
    """dicom3tools' IOD validator on GSPS, SR and SC, for a complete source and one without patient identity: any
    'Error' line (a missing or malformed attribute in any IOD) fails."""
    src = tmp_path / "rg3.dcm"
    small_cr().save_as(src)  # RG3's header (Laterality R, a full CR header), smaller pixels
    results = [pipeline.process(src), pipeline.process(without_patient_identity(tmp_path / "noid.dcm"))]
    checked = set()
    for result in results:
        assert result.ok, result.problem
        for path in result.outputs:
            done = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=60)
            errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
            assert not errors, f"{path.name}: {errors}"
            checked.add(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID.name)
    assert len(checked) == 3, checked


def test_kept_copy_is_deidentified_and_burned_in_respected(tiny_weights, synth_dicom, tmp_path):
    src = _sources(synth_dicom, tmp_path)[0]
    name = str(pydicom.dcmread(src).PatientName)
    refusing = DicomPipeline(
        tiny_weights, tmp_path / "out", tmp_path / "q", eval_cfg=CFG, heatmap=False, keep_dir=tmp_path / "keep"
    )
    result = refusing.process(src)  # synthetic DX are flagged BurnedInAnnotation=YES
    assert result.ok and result.kept is None and any("BurnedInAnnotation" in n for n in result.notes)
    accepting = DicomPipeline(
        tiny_weights,
        tmp_path / "out",
        tmp_path / "q",
        eval_cfg=CFG,
        heatmap=False,
        keep_dir=tmp_path / "keep",
        burned_in="accept",
    )
    kept = accepting.process(src).kept
    assert kept is not None and name.encode() not in kept.read_bytes()
    assert pydicom.dcmread(kept).PatientIdentityRemoved == "YES"
    assert (tmp_path / "deid" / "site_secret.key").is_file()  # default keys folder beside the keep folder


def test_predict_cli_png_and_dicom_folder(tiny_weights, synth_dicom, tmp_path):
    out = tmp_path / "pred"
    png_dir = synth_dicom / "general_hospital" / "images"
    dicom_dir = synth_dicom / "trauma_center" / "dicom"
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(
            [
                "predict",
                str(png_dir),
                str(dicom_dir),
                str(tmp_path / "broken.png"),
                "--model",
                str(tiny_weights),
                "--out",
                str(out),
                "--json",
                "--conf",
                "0.01",
                "--dicom-results",
            ]
        )
    records = json.loads(buf.getvalue())
    assert code == 1  # one file was skipped
    assert len(records) == 2 + 2 + 1
    bad = records[-1]
    assert not bad["ok"] and bad["reason"] == "unreadable_image" and "broken.png" in bad["file"]
    for r in records[:-1]:
        assert r["ok"] and {"probability", "positive", "operating_point", "findings", "model_version"} <= set(r)
        assert r["positive"] == (r["probability"] >= 0.01) and r["operating_point"] == 0.01
        assert all({"box", "score", "class_id", "class_name"} <= set(f) for f in r["findings"])
        assert Path(r["annotated"]).is_file() and Path(r["heatmap_png"]).is_file()
    dicom_records = [r for r in records if r["file"].endswith(".dcm")]
    assert len(dicom_records) == 2 and all(len(r["dicom_results"]) == 3 for r in dicom_records)
    assert dicom_records[0]["pixel_spacing_mm"] is not None
    assert json.loads((out / "predictions.json").read_text())["images"] == records
    # People get one line per image (what the command prints without --json).
    lines = [summary_line(r) for r in records]
    assert lines[0].startswith(records[0]["file"] + ": ") and f"p={records[0]['probability']:.2f}" in lines[0]
    assert (
        lines[-1].endswith("cannot decode image (not a recognised image format)")
        or "skipped (unreadable_image)" in lines[-1]
    )


def test_heatmap_matches_image(tiny_weights, synth_dicom):
    from client.inference.explain import gradcam
    from common.data.images import read_image
    from common.inference import load_backend

    image = read_image(next((synth_dicom / "general_hospital" / "images").rglob("*.png")))
    image = np.ascontiguousarray(image[:, 16:])  # not square: the letterbox padding must be cut away again
    heat = gradcam(load_backend(tiny_weights), image, conf=0.01)
    assert heat.shape == image.shape and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0) and heat.std() > 0
