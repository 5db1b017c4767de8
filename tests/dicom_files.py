"""DICOM files as real sites send them, built with pydicom from pydicom-data's CR radiograph (RG3, 10-bit)."""

from __future__ import annotations

from pathlib import Path

import cv2
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import generate_uid

# Unique strings, written without the '^' separator so highdicom's person-name check quotes them in a warning.
PATIENT_NAME = "Quirinus Zabriskie-Vomacka"
PHYSICIAN_NAME = "Doctor Ottoline Fernsby-Quade"
OPTIONAL = (
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "Laterality",
    "ImageLaterality",
    "StudyDate",
    "StudyTime",
)


def small_cr(size: int = 256) -> Dataset:
    """RG3 (real CR, MONOCHROME1, 10-bit) shrunk to `size` pixels, with fresh UIDs: fast to analyse."""
    ds = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    ds.PixelData = cv2.resize(ds.pixel_array, (size, size), interpolation=cv2.INTER_AREA).tobytes()
    ds.Rows = ds.Columns = size
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def without_patient_identity(path: Path, *, names: bool = True) -> Path:
    """A valid radiograph without PatientID and the other optional patient/study attributes (as older and
    third-party files are); with `names`, its patient and referring physician carry PATIENT_NAME/PHYSICIAN_NAME."""
    ds = small_cr()
    for keyword in OPTIONAL:
        if keyword in ds:
            delattr(ds, keyword)
    if names:
        ds.PatientName, ds.ReferringPhysicianName = PATIENT_NAME, PHYSICIAN_NAME
    elif "PatientName" in ds:
        del ds.PatientName
    ds.save_as(path, enforce_file_format=True)
    return path


def raw_dataset(path: Path) -> Path:
    """The same radiograph as a raw implicit-VR dataset: no preamble, no 'DICM', no file meta (old exports)."""
    ds = small_cr()
    del ds.file_meta
    ds.preamble = None
    with open(path, "wb") as f:
        dcmwrite(f, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return path


def names_in(data: bytes) -> list[str]:
    """Which of the unique names (or their parts, or the 'given family' spellings) occur in `data`."""
    needles = {PATIENT_NAME, PHYSICIAN_NAME, "Zabriskie", "Vomacka", "Quirinus", "Ottoline", "Fernsby"}
    return sorted(n for n in needles if n.encode() in data)
