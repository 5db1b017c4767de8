"""DICOM DX ('for presentation') export with a made-up but realistic patient identity.

Real hospital exports carry names, IDs and dates; the files written here do too, so that the
de-identification step downstream is exercised on something that looks like the real thing.
Every name is drawn from lists of obviously fictional placeholders.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from common.synth.profiles import SiteProfile
from common.synth.render import SynthImage

FAMILY_NAMES = ("DOE", "ROE", "SAMPLE", "EXAMPLE", "PHANTOM", "TESTPATIENT", "PLACEHOLDER", "NOBODY")
GIVEN_NAMES = {"F": ("JANE", "JOANNA", "ALICE", "MARY"), "M": ("JOHN", "RICHARD", "BOB", "JACK")}
PHYSICIANS = ("WHO^DOCTOR", "STRANGELOVE^DOCTOR", "DOLITTLE^DOCTOR", "ZHIVAGO^DOCTOR")
MANUFACTURER = "fracfl synthetic"
BODY_PART_DICOM = {
    "hand": ("HAND", "PA", 55),
    "forearm": ("FOREARM", "AP", 60),
    "lower_leg": ("LEG", "AP", 65),
    "femur": ("FEMUR", "AP", 75),
}
"""Body part -> (BodyPartExamined, ViewPosition, typical kVp)."""


@dataclass(frozen=True)
class PatientIdentity:
    """The fictional patient and visit written into a DICOM header."""

    name: str
    patient_id: str
    birth_date: str
    sex: str
    accession: str
    referring_physician: str
    study_date: str
    study_time: str


def fictional_identity(rng: np.random.Generator, age_years: int) -> PatientIdentity:
    """Draw a made-up patient of the given age and a study date in 2021-2024."""
    sex = "F" if rng.random() < 0.5 else "M"
    name = f"{rng.choice(FAMILY_NAMES)}^{rng.choice(GIVEN_NAMES[sex])}"
    study = dt.date(2021, 1, 1) + dt.timedelta(days=int(rng.integers(0, 4 * 365)))
    birth = study - dt.timedelta(days=int(age_years * 365.25 + rng.integers(0, 365)))
    seconds = int(rng.integers(7 * 3600, 22 * 3600))
    return PatientIdentity(
        name=name,
        patient_id=f"PID{rng.integers(0, 10**7):07d}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=sex,
        accession=f"ACC{rng.integers(0, 10**8):08d}",
        referring_physician=str(rng.choice(PHYSICIANS)),
        study_date=study.strftime("%Y%m%d"),
        study_time=f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
    )


def write_dicom(path: Path, image: SynthImage, profile: SiteProfile, identity: PatientIdentity, uid_key: str) -> None:
    """Write the detector image as a DX For Presentation file; `uid_key` makes the UIDs reproducible."""
    top = 2**profile.bit_depth - 1
    inverted = profile.photometric == "MONOCHROME1"
    pixels = (top - image.detector) if inverted else image.detector
    center, width = image.window
    body_part, view, kvp = BODY_PART_DICOM[image.body_part]
    study_uid, series_uid, sop_uid = (
        generate_uid(entropy_srcs=[uid_key, part]) for part in ("study", "series", "instance")
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    # Patient and visit (fictional).
    ds.PatientName = identity.name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = identity.birth_date
    ds.PatientSex = identity.sex
    ds.PatientAge = f"{image.age_years:03d}Y"
    ds.PatientIdentityRemoved = "NO"
    ds.AccessionNumber = identity.accession
    ds.ReferringPhysicianName = identity.referring_physician
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = identity.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = identity.study_time
    ds.StudyID = "1"
    ds.StudyDescription = f"XR {body_part} {image.laterality}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    # Equipment and acquisition.
    ds.Modality = "DX"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "procedural phantom"
    ds.InstitutionName = profile.name
    ds.KVP = kvp
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view
    ds.ImageLaterality = image.laterality
    ds.BurnedInAnnotation = "YES"
    ds.PixelSpacing = [image.pixel_spacing_mm, image.pixel_spacing_mm]
    ds.ImagerPixelSpacing = [image.pixel_spacing_mm, image.pixel_spacing_mm]
    # Pixels: the log detector signal at the site's bit depth.
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = profile.photometric
    ds.Rows, ds.Columns = image.detector.shape
    ds.BitsAllocated = 16
    ds.BitsStored = profile.bit_depth
    ds.HighBit = profile.bit_depth - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1 if inverted else -1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = round(top - center if inverted else center, 1)
    ds.WindowWidth = round(width, 1)
    ds.PresentationLUTShape = "INVERSE" if inverted else "IDENTITY"
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
