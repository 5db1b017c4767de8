"""Reading real DICOM radiographs (pydicom-data CR files) and pydicom's codec test files; refusals with reasons."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from dicom_files import raw_dataset
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

from common.data.images import read_image
from common.dicom import (
    RADIOGRAPH_MODALITIES,
    REASONS,
    DicomRejected,
    decode_pixels,
    dicom_kind,
    open_dataset,
    read_dicom_image,
)


def _file(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not installed (pydicom-data)")
    return path


def test_monochrome1_15bit_chest_shows_bone_bright():
    image = read_dicom_image(_file("RG1_UNCR.dcm"))
    assert image.monochrome1 and image.dataset.BitsStored == 15
    px = image.pixels
    h, w = px.shape
    assert px.dtype == np.uint8 and (h, w) == (1955, 1841)
    mediastinum = px[int(0.35 * h) : int(0.6 * h), int(0.47 * w) : int(0.53 * w)].mean()
    lungs = np.mean(
        [px[int(0.3 * h) : int(0.5 * h), int(a * w) : int(b * w)].mean() for a, b in ((0.22, 0.32), (0.68, 0.78))]
    )
    assert mediastinum > lungs + 20  # spine/heart bright, air-filled lungs dark: not a negative
    assert image.pixel_spacing_mm is None  # the file says 0\0: absent, not zero
    assert "MONOCHROME1 inverted" in image.notes


@pytest.mark.parametrize("name", ["RG3_UNCR.dcm", "RG1_UNCR.dcm"])
def test_monochrome1_display_decreases_with_stored_value(name):
    image = read_dicom_image(_file(name))
    stored = image.dataset.pixel_array[::8, ::8].astype(float)
    shown = image.pixels[::8, ::8].astype(float)
    assert np.corrcoef(stored.ravel(), shown.ravel())[0, 1] < -0.9
    assert image.dataset.BitsStored in (10, 15)


def test_jpeg2000_matches_uncompressed_copy():
    raw = read_dicom_image(_file("RG1_UNCR.dcm")).pixels
    j2k = read_dicom_image(_file("RG1_J2KR.dcm")).pixels
    np.testing.assert_array_equal(raw, j2k)  # lossless JPEG 2000 decodes to the same display image


@pytest.mark.parametrize(
    "name,syntax",
    [
        ("JPEG-LL.dcm", "1.2.840.10008.1.2.4.70"),  # JPEG lossless
        ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51"),  # JPEG extended, 12-bit
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", "1.2.840.10008.1.2.4.70"),
        ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),  # JPEG-LS
        ("JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81"),
        ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),  # RLE
        ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90"),
    ],
)
def test_compressed_transfer_syntaxes_decode(name, syntax):
    path = _file(name)
    assert open_dataset(path).file_meta.TransferSyntaxUID == syntax
    image = read_dicom_image(path, modalities=None)
    assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 2
    assert image.pixels.max() > image.pixels.min()


def test_lossless_codecs_agree_with_uncompressed():
    plain = read_dicom_image(_file("MR_small.dcm"), modalities=None).pixels
    for name in ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"):
        np.testing.assert_array_equal(read_dicom_image(_file(name), modalities=None).pixels, plain)


def test_window_from_file_is_used_and_fallback_without_one():
    windowed = read_dicom_image(_file("MR_small.dcm"), modalities=None)
    assert any(n.startswith("window 600/1600") for n in windowed.notes)
    ds = windowed.dataset
    lo = 600 - 0.5 - 1599 / 2
    stored = ds.pixel_array.astype(float) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    assert (windowed.pixels[stored <= lo] == 0).all()
    plain = read_dicom_image(_file("JPEG-LL.dcm"), modalities=None)
    assert any("percentile window" in n for n in plain.notes)
    assert plain.pixels.min() == 0 and plain.pixels.max() == 255


def test_modality_and_voi_lut_sequences():
    mlut = read_dicom_image(_file("mlut_18.dcm"), modalities=None)
    assert mlut.pixels.max() > mlut.pixels.min()
    voi = read_dicom_image(_file("vlut_04.dcm"), modalities=None)
    assert "VOI LUT sequence applied" in voi.notes


def test_pixel_spacing_kept():
    image = read_dicom_image(_file("CT_small.dcm"), modalities=None)
    assert image.pixel_spacing_mm == pytest.approx((0.661468, 0.661468))
    assert image.spacing_source == "PixelSpacing"


@pytest.mark.parametrize(
    "name,reason",
    [
        ("SC_rgb.dcm", "colour"),
        ("SC_rgb_jpeg.dcm", "colour"),
        ("emri_small.dcm", "multi_frame"),
        ("MR_truncated.dcm", "truncated_pixel_data"),
        ("test-SR.dcm", "non_image"),
        ("rtplan.dcm", "non_image"),
        ("no_meta.dcm", "not_dicom"),
        ("CT_small.dcm", "unsupported_modality"),
    ],
)
def test_refusals_carry_reason(name, reason):
    with pytest.raises(DicomRejected) as e:  # any modality unless the modality is what is tested
        read_dicom_image(_file(name), modalities=RADIOGRAPH_MODALITIES if reason == "unsupported_modality" else None)
    assert e.value.reason == reason and name in str(e.value)


def test_unsupported_codec_and_no_pixel_data(tmp_path):
    ds = pydicom.dcmread(_file("RG3_UNCR.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2: no decoder for it
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" * 4])
    ds.save_as(tmp_path / "mpeg.dcm")
    with pytest.raises(DicomRejected) as e:
        read_dicom_image(tmp_path / "mpeg.dcm")
    assert e.value.reason == "unsupported_codec" and "MPEG2" in str(e.value)
    ds = pydicom.dcmread(_file("RG3_UNCR.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "empty.dcm")
    with pytest.raises(DicomRejected) as e:
        read_dicom_image(tmp_path / "empty.dcm")
    assert e.value.reason == "no_pixel_data"


def test_read_image_routes_dicom(tmp_path):
    arr = read_image(_file("RG3_UNCR.dcm"), max_side=256)
    assert arr.dtype == np.uint8 and max(arr.shape) == 256
    (tmp_path / "x.dcm").write_bytes(b"not dicom at all" * 20)
    with pytest.raises(Exception, match="not a recognised image format|not a DICOM"):
        read_image(tmp_path / "x.dcm")


def test_twelve_bit_jpeg_extended_that_libjpeg_refuses_decodes_through_gdcm():
    """JPEG-lossy.dcm: 12-bit JPEG Extended with a scan header pylibjpeg's libjpeg rejects (as in older CR archives);
    pydicom's reference values for this file (its GDCM and pylibjpeg tests) must come out."""
    path = _file("JPEG-lossy.dcm")
    assert open_dataset(path).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.51"
    with pytest.raises(Exception, match="scan start must be zero"):  # the failure a site saw before GDCM
        pydicom.pixels.pixel_array(path, decoding_plugin="pylibjpeg")
    stored = decode_pixels(open_dataset(path), path)
    assert stored.shape == (1024, 256) and stored[420, 140] == 244 and stored[230, 120] == 95
    image = read_dicom_image(path, modalities=None)
    assert image.pixels.max() > image.pixels.min()


