"""Open a DICOM file and decide whether it is a radiograph we can read; every refusal carries a reason code.

The reason codes are stable words (quarantine folders, logs and tests use them); the message is the sentence a
person reads. Nothing here ever reads with `force=True`: a file that is not Part 10 DICOM is refused, not guessed.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from common.errors import DataError

# Reason codes, with what each means (docs/dicom.md lists them for site IT staff).
REASONS = {
    "unreadable": "the file cannot be read from disk",
    "not_dicom": "not a DICOM Part 10 file (no preamble and 'DICM' prefix)",
    "bad_header": "the DICOM header is damaged",
    "non_image": "a DICOM object that is not an image (structured report, presentation state, ...)",
    "no_pixel_data": "an image object without pixel data",
    "unsupported_modality": "an image of a modality other than DX, CR or MG",
    "colour": "a colour image (radiographs are greyscale)",
    "multi_frame": "more than one frame",
    "unsupported_bits": "bits stored outside 1..16",
    "truncated_pixel_data": "fewer pixel bytes than the header announces",
    "unsupported_codec": "a transfer syntax no installed decoder handles",
    "undecodable": "the compressed pixel data could not be decoded",
}

RADIOGRAPH_MODALITIES = frozenset({"DX", "CR", "MG"})
GREY = frozenset({"MONOCHROME1", "MONOCHROME2"})
# Modalities of objects that never hold pixels (PS3.3 C.7.3.1.1.1).
NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "DOC", "REG", "RTPLAN", "RTSTRUCT", "RTRECORD", "FID", "AU", "ECG"})


class DicomRejected(DataError):
    """A DICOM file we will not process: `reason` is one of REASONS, `problem` the sentence shown to people."""

    def __init__(self, path: str | Path, reason: str, problem: str):
        assert reason in REASONS, reason
        self.reason = reason
        super().__init__(path, problem)


def is_dicom_bytes(head: bytes) -> bool:
    """True for the start of a DICOM Part 10 file (128-byte preamble then 'DICM')."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def open_dataset(path: str | Path, data: bytes | None = None) -> Dataset:
    """The parsed file (`data`: its bytes when already read; `path` then only names it), or DicomRejected with
    `unreadable`/`not_dicom`/`bad_header`."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on harmless VR oddities; the checks below decide
            return pydicom.dcmread(path if data is None else io.BytesIO(data))
    except InvalidDicomError:
        raise DicomRejected(path, "not_dicom", "not a DICOM file (no 'DICM' prefix after the 128-byte preamble)") from None
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise DicomRejected(path, "unreadable", f"cannot read the file ({type(e).__name__})") from None
    except Exception as e:  # any parser failure is a damaged header, whichever element tripped it
        raise DicomRejected(path, "bad_header", f"damaged DICOM header ({type(e).__name__}: {_short(e)})") from None


def check_image(ds: Dataset, path: str | Path, modalities: frozenset[str] | None = RADIOGRAPH_MODALITIES) -> None:
    """Refuse what is not one greyscale image of a handled modality (`modalities=None` accepts any modality)."""
    modality = str(ds.get("Modality", "") or "").upper()
    has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if not has_pixels:
        if modality in NON_IMAGE_MODALITIES or "Rows" not in ds:
            kind = _sop_name(ds)
            raise DicomRejected(path, "non_image", f"not an image: {kind} (modality {modality or 'none'})")
        raise DicomRejected(path, "no_pixel_data", f"image header ({_sop_name(ds)}) without pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or photometric not in GREY:
        raise DicomRejected(path, "colour", f"colour image ({photometric or 'no photometric interpretation'}, "
                            f"{ds.get('SamplesPerPixel', '?')} samples per pixel); radiographs must be greyscale")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomRejected(path, "multi_frame", f"{frames} frames; one radiograph per file is expected")
    bits = int(ds.get("BitsStored", 0) or 0)
    if not 1 <= bits <= 16:
        raise DicomRejected(path, "unsupported_bits", f"bits stored {bits} (1 to 16 supported)")
    if modalities is not None and modality not in modalities:
        raise DicomRejected(path, "unsupported_modality",
                            f"modality {modality or 'none'} is not a radiograph (handled: {', '.join(sorted(modalities))})")


def decode_pixels(ds: Dataset, path: str | Path) -> np.ndarray:
    """The stored pixel values (H, W), decoding compressed transfer syntaxes with the installed plug-ins."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    name = getattr(syntax, "name", str(syntax))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except NotImplementedError as e:
        raise DicomRejected(path, "unsupported_codec", f"no decoder for transfer syntax {name} ({_short(e)})") from None
    except Exception as e:
        text = str(e)
        if "less than expected" in text or "too short" in text.lower():
            raise DicomRejected(path, "truncated_pixel_data", f"truncated pixel data ({_short(e)})") from None
        if getattr(syntax, "is_compressed", False):
            raise DicomRejected(path, "undecodable", f"cannot decode {name} pixel data ({_short(e)})") from None
        raise DicomRejected(path, "truncated_pixel_data", f"unreadable pixel data ({_short(e)})") from None
    if arr.ndim != 2:  # header said one grey frame but the data disagrees
        raise DicomRejected(path, "colour" if arr.ndim == 3 and arr.shape[-1] in (3, 4) else "multi_frame",
                            f"decoded pixel array has shape {arr.shape}, expected one greyscale frame")
    return arr


def _sop_name(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID")
    return getattr(uid, "name", None) or str(uid or "unknown SOP class")


def _short(e: Exception, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
