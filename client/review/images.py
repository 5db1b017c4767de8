"""The kept image as the review page shows it: the pixels the pipeline analysed, as PNG.

DICOM copies go through the same reader as inference (modality/VOI LUT, MONOCHROME1 inverted), so the reviewer sees
the windowing the model saw and box coordinates line up with the pixels.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from common.data.images import read_image
from common.dicom import is_dicom_bytes, read_dicom_image
from common.dicom.read import DICOM_SUFFIXES
from common.errors import FracflError


def kept_pixels(ref: str) -> np.ndarray:
    """The grey pixels of the image at `ref` (a kept DICOM copy or an image file), as reviewers saw them and as box
    coordinates refer to them (also what the training pool stores); FracflError when missing or unreadable."""
    path = Path(ref)
    if not path.is_file():
        raise FracflError(f"kept image {path.name} is missing")
    with open(path, "rb") as f:
        dicom = path.suffix.lower() in DICOM_SUFFIXES or is_dicom_bytes(f.read(132))
    return read_dicom_image(path, modalities=None).pixels if dicom else read_image(path)


@lru_cache(maxsize=32)
def image_png(ref: str) -> bytes:
    """PNG bytes of the grey image at `ref` (a kept DICOM copy or an image file); FracflError when unreadable."""
    path = Path(ref)
    pixels = kept_pixels(ref)
    ok, buf = cv2.imencode(".png", pixels)
    if not ok:
        raise FracflError(f"kept image {path.name}: PNG encoding failed")
    return buf.tobytes()