def test_dicom_is_decided_by_content(tmp_path):
    """A raw dataset (no preamble, no DICM, implicit VR) is DICOM; a PNG or garbage named .dcm is not_dicom."""
    raw = raw_dataset(tmp_path / "raw.dcm")
    assert raw.read_bytes()[128:132] != b"DICM" and dicom_kind(raw.read_bytes()[:132]) == "raw"
    image = read_dicom_image(raw)
    assert image.pixels.shape == (256, 256) and image.dataset.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert read_image(raw).shape == (256, 256)  # training and evaluation read it too
    png = tmp_path / "photo.dcm"
    cv2.imwrite(str(tmp_path / "photo.png"), np.zeros((8, 8), np.uint8))
    png.write_bytes((tmp_path / "photo.png").read_bytes())
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(bytes(range(256)) * 4)
    for path in (png, garbage):
        with pytest.raises(DicomRejected) as e:
            read_dicom_image(path)
        assert e.value.reason == "not_dicom" and path.name in str(e.value)
        with pytest.raises(DicomRejected, match="not a DICOM file"):
            read_image(path)  # not decoded as the PNG it really is
    assert read_image(tmp_path / "photo.png").shape == (8, 8)


def test_a_halved_rows_is_a_dimension_mismatch_not_multi_frame(tmp_path):
    ds = pydicom.dcmread(_file("RG3_UNCR.dcm"))
    ds.Rows = ds.Rows // 2
    ds.save_as(tmp_path / "halved.dcm")
    with pytest.raises(DicomRejected) as e:
        read_dicom_image(tmp_path / "halved.dcm")
    assert e.value.reason == "dimension_mismatch" and "880 x 1760" in str(e.value)
    assert e.value.transfer_syntax == "Explicit VR Little Endian (1.2.840.10008.1.2.1)"


def test_every_reason_code_is_in_the_one_documented_table():
    """docs/dicom.md has one table of reason codes: exactly the codes fracfl can emit (common.dicom.REASONS)."""
    text = (Path(__file__).parents[1] / "docs" / "dicom.md").read_text()
    section = text[text.index("## Reason codes") :]
    section = section[: section.index("\n## ", 1)]
    documented = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)
    assert sorted(documented) == sorted(REASONS) and len(documented) == len(set(documented))


@pytest.mark.parametrize("name", ["RG1_J2KR.dcm", "JPEG-lossy.dcm"])
def test_damaged_compressed_data_is_undecodable_not_a_crash(tmp_path, name):
    """GDCM aborts the process on damaged JPEG 2000: it must only ever see 12-bit JPEG Extended, where it raises."""
    ds = pydicom.dcmread(_file(name))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    for i, data in enumerate((frame[: len(frame) // 3], frame[:200] + bytes(range(256)) * 20)):
        ds.PixelData = encapsulate([data])
        ds.save_as(tmp_path / f"{i}.dcm")
        with pytest.raises(DicomRejected) as e:
            read_dicom_image(tmp_path / f"{i}.dcm", modalities=None)
        assert e.value.reason in ("undecodable", "truncated_pixel_data")
        assert str(ds.file_meta.TransferSyntaxUID) in e.value.transfer_syntax
