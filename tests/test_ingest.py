"""`fracfl ingest` says how its splits stand: a site folder with an empty split cannot serve a federated run."""

from __future__ import annotations

import json
import shutil

import pydicom
import pytest
import yaml
from dicom_files import PATIENT_NAME, names_in, small_cr, without_patient_identity

from client.continual.holdout import holdout_salt, in_holdout
from client.dicom.deid import SiteKeys
from common.cli import main
from common.data.spec import load_spec
from common.privacy.patients import PATIENTS_FILE, read_patients
from common.synth import generate_dataset, get_profile
from common.utils.staged import recover, staged_folder

SITE = "general_hospital"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, [get_profile(SITE)], images_per_site=4, size=64, dicom=True, progress=False)
    return root / SITE


def _ingest(site, out, keys, fraction: str, labels=None, extra=()) -> int:
    """Ingest `site/dicom` (or the folder `site` itself when `labels` is given)."""
    dicom, labels = (site / "dicom", site / "labels") if labels is None else (site, labels)
    return main(
        [
            "ingest",
            str(dicom),
            "--labels",
            str(labels),
            "--out",
            str(out),
            "--keys",
            str(keys),
            "--burned-in",
            "accept",
            "--val-fraction",
            fraction,
            *extra,
        ]
    )


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


def test_each_input_on_its_own_and_images_without_patient_id_get_a_stable_pseudonym(site, tmp_path, capsys):
    """A batch with a radiograph without PatientID, a PNG named .dcm and a file whose analysis fails (a malformed
    RescaleSlope): the bad ones are reported and skipped, every good one is added, and the folder is complete."""
    inbox, labels = tmp_path / "inbox", tmp_path / "labels"
    shutil.copytree(site / "dicom", inbox)
    shutil.copytree(site / "labels", labels)
    without_patient_identity(inbox / "noid.dcm")
    (inbox / "photo.dcm").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    ds = small_cr()
    ds.add_new(0x00281053, "LO", "abc")  # RescaleSlope with a wrong VR and value: pixels decode, the LUT step fails
    ds.RescaleIntercept = "0"
    ds.save_as(inbox / "badslope.dcm")
    for name in ("noid", "photo", "badslope"):
        (labels / f"{name}.txt").write_text("0 0.5 0.5 0.2 0.2\n")

    assert _ingest(inbox, tmp_path / "data", tmp_path / "keys", "0", labels=labels) == 0
    out = capsys.readouterr().out
    assert "5 image(s) added" in out
    record = json.loads((tmp_path / "data" / "ingest.json").read_text())
    assert record["added"] == 5 and record["skipped"] == {"not_dicom": 1, "processing_error": 1}
    assert "skipped" in out and "badslope.dcm (processing_error)" in out and "photo.dcm (not_dicom)" in out
    assert (tmp_path / "data" / "data.yaml").is_file()
    assert PATIENT_NAME not in out and not names_in(out.encode())

    # The image without PatientID: its pseudonym comes from its StudyInstanceUID (stable, and in the linking table).
    study = str(pydicom.dcmread(inbox / "noid.dcm", stop_before_pixels=True).StudyInstanceUID)
    keys = SiteKeys(tmp_path / "keys")
    copies = [pydicom.dcmread(p) for p in (tmp_path / "data" / "dicom").glob("*.dcm")]
    noid = [c for c in copies if keys.original(str(c.StudyInstanceUID)) == ("StudyInstanceUID", study)]
    assert len(noid) == 1 and noid[0].PatientID == keys.patient_id(study) == noid[0].PatientName
    assert keys.original(noid[0].PatientID) == ("StudyInstanceUID", study)
    assert len({c.PatientID for c in copies}) == 5  # not lumped together with other patients
    # patients.csv names each training image's pseudonymous patient: DP-SGD's privacy unit (common/privacy/patients)
    assert read_patients(tmp_path / "data") == {str(c.SOPInstanceUID): str(c.PatientID) for c in copies}
    assert PATIENT_NAME.encode() not in (tmp_path / "data" / PATIENTS_FILE).read_bytes()


def test_the_output_folder_is_complete_or_absent(tmp_path):
    """Built beside the output and swapped in: an error leaves the old folder (or none), a crash between the two
    renames is undone at the next run."""
    out = tmp_path / "data"
    with pytest.raises(RuntimeError), staged_folder(out) as stage:
        (stage / "images").mkdir()
        (stage / "images" / "a.png").write_bytes(b"half")
        raise RuntimeError("disk full")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with staged_folder(out) as stage:
        (stage / "data.yaml").write_text("v1")
    with pytest.raises(RuntimeError), staged_folder(out) as stage:
        (stage / "new.png").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in out.iterdir()) == ["data.yaml"] and (out / "data.yaml").read_text() == "v1"
    # A crash after `out` was renamed away but before the new version took its place:
    out.rename(tmp_path / ".data.previous")
    recover(out)
    assert (out / "data.yaml").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_test_split_holds_patients_out_by_the_sites_salt_and_stays_as_it_was_split(site, tmp_path, capsys):
    out, keys = tmp_path / "data", tmp_path / "keys"
    assert _ingest(site, out, keys, "0", extra=["--test-fraction", "0.5"]) == 0
    assert "test)" in capsys.readouterr().out
    salt = holdout_salt(out, create=False)  # made at the site, kept in the folder
    patients = read_patients(out)
    split_of = {p.stem: p.parent.name for p in (out / "images").rglob("*.png")}
    assert len(split_of) == 4 and set(split_of.values()) <= {"train", "test"}
    for stem, split in split_of.items():  # by patient, under the site's salt
        assert (split == "test") == in_holdout(patients[stem], 0.5, salt)
        assert (out / "labels" / split / f"{stem}.txt").is_file()
    assert set(load_spec(out).splits) == {"train", "val", "test"}  # val is empty (share 0) but loads
    record = json.loads((out / "ingest.json").read_text())
    assert record["test_fraction"] == 0.5 and sum(record["splits"].values()) == 4

    # Without --test-fraction a later ingest keeps the folder's share and every patient's split; another share fails.
    assert _ingest(site, out, keys, "0") == 0
    assert {p.stem: p.parent.name for p in (out / "images").rglob("*.png")} == split_of
    assert holdout_salt(out, create=False) == salt
    capsys.readouterr()
    assert _ingest(site, out, keys, "0", extra=["--test-fraction", "0.2"]) != 0
    assert "--test-fraction 0.2: this folder was split with 0.5" in capsys.readouterr().err


def test_a_folder_from_before_test_splits_keeps_working(site, tmp_path, capsys):
    out, keys = tmp_path / "data", tmp_path / "keys"
    assert _ingest(site, out, keys, "0.5") == 0
    record = json.loads((out / "ingest.json").read_text())
    del record["test_fraction"]  # as ingest wrote it before the test split existed
    (out / "ingest.json").write_text(json.dumps(record))
    before = sorted(p.relative_to(out) for p in (out / "images").rglob("*.png"))
    assert _ingest(site, out, keys, "0.5") == 0
    assert sorted(p.relative_to(out) for p in (out / "images").rglob("*.png")) == before
    assert "test" not in yaml.safe_load((out / "data.yaml").read_text()) and not (out / "holdout.salt").exists()
