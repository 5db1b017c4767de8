"""Results a PACS viewer shows, made with highdicom: presentation state (boxes), TID 1500 SR, secondary capture.

Each object references the source image's SOP Instance UID, carries the model version (SeriesDescription,
SoftwareVersions, and in the SR the algorithm identification) and gets a UID derived from the source UID, the model
version and the object kind: processing the same image twice with the same model yields the same UIDs, so a
re-sent result replaces the earlier copy in the PACS instead of duplicating it. The source is never modified.

Older and third-party images often omit optional patient and study attributes (PatientID, birth date, sex,
StudyID, accession number, referring physician) or hold values highdicom refuses (a sex of 'male', a date of
'1961'). highdicom reads them from the source, so every object is built from `reference_dataset(source)`: the
source's header with those Type 2 attributes copied when valid and present but empty otherwise, as PS3.3 allows.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, TM

from common.inference.predictor import Prediction

# highdicom logs source UIDs at INFO level: keep identifiers out of the site's logs.
logging.getLogger("highdicom").setLevel(logging.WARNING)

FRACTURE = hd.sr.CodedConcept("125605004", "SCT", "Fracture of bone")
RADIOGRAPHY = hd.sr.CodedConcept("363680008", "SCT", "Radiographic imaging procedure")
# Detector outputs have no standard concept: a private coding scheme (designators starting '99' are reserved for it).
SCORE = hd.sr.CodedConcept("SCORE", "99FRACFL", "Detection score")
PROBABILITY = hd.sr.CodedConcept("PROB", "99FRACFL", "Image-level fracture probability")
VERDICT = hd.sr.CodedConcept("VERDICT", "99FRACFL", "Fracture at operating point")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
WIDTH = hd.sr.CodedConcept("103355008", "SCT", "Width")
HEIGHT = hd.sr.CodedConcept("121207", "DCM", "Height")
MANUFACTURER = "fracfl"
SERIES_NUMBERS = {"gsps": 9001, "sr": 9002, "sc": 9003}  # high, fixed numbers keep fracfl's series apart in the viewer


# Type 2 patient/study attributes highdicom copies from the source into every result (PS3.3 C.7.1.1, C.7.2.1).
TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
)
_SEXES = frozenset({"M", "F", "O"})


def reference_dataset(source: Dataset) -> Dataset:
    """The source's header (no pixel data) with every TYPE2_COPIED attribute present: copied when the source has a
    valid value, empty otherwise. Results are built from this, so a missing PatientID never loses them."""
    ref = Dataset()
    for elem in source:
        if elem.keyword != "PixelData":
            ref.add(elem)
    ref.file_meta = source.file_meta if hasattr(source, "file_meta") else Dataset()
    for keyword in TYPE2_COPIED:
        setattr(ref, keyword, _valid_or_empty(keyword, source.get(keyword)))
    return ref


def _valid_or_empty(keyword: str, value: object) -> object:
    """A value highdicom and the standard accept for `keyword`, else '' (never raises: a bad date is no reason to
    withhold the findings)."""
    if value is None or str(value).strip() == "":
        return ""
    try:
        if keyword == "PatientSex":
            return str(value).strip().upper() if str(value).strip().upper() in _SEXES else ""
        if keyword in ("PatientBirthDate", "StudyDate"):
            DA(str(value))
        elif keyword == "StudyTime":
            TM(str(value))
    except (TypeError, ValueError):
        return ""
    return value


# BodyPartExamined defined terms of unpaired structures (PS3.16 Annex L), as dciodvfy checks them: for these the
# General Series Laterality must be absent; for any other (or no) body part it is present, empty when unknown.
UNPAIRED_BODY_PARTS = frozenset(
    {
        "ABDOMEN",
        "ABDOMENPELVIS",
        "CHEST",
        "CHESTABDOMEN",
        "COCCYX",
        "CSPINE",
        "FACE",
        "HEAD",
        "HEADNECK",
        "HEART",
        "JAW",
        "LSPINE",
        "LSSPINE",
        "NECK",
        "NOSE",
        "PELVIS",
        "SKULL",
        "SPINE",
        "SSPINE",
        "STERNUM",
        "TLSPINE",
        "TSPINE",
        "WHOLEBODY",
    }
)


def laterality(source: Dataset) -> str | None:
    """General Series Laterality (Type 2C) of the GSPS and SC: R or L from the source's Laterality, else from its
    ImageLaterality; '' (unknown) when it states neither and the body part may be paired; None (omit the
    attribute) for an unpaired body part."""
    for keyword in ("Laterality", "ImageLaterality"):
        value = str(source.get(keyword, "") or "").strip().upper()
        if value in ("R", "L"):
            return value
    body_part = str(source.get("BodyPartExamined", "") or "").strip().upper()
    return None if body_part in UNPAIRED_BODY_PARTS else ""


def _copy_series_anatomy(source: Dataset, result: Dataset) -> None:
    """Body part and laterality of the source on a GSPS or SC (both have the General Series module)."""
    if str(source.get("BodyPartExamined", "") or "").strip():
        result.BodyPartExamined = source.BodyPartExamined
    side = laterality(source)
    if side is not None:
        result.Laterality = side


def result_uid(source: Dataset, model_version: str, kind: str, part: str = "instance") -> str:
    """Deterministic UID for the `kind` object made from `source` by `model_version`."""
    return generate_uid(entropy_srcs=[str(source.SOPInstanceUID), model_version, kind, part])


def _series_description(kind: str, model_version: str) -> str:
    return f"fracfl {kind} ({model_version})"[:64]


def presentation_state(source: Dataset, prediction: Prediction, model_version: str) -> Dataset:
    """GSPS drawing each finding's box and 'type score' label; INVERSE presentation LUT for MONOCHROME1 sources."""
    source = reference_dataset(source)
    layer = hd.pr.GraphicLayer(layer_name="FRACFL", order=1, description="fracfl findings")
    graphics, texts = [], []
    for i, f in enumerate(prediction.findings(), 1):
        x1, y1, x2, y2 = f["box"]
        outline = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float32)
        graphics.append(
            hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                graphic_data=outline,
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                tracking_id=f"finding {i}",
                tracking_uid=result_uid(source, model_version, "gsps", f"finding {i}"),
            )
        )
        texts.append(
            hd.pr.TextObject(
                text_value=f"{f['class_name']} {f['score']:.2f}",
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                anchor_point=(max(float(x1), 1.0), max(float(y1), 1.0)),
                anchor_point_visible=False,
            )
        )
    annotations = (
        [
            hd.pr.GraphicAnnotation(
                referenced_images=[source], graphic_layer=layer, graphic_objects=graphics, text_objects=texts
            )
        ]
        if graphics
        else []
    )
    inverse = str(source.PhotometricInterpretation).upper() == "MONOCHROME1"
    shape = hd.PresentationLUTShapeValues.INVERSE if inverse else hd.PresentationLUTShapeValues.IDENTITY
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[source],
        series_instance_uid=result_uid(source, model_version, "gsps", "series"),
        series_number=SERIES_NUMBERS["gsps"],
        sop_instance_uid=result_uid(source, model_version, "gsps"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="fracfl fracture detector",
        software_versions=model_version[:64],
        device_serial_number="0",
        content_label="FRACFL",
        content_description=f"fracfl findings, model {model_version}"[:64],
        graphic_annotations=annotations,
        graphic_layers=[layer] if annotations else None,
        content_creator_name="FRACFL^MODEL",
        presentation_lut_transformation=hd.PresentationLUTTransformation(presentation_lut_shape=shape),
    )
    gsps.SeriesDescription = _series_description("findings", model_version)
    _copy_series_anatomy(source, gsps)
    return gsps


