"""Read any radiograph file as one uint8 grayscale array, whatever its storage quirks.

DICOM files (Part 10) go through `common.dicom` (modality/VOI LUT, MONOCHROME1). Radiographs are grayscale, but
files come as 3-channel or palette JPEG/PNG, 16-bit PNG/TIFF, with EXIF
orientation flags, or slightly truncated. Everything downstream (training, evaluation, the checker) sees the
same HxW uint8 array with the orientation a viewer would show, so labels drawn on the viewed image match.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from common.errors import DataError
from common.utils.window import window_to_u8

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dcm"})

TRUNCATED_NOTE = "truncated JPEG: decoded with missing data"

_EXIF_ORIENTATION = 0x0112
_HIGH_DEPTH_BITS = {"I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I;16S": 16, "I": 32, "F": 32}
_JPEG_SOI, _JPEG_EOI = b"\xff\xd8", b"\xff\xd9"


def is_image_file(path: str | Path) -> bool:
    """True when the file name has an accepted image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | Path, *, max_side: int | None = None) -> np.ndarray:
    """The image as a uint8 HxW grayscale array (see `decode_image`). Raises DataError naming the file."""
    return inspect_image(path, max_side=max_side)[0]


def inspect_image(path: str | Path, *, max_side: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Like `read_image`, plus notes on what had to be fixed (the dataset checker reports them as warnings)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "cannot decode image (file not found)") from None
    except IsADirectoryError:
        raise DataError(path, "cannot decode image (is a directory)") from None
    except OSError as e:
        raise DataError(path, f"cannot decode image ({e.strerror or e})") from None
    return decode_image(data, path, max_side=max_side)


