"""Stored DICOM pixel values to the grey uint8 image a radiologist would see (bone bright), per PS3.3 C.11.

Order of the grey-scale pipeline: modality LUT (or rescale) -> VOI LUT or window -> MONOCHROME1 inversion.
Files without a VOI get a robust percentile window, the same the PNG/TIFF reader uses for 16-bit files.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi

from common.utils.window import window_to_u8


def to_grey_u8(ds: Dataset, stored: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The displayed image as uint8 (H, W) and notes on the choices made (which VOI, inversion)."""
    notes: list[str] = []
    values = apply_modality_lut(stored, ds) if ("ModalityLUTSequence" in ds or "RescaleSlope" in ds) else stored
    unit = _voi_unit(ds, values, notes)
    if unit is None:
        out, constant = window_to_u8(values)
        notes.append("no usable VOI in the file: percentile window" + (" (constant image)" if constant else ""))
    else:
        out = (unit * 255.0 + 0.5).astype(np.uint8)
    if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1":
        out = 255 - out  # minimum stored value is white: invert so that bone (low exposure) is bright as in MONOCHROME2
        notes.append("MONOCHROME1 inverted")
    return np.ascontiguousarray(out), notes


def _voi_unit(ds: Dataset, values: np.ndarray, notes: list[str]) -> np.ndarray | None:
    """Values mapped to [0, 1] by the file's first VOI LUT or window; None when it has no usable one."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        try:
            lut = apply_voi(values, ds, index=0).astype(np.float64)
            top = max(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1, float(lut.max()), 1.0)
            notes.append("VOI LUT sequence applied")
            return np.clip(lut / top, 0.0, 1.0)
        except Exception as e:  # a malformed LUT is no reason to lose the image: fall back, and say so
            notes.append(f"VOI LUT unusable ({type(e).__name__})")
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is None or width is None:
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    x = values.astype(np.float64)
    if function == "SIGMOID" and width > 0:
        notes.append(f"window {center:g}/{width:g} (sigmoid)")
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT" and width > 0:
        notes.append(f"window {center:g}/{width:g} (linear exact)")
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width >= 1:
        notes.append(f"window {center:g}/{width:g}")
        if width == 1:  # a threshold: PS3.3 C.11.2.1.2.1 with zero slope range
            return (x > center - 0.5).astype(np.float64)
        return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    notes.append(f"window width {width:g} invalid")
    return None


def _first(value: object) -> float | None:
    """First value of a possibly multi-valued DS (files list several windows: the first is the default)."""
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0] if len(value) else None
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None