def measurement_report(
    source: Dataset, prediction: Prediction, model_version: str, pixel_spacing_mm: tuple[float, float] | None = None
) -> hd.sr.Comprehensive3DSR:
    """TID 1500 report: one planar ROI group per finding (fracture code, box as POLYLINE on the source image,
    score, width/height in mm when the spacing is known) plus the image-level probability and verdict."""
    source = reference_dataset(source)
    algorithm = hd.sr.AlgorithmIdentification(name="fracfl", version=model_version[:64])
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["fracfl-device", model_version]), name="fracfl", model_name=model_version[:64]
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    groups: list = []
    for i, f in enumerate(prediction.findings(), 1):
        x1, y1, x2, y2 = f["box"]
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float32),
            source_image=hd.sr.SourceImageForRegion.from_source_image(source),
        )
        measurements = [hd.sr.Measurement(name=SCORE, value=float(f["score"]), unit=NO_UNITS, algorithm_id=algorithm)]
        if pixel_spacing_mm is not None:
            row_mm, col_mm = pixel_spacing_mm
            measurements += [
                hd.sr.Measurement(name=WIDTH, value=round((x2 - x1) * col_mm, 2), unit=codes.UCUM.Millimeter),
                hd.sr.Measurement(name=HEIGHT, value=round((y2 - y1) * row_mm, 2), unit=codes.UCUM.Millimeter),
            ]
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    identifier=f"fracture {i}", uid=result_uid(source, model_version, "sr", f"finding {i}")
                ),
                referenced_region=region,
                finding_type=FRACTURE,
                algorithm_id=algorithm,
                measurements=measurements,
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(
                        name=hd.sr.CodedConcept("TYPE", "99FRACFL", "Fracture type"),
                        value=hd.sr.CodedConcept(f"C{f['class_id']}", "99FRACFL", str(f["class_name"])[:64]),
                    )
                ],
            )
        )
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                identifier="image", uid=result_uid(source, model_version, "sr", "image")
            ),
            finding_type=FRACTURE,
            algorithm_id=algorithm,
            measurements=[
                hd.sr.Measurement(
                    name=PROBABILITY, value=round(prediction.probability, 4), unit=NO_UNITS, algorithm_id=algorithm
                )
            ],
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(
                    name=VERDICT, value=codes.SCT.Present if prediction.positive else codes.SCT.Absent
                )
            ],
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=RADIOGRAPHY, imaging_measurements=groups
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source],
        content=report,
        series_instance_uid=result_uid(source, model_version, "sr", "series"),
        series_number=SERIES_NUMBERS["sr"],
        sop_instance_uid=result_uid(source, model_version, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    sr.SeriesDescription = _series_description("report", model_version)
    sr.SoftwareVersions = model_version[:64]
    return sr


def secondary_capture(source: Dataset, picture: np.ndarray, model_version: str) -> hd.sc.SCImage:
    """RGB secondary capture of the annotated picture (boxes, labels and heatmap burned in), in the source's study."""
    source = reference_dataset(source)
    orientation = tuple(source.get("PatientOrientation") or ())
    known = len(orientation) == 2 and all(orientation)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=picture,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=result_uid(source, model_version, "sc", "series"),
        series_number=SERIES_NUMBERS["sc"],
        sop_instance_uid=result_uid(source, model_version, "sc"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        # highdicom insists on an orientation; when the source has none, a placeholder is emptied below (Type 2).
        patient_orientation=orientation if known else ("L", "F"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    if not known:
        sc.PatientOrientation = ""  # never invent an orientation the source did not state
    sc.SeriesDescription = _series_description("annotated", model_version)
    sc.SoftwareVersions = model_version[:64]
    sc.BurnedInAnnotation = "YES"  # labels and boxes are in the pixels
    _copy_series_anatomy(source, sc)
    sc.DerivationDescription = f"fracfl findings and Grad-CAM heatmap over the source image, model {model_version}"[
        :1024
    ]
    ref = Dataset()  # which image this picture was derived from, as a PACS viewer links them
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return sc
