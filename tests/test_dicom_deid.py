"""De-identification: PS3.15 Basic Profile actions, consistent keyed pseudonyms, linking table, burned-in flag."""

from __future__ import annotations

import stat

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import DicomDictionary, RepeatersDictionary, dictionary_keyword, dictionary_VR, keyword_dict
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from client.dicom.deid import BurnedInAnnotation, Deidentifier, SiteKeys
from client.dicom.deid_profile import BASIC_PROFILE, standard_action
from client.dicom.deid_table import TABLE_E1_1, TABLE_E1_1_MASKED

PHI = {
    "PatientName": "DOE^JANE",
    "PatientID": "PID0012345",
    "PatientBirthDate": "19610203",
    "PatientSex": "F",
    "PatientAge": "062Y",
    "PatientAddress": "1 Example Street",
    "OtherPatientIDs": "OTHER99",
    "AccessionNumber": "ACC77777777",
    "ReferringPhysicianName": "WHO^DOCTOR",
    "PerformingPhysicianName": "STRANGE^DOC",
    "OperatorsName": "OPERATOR^ONE",
    "InstitutionName": "Example General",
    "InstitutionAddress": "2 Example Road",
    "StationName": "XRAY-ROOM-3",
    "DeviceSerialNumber": "SN-424242",
    "StudyDate": "20230405",
    "StudyTime": "101112",
    "AcquisitionDate": "20230405",
    "StudyID": "STUDY5",
    "StudyDescription": "XR HAND DOE",
    "ImageComments": "patient DOE fell",
    "RequestingPhysician": "REQ^DOC",
}


def _dataset() -> Dataset:
    ds = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    for k, v in PHI.items():
        setattr(ds, k, v)
    ds.add_new(0x00091010, "LO", "private PHI DOE")  # private tag
    ds.add_new(0x00091001, "LO", "private creator")
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = "1.2.3.4.5.6"
    item.PersonName = "NESTED^PERSON"
    ds.ReferencedImageSequence = Sequence([item])
    ds.add_new(0x00400275, "SQ", Sequence([Dataset()]))  # RequestAttributesSequence
    ds.BurnedInAnnotation = "NO"
    return ds


def test_profile_keywords_exist():
    known = set(keyword_dict) | {v[4] for v in RepeatersDictionary.values()}  # repeating groups: overlays (60xx)
    unknown = [k for k in BASIC_PROFILE if k not in known]
    assert not unknown, f"not DICOM keywords: {unknown}"


def test_every_phi_attribute_removed_or_replaced(tmp_path):
    ds = _dataset()
    out = Deidentifier(SiteKeys(tmp_path / "keys"))(ds)
    text = str(out)
    for keyword, value in PHI.items():
        assert len(value) < 5 or value not in text, f"{keyword} survived"
        assert keyword not in out or out.get(keyword) in ("", None) or keyword in ("PatientName", "PatientID")
    assert "DOE" not in text
    assert str(out.PatientName).startswith("ANON-") and out.PatientID == str(out.PatientName)
    assert not any(e.tag.is_private for e in out)
    assert "ReferencedImageSequence" not in out and "RequestAttributesSequence" not in out
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    # What a model needs is kept.
    assert out.PixelData == ds.PixelData and out.PhotometricInterpretation == "MONOCHROME1"
    assert out.Modality == "CR" and out.BitsStored == 10
    # The original object is untouched.
    assert ds.PatientName == "DOE^JANE" and ds[0x00091010].value == "private PHI DOE"


def test_safety_nets_for_unlisted_attributes(tmp_path):
    ds = _dataset()
    ds.ReferencedImageSequence[0].PersonName = "NESTED^PERSON"
    ds.add_new(0x00181204, "DA", "20230405")  # DateOfLastCalibration: a date the table does not list
    ds.add_new(0x00181030, "LO", "fine")  # ProtocolName: listed (X)
    ds.add_new(0x60003000, "OW", b"\x01\x00" * 8)  # OverlayData of a repeating group: may hold burned-in text
    ds.add_new(0x60004000, "LT", "DOE overlay")
    out = Deidentifier(SiteKeys(tmp_path / "keys"))(ds)
    assert "DateOfLastCalibration" not in out and "ProtocolName" not in out
    assert 0x60003000 not in out and 0x60004000 not in out
    assert out.SOPClassUID == ds.SOPClassUID  # class UIDs are kept: they name the kind of object, not a person