def decode_image(data: bytes, path: str | Path, *, max_side: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Decode file bytes to (uint8 HxW grayscale array, notes); `path` only names the file in errors.

    Colour is reduced to luminance (ITU-R 601), 16-bit and float data are windowed to the 0.5-99.5
    percentiles, EXIF orientation is applied to the pixels, a truncated JPEG is decoded as far as it goes,
    and `max_side` (if given) downscales so the longer side is at most that many pixels.
    """
    path = Path(path)
    if not data:
        raise DataError(path, "cannot decode image (file is empty)")
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    if _is_dicom(data, path):
        return _decode_dicom(data, path, max_side)
    notes: list[str] = []
    try:
        im = _open_loaded(data, max_side)
    except Exception as e:  # any decoder failure is a bad file, whichever plugin raised it
        if not (data.startswith(_JPEG_SOI) and "truncated" in str(e)):
            raise DataError(path, f"cannot decode image ({_reason(e)})") from None
        # What PIL's global LOAD_TRUNCATED_IMAGES does for JPEG (end the stream with an EOI marker so libjpeg
        # fills the missing blocks), done on our copy of the bytes so no process-wide switch is flipped.
        try:
            im = _open_loaded(data + _JPEG_EOI, max_side)
        except Exception as e2:
            raise DataError(path, f"cannot decode image ({_reason(e2)})") from None
        notes.append(TRUNCATED_NOTE)

    orientation = _exif_orientation(im, notes)
    arr = _to_gray_u8(im, notes)
    if orientation in _ORIENT:
        arr = np.ascontiguousarray(_ORIENT[orientation](arr))
        notes.append(f"EXIF orientation {orientation} applied")
    if max_side is not None and max(arr.shape) > max_side:
        arr = _downscale(arr, max_side)
    if not (arr.flags.writeable and arr.flags.c_contiguous):  # PIL hands out read-only views: callers may edit
        arr = np.array(arr, order="C")
    return arr, notes


def _is_dicom(data: bytes, path: Path) -> bool:
    """DICOM by content (Part 10 or a raw dataset), or by a DICOM file name: such a file that is not DICOM is
    then refused as not_dicom instead of being decoded as whatever image it really is. A file named and made as
    an ordinary image is answered without importing the DICOM stack (training reads thousands of JPEGs, and a
    machine that only trains, such as a lent GPU, need not have pydicom)."""
    if path.suffix.lower() in _IMAGE_SUFFIXES and data.startswith(_IMAGE_MAGIC):
        return False
    from common.dicom.read import DICOM_SUFFIXES, dicom_kind  # see _decode_dicom

    return dicom_kind(data[:132]) is not None or path.suffix.lower() in DICOM_SUFFIXES


_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"BM")  # JPEG PNG TIFF TIFF BMP


def _decode_dicom(data: bytes, path: Path, max_side: int | None) -> tuple[np.ndarray, list[str]]:
    """DICOM through the shared DICOM reader (modality/VOI LUT, MONOCHROME1), any greyscale modality."""
    from common.dicom import read_dicom_image  # imported here: ordinary images never load pydicom (see _is_dicom)

    image = read_dicom_image(path, modalities=None, data=data)
    arr = image.pixels
    if max_side is not None and max(arr.shape) > max_side:
        arr = _downscale(arr, max_side)
    return arr, image.notes


# Decoders tried, in PIL's names. Naming them keeps PIL away from plug-ins other packages register (Ultralytics
# adds a HEIF opener that needs a module we do not install), so a non-image always reads "not a recognised format".
_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF")


def _pil_open(fp: io.BytesIO) -> Image.Image:
    """PIL's own `Image.open`: Ultralytics replaces it with one that tries to install a HEIF plug-in on failure."""
    opener = Image.open
    if opener.__module__.startswith("ultralytics"):
        opener = sys.modules[opener.__module__]._image_open
    return opener(fp, formats=_FORMATS)


def _open_loaded(data: bytes, max_side: int | None) -> Image.Image:
    im = _pil_open(io.BytesIO(data))
    if im.format == "JPEG":
        # Let libjpeg emit luminance directly (skips colour conversion) and, when downscaling, use its DCT
        # scaling: both make loading several times faster than decode-then-convert.
        size = im.size
        if max_side is not None and max(size) > max_side:
            s = max_side / max(size)
            size = (max(1, int(np.ceil(size[0] * s))), max(1, int(np.ceil(size[1] * s))))
        im.draft("L", size)
    im.load()
    return im


def _reason(e: Exception) -> str:
    if isinstance(e, Image.UnidentifiedImageError):
        return "not a recognised image format"
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _exif_orientation(im: Image.Image, notes: list[str]) -> int | None:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION)
    except Exception:
        notes.append("EXIF data unreadable: orientation not applied")
        return None
    if value is not None and value not in range(1, 9):
        notes.append(f"EXIF orientation {value!r} is invalid: ignored")
        return None
    return value


# EXIF orientation -> the numpy operation equal to ImageOps.exif_transpose (checked in the tests); done on the
# final 2-D uint8 array because that is cheaper than transposing a colour or 16-bit image.
_ORIENT = {
    2: lambda a: a[:, ::-1],  # mirrored horizontally
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1, :],  # mirrored vertically
    5: lambda a: a.T,  # transposed
    6: lambda a: np.rot90(a, -1),  # stored rotated: turn 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].T,  # transverse
    8: lambda a: np.rot90(a, 1),  # turn 90 degrees counter-clockwise
}


def _to_gray_u8(im: Image.Image, notes: list[str]) -> np.ndarray:
    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.uint8)
    if mode in _HIGH_DEPTH_BITS or mode.startswith("I;"):
        bits = _HIGH_DEPTH_BITS.get(mode, 16)
        out, constant = window_to_u8(np.asarray(im if mode in _HIGH_DEPTH_BITS else im.convert("I")))
        notes.append(f"{bits}-bit image {'is constant: mapped to 0' if constant else 'windowed to 8 bits'}")
        return out
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in im.info):
        notes.append("alpha channel ignored")
    # P, 1, RGB, RGBA, LA, CMYK, YCbCr, ...: PIL's L conversion is 601 luminance of the RGB values.
    return np.asarray(im.convert("L"), dtype=np.uint8)


def _downscale(arr: np.ndarray, max_side: int) -> np.ndarray:
    import cv2  # only needed when downscaling; keeps `import common.data` light

    h, w = arr.shape
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
