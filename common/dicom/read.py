"""Open a DICOM file and decide whether it is a radiograph we can read; every refusal carries a reason code.

The reason codes are stable words (quarantine folders, logs and tests use them); the message is the sentence a
person reads. What is DICOM is decided by content, never by file name: a Part 10 file (preamble and 'DICM'), or a
raw dataset without preamble (old exports; recognised by its first element) which is then parsed with `force` and
accepted only if it names a SOP class. Anything else is `not_dicom`, whatever its extension.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import VR

from common.dicom import jpeg12
from common.dicom.redact import note
from common.errors import DataError

# Every reason code fracfl emits for a file it does not use, with what it means. docs/dicom.md has the same table
# (tests/test_dicom_read.py keeps them equal). The first group comes from this reader; the last four from the
# pipeline and `fracfl predict` (processing_error, unreadable_image) and `fracfl ingest` (no_label, bad_label,
# burned_in_annotation).
REASONS = {
    "unreadable": "the file cannot be read from disk",
    "not_dicom": "not DICOM: neither a Part 10 file (preamble and 'DICM') nor a raw DICOM dataset",
    "bad_header": "the DICOM header is damaged, or lacks an attribute every image must have (e.g. SOPInstanceUID)",
    "non_image": "a DICOM object that is not an image (structured report, presentation state, ...)",
    "no_pixel_data": "an image object without pixel data",
    "unsupported_modality": "an image of a modality other than DX, CR or MG",
    "colour": "a colour image (radiographs are greyscale)",
    "multi_frame": "more than one frame",
    "unsupported_bits": "bits stored outside 1..16",
    "truncated_pixel_data": "fewer pixel bytes than the header announces",
    "dimension_mismatch": "more pixel bytes than Rows x Columns x Bits Allocated announce (damaged Rows/Columns)",
    "unsupported_codec": "a transfer syntax no installed decoder handles",
    "undecodable": "the compressed pixel data could not be decoded",
    "processing_error": "anything else that failed while analysing or writing results (the message says why)",
    "unreadable_image": "`fracfl predict`: a PNG/JPEG/TIFF file that cannot be decoded",
    "no_label": "`fracfl ingest`: no label file with the image's name",
    "bad_label": "`fracfl ingest`: the label file is malformed",
    "burned_in_annotation": "`fracfl ingest`: flagged BurnedInAnnotation=YES and --burned-in refuse",
}

RADIOGRAPH_MODALITIES = frozenset({"DX", "CR", "MG"})
GREY = frozenset({"MONOCHROME1", "MONOCHROME2"})
# Modalities of objects that never hold pixels (PS3.3 C.7.3.1.1.1).
NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "DOC", "REG", "RTPLAN", "RTSTRUCT", "RTRECORD", "FID", "AU", "ECG"})


# Attributes an image must have for results to reference it (Type 1 in every image IOD).
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})  # such a name is read as DICOM or refused as not_dicom
_VRS = frozenset(str(v.value) for v in VR if len(str(v.value)) == 2)
# pydicom logs every failed decoding plug-in with a full traceback, even when a later plug-in succeeds; the reader
# reports the outcome as one reason code with the transfer syntax instead.
logging.getLogger("pydicom.pixels.decoders.base").setLevel(logging.CRITICAL)
jpeg12.register()


class DicomRejected(DataError):
    """A DICOM file we will not process: `reason` is one of REASONS, `problem` the sentence shown to people."""

    def __init__(self, path: str | Path, reason: str, problem: str, transfer_syntax: str | None = None):
        assert reason in REASONS, reason
        self.reason = reason
        self.transfer_syntax = transfer_syntax  # for the one log line about the file (see transfer_syntax_name)
        super().__init__(path, problem)


def is_dicom_bytes(head: bytes) -> bool:
    """True for the start of a DICOM file: Part 10 (128-byte preamble then 'DICM') or a raw dataset."""
    return dicom_kind(head) is not None


def dicom_kind(head: bytes) -> str | None:
    """'part10', 'raw' (a dataset without preamble and file meta, as some old exports write) or None, from the
    first 132 bytes. A raw dataset starts with a little-endian tag of group 0002 or 0008 and either an explicit
    VR or a plausible implicit-VR length."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "part10"
    if len(head) < 8:
        return None
    group, element = struct.unpack("<HH", head[:4])
    if group not in (0x0002, 0x0008) or element > 0x0100:
        return None
    if head[4:6].isalpha() and head[4:6].isupper() and head[4:6].decode() in _VRS:
        return "raw"
    length = struct.unpack("<I", head[4:8])[0]
    return "raw" if length < 0x1000 and length % 2 == 0 else None


