"""DICOM radiographs, shared by both sides: validation with reason codes and the grey-scale display pipeline."""

from common.dicom import redact
from common.dicom.image import DicomImage, pixel_spacing, read_dicom_image
from common.dicom.pixels import to_grey_u8
from common.dicom.read import (
    RADIOGRAPH_MODALITIES,
    REASONS,
    DicomRejected,
    check_image,
    decode_pixels,
    dicom_kind,
    is_dicom_bytes,
    open_dataset,
    transfer_syntax_name,
)

__all__ = [
    "RADIOGRAPH_MODALITIES",
    "REASONS",
    "DicomImage",
    "DicomRejected",
    "check_image",
    "decode_pixels",
    "dicom_kind",
    "is_dicom_bytes",
    "open_dataset",
    "pixel_spacing",
    "read_dicom_image",
    "redact",
    "to_grey_u8",
    "transfer_syntax_name",
]
