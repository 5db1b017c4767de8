"""A DICOM radiograph as the rest of fracfl sees it: grey uint8 pixels plus what measurements and results need."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from common.dicom.pixels import to_grey_u8
from common.dicom.read import (
    RADIOGRAPH_MODALITIES,
    DicomRejected,
    check_image,
    decode_pixels,
    open_dataset,
    transfer_syntax_name,
)


@dataclass
class DicomImage:
    """One decoded radiograph. `dataset` is the parsed header (pixels included) the results are derived from."""

    pixels: np.ndarray  # (H, W) uint8, bone bright
    dataset: Dataset
    pixel_spacing_mm: tuple[float, float] | None  # (row, column) spacing; None when the file gives none
    spacing_source: str | None  # "PixelSpacing" (calibrated at the patient) or "ImagerPixelSpacing" (at the detector)
    notes: list[str] = field(default_factory=list)

    @property
    def monochrome1(self) -> bool:
        return str(self.dataset.PhotometricInterpretation).upper() == "MONOCHROME1"


def read_dicom_image(
    path: str | Path, modalities: frozenset[str] | None = RADIOGRAPH_MODALITIES, data: bytes | None = None
) -> DicomImage:
    """Read, validate and convert one file (or its bytes, `data`); raises DicomRejected (with a reason code) for
    anything unusable. `modalities=None` accepts any greyscale single-frame image."""
    ds = open_dataset(path, data)
    try:
        check_image(ds, path, modalities)
        stored = decode_pixels(ds, path)
    except DicomRejected as e:
        e.transfer_syntax = e.transfer_syntax or transfer_syntax_name(ds)
        raise
    pixels, notes = to_grey_u8(ds, stored)
    spacing, source = pixel_spacing(ds)
    if spacing is None:
        notes.append("no pixel spacing: measurements in pixels only")
    return DicomImage(pixels, ds, spacing, source, notes)


def pixel_spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str | None]:
    """Row/column spacing in mm: calibrated PixelSpacing first, else the detector's ImagerPixelSpacing.

    Zero or malformed values (some CR exports write 0\\0) count as absent rather than as a spacing of zero.
    """
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(key)
        try:
            row, col = (float(v) for v in value)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0 and np.isfinite(row) and np.isfinite(col):
            return (row, col), key
    return None, None