def open_dataset(path: str | Path, data: bytes | None = None) -> Dataset:
    """The parsed file (`data`: its bytes when already read; `path` then only names it), or DicomRejected with
    `unreadable`/`not_dicom`/`bad_header`. Its values are registered for redaction (common.dicom.redact)."""
    path = Path(path)
    try:
        if data is None:
            with open(path, "rb") as f:
                head = f.read(132)
        else:
            head = data[:132]
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise DicomRejected(path, "unreadable", f"cannot read the file ({type(e).__name__})") from None
    kind = dicom_kind(head)
    if kind is None:
        raise DicomRejected(
            path,
            "not_dicom",
            "not a DICOM file (no 'DICM' prefix after the 128-byte preamble, and not a raw DICOM dataset)",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on harmless VR oddities; the checks below decide
            ds = pydicom.dcmread(path if data is None else io.BytesIO(data), force=kind == "raw")
            if kind == "raw":
                _check_raw(ds, path)
    except DicomRejected:
        raise
    except InvalidDicomError:
        raise DicomRejected(
            path, "not_dicom", "not a DICOM file (no 'DICM' prefix after the 128-byte preamble)"
        ) from None
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise DicomRejected(path, "unreadable", f"cannot read the file ({type(e).__name__})") from None
    except Exception as e:  # any parser failure is a damaged header, whichever element tripped it
        raise DicomRejected(path, "bad_header", f"damaged DICOM header ({type(e).__name__}: {_short(e)})") from None
    note(ds)
    return ds


def _check_raw(ds: Dataset, path: Path) -> None:
    """A raw dataset read with `force` counts as DICOM only if it parsed and names a valid SOP class; it then gets
    the file meta its encoding implies, so pixel decoding and the results can refer to it."""
    try:
        sop_class = UID(str(ds.get("SOPClassUID", "") or ""))
        valid = bool(sop_class) and sop_class.is_valid
    except Exception:
        valid = False
    if not valid:
        raise DicomRejected(
            path, "not_dicom", "no DICOM preamble, and read as a raw dataset it names no valid SOP Class UID"
        )
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        implicit = getattr(ds, "original_encoding", (True, True))[0]
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    meta.setdefault("MediaStorageSOPClassUID", sop_class)
    if "SOPInstanceUID" in ds:
        meta.setdefault("MediaStorageSOPInstanceUID", ds.SOPInstanceUID)


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
        raise DicomRejected(
            path,
            "colour",
            f"colour image ({photometric or 'no photometric interpretation'}, "
            f"{ds.get('SamplesPerPixel', '?')} samples per pixel); radiographs must be greyscale",
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomRejected(path, "multi_frame", f"{frames} frames; one radiograph per file is expected")
    bits = int(ds.get("BitsStored", 0) or 0)
    if not 1 <= bits <= 16:
        raise DicomRejected(path, "unsupported_bits", f"bits stored {bits} (1 to 16 supported)")
    if modalities is not None and modality not in modalities:
        raise DicomRejected(
            path,
            "unsupported_modality",
            f"modality {modality or 'none'} is not a radiograph (handled: {', '.join(sorted(modalities))})",
        )


def check_referenceable(ds: Dataset, path: str | Path) -> None:
    """Results (GSPS, SR, SC) reference their source by these UIDs: an image without them gets `bad_header` before
    any work, instead of a failure while writing results."""
    missing = [k for k in REQUIRED_UIDS if not str(ds.get(k, "") or "").strip()]
    if missing:
        raise DicomRejected(
            path,
            "bad_header",
            f"missing {', '.join(missing)} (required in every image; results could not reference it)",
            transfer_syntax_name(ds),
        )


def decode_pixels(ds: Dataset, path: str | Path) -> np.ndarray:
    """The stored pixel values (H, W), decoding compressed transfer syntaxes with the installed plug-ins.

    Each refusal's message names the transfer syntax; decoder internals stay out of it beyond one short clause."""
    name = transfer_syntax_name(ds)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if not getattr(syntax, "is_compressed", False):
        _check_native_size(ds, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except NotImplementedError as e:
        raise DicomRejected(path, "unsupported_codec", f"no decoder for transfer syntax {name} ({_short(e)})") from None
    except Exception as e:
        text = str(e)
        if "less than expected" in text or "too short" in text.lower():
            raise DicomRejected(path, "truncated_pixel_data", f"truncated pixel data ({name}; {_short(e)})") from None
        if getattr(syntax, "is_compressed", False):
            raise DicomRejected(path, "undecodable", f"cannot decode {name} pixel data ({_short(e)})") from None
        raise DicomRejected(path, "truncated_pixel_data", f"unreadable pixel data ({name}; {_short(e)})") from None
    if arr.ndim != 2:  # header said one grey frame but the data disagrees
        raise DicomRejected(
            path,
            "colour" if arr.ndim == 3 and arr.shape[-1] in (3, 4) else "dimension_mismatch",
            f"decoded pixel array has shape {arr.shape}, expected one greyscale frame of "
            f"{ds.get('Rows')} x {ds.get('Columns')}",
        )
    return arr


def transfer_syntax_name(ds: Dataset) -> str:
    """'JPEG Extended (Process 2 and 4) (1.2.840.10008.1.2.4.51)': what a log line names (no patient data)."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if getattr(ds, "file_meta", None) is not None else None
    if not syntax:
        return "unknown transfer syntax"
    name = getattr(syntax, "name", "") or ""
    return f"{name} ({syntax})" if name and name != str(syntax) else str(syntax)


def _check_native_size(ds: Dataset, path: str | Path) -> None:
    """Uncompressed pixel data must match Rows x Columns x Bits Allocated: fewer bytes is truncation, more means the
    header's dimensions are wrong (a halved Rows once read as 'two frames')."""
    data = ds.get("PixelData")
    try:
        rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        raise DicomRejected(path, "bad_header", "missing or malformed Rows, Columns or BitsAllocated") from None
    if not isinstance(data, (bytes, bytearray)) or rows < 1 or cols < 1:
        return
    expected = (rows * cols * bits + 7) // 8
    if len(data) < expected:
        raise DicomRejected(
            path,
            "truncated_pixel_data",
            f"truncated pixel data: {len(data)} bytes, {rows} x {cols} at {bits} bits need {expected}",
        )
    if len(data) > expected + 1:  # one padding byte keeps the value length even
        raise DicomRejected(
            path,
            "dimension_mismatch",
            f"pixel data holds {len(data)} bytes but Rows x Columns x BitsAllocated ({rows} x {cols} "
            f"x {bits}) announce {expected}: the image size in the header is wrong",
        )


def _sop_name(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID")
    return getattr(uid, "name", None) or str(uid or "unknown SOP class")


def _short(e: Exception, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