def test_pseudonymous_uids_consistent_per_site_and_different_across_sites(tmp_path):
    ds = _dataset()
    site_a = Deidentifier(SiteKeys(tmp_path / "a"))
    first, again = site_a(ds), Deidentifier(SiteKeys(tmp_path / "a"))(ds)  # reopened: same secret from disk
    other = Deidentifier(SiteKeys(tmp_path / "b"))(ds)
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID"):
        assert first.get(kw) == again.get(kw) != ds.get(kw)
        assert other.get(kw) != first.get(kw)
    assert first.SOPInstanceUID.startswith("2.25.") and len(first.SOPInstanceUID) <= 64
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert pydicom.uid.UID(first.StudyInstanceUID).is_valid


def test_linking_table_maps_back_and_files_are_private(tmp_path):
    keys = SiteKeys(tmp_path / "keys")
    ds = _dataset()
    out = Deidentifier(keys)(ds)
    assert keys.original(out.SOPInstanceUID) == ("SOPInstanceUID", ds.SOPInstanceUID)
    assert keys.original(out.StudyInstanceUID) == ("StudyInstanceUID", ds.StudyInstanceUID)
    assert keys.original(out.PatientID) == ("PatientID", "PID0012345")
    for name in ("site_secret.key", "links.sqlite"):
        assert stat.S_IMODE((tmp_path / "keys" / name).stat().st_mode) == 0o600


def test_burned_in_annotation_respected(tmp_path):
    ds = _dataset()
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotation):
        Deidentifier(SiteKeys(tmp_path / "keys"))(ds)
    out = Deidentifier(SiteKeys(tmp_path / "keys"), burned_in="accept")(ds)
    assert out.BurnedInAnnotation == "YES"  # the flag stays: whoever reads the copy still knows


def test_damaged_secret_is_refused(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "site_secret.key").write_text("short\n")
    with pytest.raises(Exception, match="site secret is damaged"):
        SiteKeys(tmp_path / "keys")


def test_basic_profile_choices_never_weaker_than_table_e1_1():
    """fracfl's explicit choices (BASIC_PROFILE) against the whole of PS3.15 Table E.1-1: removal where the
    standard removes, a pseudonym or removal where it replaces UIDs, never 'keep' for anything the table lists."""
    allowed = {"X": {"X"}, "U": {"U", "X"}, "Z": {"Z", "X"}, "D": {"D", "Z", "X"}}
    checked = 0
    for tag, action in TABLE_E1_1.items():
        keyword = dictionary_keyword(tag) if tag in DicomDictionary else ""
        ours = BASIC_PROFILE.get(keyword) or standard_action(tag, dictionary_VR(tag) if keyword else "UN")
        if keyword == "PatientName":  # Z in the table; the keyed patient pseudonym instead, by design (docs/dicom.md)
            assert ours == "D" and action == "Z"
            continue
        assert ours in allowed.get(action, {"X", "Z", "D", "U"}), (keyword or hex(tag), action, ours)
        checked += 1
    assert checked > 600 and len(TABLE_E1_1_MASKED) == 3


def test_attributes_the_short_table_missed_are_now_handled(tmp_path):
    """Attributes of Table E.1-1 that fracfl's own table did not list and no safety net caught (they were kept)."""
    ds = _dataset()
    extra = {
        "TimezoneOffsetFromUTC": "+0100",
        "PatientTelecomInformation": "+44 20 7946 0000",
        "InsurancePlanIdentification": "PLAN-778899",
        "ClinicalTrialSubjectID": "SUBJ-445566",
        "AcquisitionComments": "patient DOE moved",
        "ReasonForVisit": "fall from ladder DOE",
        "StudyIDIssuer": "Example General",
        "IssuerOfAdmissionID": "ADM-ISSUER-9",
        "CurrentPatientLocation": "WARD 7",
    }
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    ds.GPSLatitude = "51.5072"
    out = Deidentifier(SiteKeys(tmp_path / "keys"))(ds)
    for keyword in (
        "TimezoneOffsetFromUTC",
        "PatientTelecomInformation",
        "InsurancePlanIdentification",
        "AcquisitionComments",
        "ReasonForVisit",
        "StudyIDIssuer",
        "IssuerOfAdmissionID",
        "CurrentPatientLocation",
        "GPSLatitude",
    ):
        assert keyword not in out, keyword
    assert out.ClinicalTrialSubjectID == "ANONYMOUS"  # D: a dummy value
    text = str(out)
    assert not any(v in text for v in extra.values()) and "DOE" not in text
    assert out.PixelData == ds.PixelData and out.Modality == "CR"  # what a model needs is still there
