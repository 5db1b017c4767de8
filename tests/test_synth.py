"""Synthetic radiograph generator: determinism, ground truth, site profiles, output layout, DICOM."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import yaml

from common.errors import ConfigError
from common.synth import (
    BODY_PARTS,
    FRACTURE_TYPES,
    SiteProfile,
    generate_dataset,
    get_profile,
    preset_names,
    render_radiograph,
)
from common.synth.fracture import MINOR_SHARE

GENERAL = get_profile("general_hospital")
QUIET = dataclasses.replace(GENERAL, name="quiet", exposure=1e9, electronic_noise=0.0)
"""Practically noise-free, so two renders differ only where the anatomy differs."""


def _render(profile: SiteProfile, seed: int, size: int = 160, **kw):
    return render_radiograph(profile, np.random.default_rng(seed), size, **kw)


def test_render_is_deterministic_for_a_seed():
    a, b, c = _render(GENERAL, 7), _render(GENERAL, 7), _render(GENERAL, 8)
    assert np.array_equal(a.display, b.display) and np.array_equal(a.detector, b.detector)
    assert a.fractures == b.fractures and a.body_part == b.body_part
    assert not np.array_equal(a.detector, c.detector)


def test_images_have_site_bit_depths_and_bone_is_bright():
    for name in preset_names():
        profile = get_profile(name)
        img = _render(profile, 1, body_part="forearm", fracture=False)
        assert img.detector.dtype == np.uint16 and img.detector.max() < 2**profile.bit_depth
        assert img.display.dtype == (np.uint8 if profile.png_bits == 8 else np.uint16)
    # Bone attenuates more than the soft tissue beside it: brighter in display and detector.
    img = _render(QUIET, 3, size=256, body_part="lower_leg", fracture=False)
    row = img.detector[128].astype(float)
    inside = row[row < row.max()]  # drop unexposed (collimated) pixels
    assert inside.max() - np.median(inside) > 0.1 * 2**QUIET.bit_depth


@pytest.mark.parametrize("body_part", BODY_PARTS)
def test_fracture_boxes_lie_inside_the_image(body_part):
    for seed in range(6):
        img = _render(GENERAL, seed, size=128, body_part=body_part, fracture=True)
        assert img.fractures, "a forced fracture must be recorded"
        for f in img.fractures:
            x0, y0, x1, y1 = f.box_xyxy
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            assert f.type in FRACTURE_TYPES and f.bone


def test_prevalence_matches_the_profile():
    for name, n in (("general_hospital", 160), ("trauma_center", 160)):
        profile = get_profile(name)
        fractured = np.mean([bool(_render(profile, seed, size=64).fractures) for seed in range(n)])
        tolerance = 3.5 * np.sqrt(profile.prevalence * (1 - profile.prevalence) / n)
        assert abs(fractured - profile.prevalence) < tolerance, (name, fractured)


@pytest.mark.parametrize("kind", FRACTURE_TYPES)
def test_fracture_is_visible_inside_its_box(kind):
    """The same image rendered intact differs inside the ground-truth box, and (unless the limb
    beyond a displaced break moved) hardly anywhere else."""
    per_att = (2**QUIET.bit_depth - 1) / 8.0  # detector units per unit of attenuation
    for seed in range(3):
        broken = _render(QUIET, seed, size=256, body_part="forearm", fracture=kind)
        intact = _render(QUIET, seed, size=256, body_part="forearm", fracture=False)
        diff = np.abs(broken.detector.astype(float) - intact.detector.astype(float))
        inside = np.zeros(diff.shape, bool)
        for f in broken.fractures:
            x0, y0, x1, y1 = (int(round(v)) for v in f.box_xyxy)
            inside[y0:y1, x0:x1] = True
        assert diff[inside].max() > 0.02 * per_att, (kind, seed)
        if kind == "displaced":
            assert diff[inside].mean() > 0.02 * per_att, seed
        else:
            assert diff[inside].mean() > 5 * diff[~inside].mean(), (
                kind,
                seed,
                diff[inside].mean(),
                diff[~inside].mean(),
            )


def test_displacement_and_angulation_follow_the_profile():
    profile = dataclasses.replace(
        GENERAL, name="limits", max_displacement_mm=12.0, max_angulation_deg=20.0, multi_fracture_rate=0.0
    )
    seen = set()
    for seed in range(40):
        kind = FRACTURE_TYPES[seed % len(FRACTURE_TYPES)]
        for f in _render(profile, seed, size=96, fracture=kind).fractures:
            seen.add(f.type)
            assert 0 <= f.displacement_mm <= profile.max_displacement_mm + 1e-6
            assert 0 <= f.angulation_deg <= profile.max_angulation_deg + 1e-6
            if f.type == "hairline":
                assert f.displacement_mm == 0 and f.angulation_deg == 0
            elif f.type == "displaced":
                assert f.angulation_deg >= 0.3 * profile.max_angulation_deg - 1e-6
            else:
                share = MINOR_SHARE[f.type]
                assert f.displacement_mm <= share * profile.max_displacement_mm + 1e-6
                assert f.angulation_deg <= share * profile.max_angulation_deg + 1e-6
    assert seen == set(FRACTURE_TYPES)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(
        out,
        sites=["general_hospital", "trauma_center"],
        images_per_site=8,
        size=128,
        val_fraction=0.25,
        seed=3,
        dicom=True,
        progress=False,
    )
    return out


def test_layout_and_yaml_files(dataset):
    pooled = yaml.safe_load((dataset / "data.yaml").read_text())
    assert pooled == {
        "train": ["general_hospital/images/train", "trauma_center/images/train"],
        "val": ["general_hospital/images/val", "trauma_center/images/val"],
        "names": {0: "fracture"},
    }
    with open(dataset / "meta.csv") as f:
        meta = list(csv.DictReader(f))
    assert list(meta[0]) == [
        "image_id",
        "site",
        "split",
        "body_part",
        "fractured",
        "boxes",
        "laterality",
        "width",
        "height",
        "pixel_spacing_mm",
        "bit_depth",
    ]
    assert len(meta) == 16 and len({m["image_id"] for m in meta}) == 16
    for site in ("general_hospital", "trauma_center"):
        root = dataset / site
        assert yaml.safe_load((root / "data.yaml").read_text()) == {
            "train": "images/train",
            "val": "images/val",
            "names": {0: "fracture"},
        }
        records = _read_jsonl(root / "ground_truth.jsonl")
        assert len(records) == 8 and sum(r["split"] == "val" for r in records) == 2
        for r in records:
            png = cv2.imread(str(root / r["image"]), cv2.IMREAD_UNCHANGED)
            assert png.shape == (128, 128)
            assert png.dtype == (np.uint16 if get_profile(site).png_bits == 16 else np.uint8)
            assert (root / r["dicom"]).is_file()
            assert r["image"] == f"images/{r['split']}/{r['image_id']}.png" and r["image_id"].startswith(site)
            row = next(m for m in meta if m["image_id"] == r["image_id"])
            assert int(row["boxes"]) == len(r["fractures"]) and int(row["fractured"]) == int(bool(r["fractures"]))
            assert row["split"] == r["split"] and int(row["bit_depth"]) == get_profile(site).bit_depth


def test_yolo_labels_match_ground_truth(dataset):
    for site in ("general_hospital", "trauma_center"):
        root = dataset / site
        for r in _read_jsonl(root / "ground_truth.jsonl"):
            rows = [line.split() for line in (root / r["label"]).read_text().splitlines()]
            assert len(rows) == len(r["fractures"])
            for row, fracture in zip(rows, r["fractures"]):
                cls, cx, cy, w, h = row[0], *map(float, row[1:])
                assert cls == "0" and 0 < w <= 1 and 0 < h <= 1
                assert cx - w / 2 >= 0 and cx + w / 2 <= 1 + 1e-6 and cy - h / 2 >= 0 and cy + h / 2 <= 1 + 1e-6
                x0, y0, x1, y1 = fracture["box_xyxy"]
                assert cx == pytest.approx((x0 + x1) / 256, abs=1e-5) and w == pytest.approx((x1 - x0) / 128, abs=1e-5)


def test_generate_dataset_is_reproducible(tmp_path):
    kw = dict(sites=["rural_clinic"], images_per_site=3, size=96, seed=11, progress=False)
    generate_dataset(tmp_path / "a", **kw)
    generate_dataset(tmp_path / "b", **kw)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)


def test_dicom_headers_and_pixels(dataset):
    for site in ("general_hospital", "trauma_center"):
        profile = get_profile(site)
        for r in _read_jsonl(dataset / site / "ground_truth.jsonl"):
            ds = pydicom.dcmread(dataset / site / r["dicom"])
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1" and ds.Modality == "DX"
            assert ds.PresentationIntentType == "FOR PRESENTATION" and ds.BurnedInAnnotation == "YES"
            assert ds.Manufacturer == "fracfl synthetic" and ds.InstitutionName == site
            assert ds.PhotometricInterpretation == profile.photometric
            assert ds.BitsAllocated == 16 and ds.BitsStored == profile.bit_depth and ds.HighBit == profile.bit_depth - 1
            assert ds.PixelRepresentation == 0 and float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == 0
            assert [float(v) for v in ds.PixelSpacing] == [r["pixel_spacing_mm"]] * 2 and ds.ImagerPixelSpacing
            assert ds.ImageLaterality == r["laterality"] and ds.BodyPartExamined and ds.ViewPosition in ("AP", "PA")
            assert str(ds.PatientName) == r["dicom_patient_name"] and ds.PatientID == r["dicom_patient_id"]
            assert ds.PatientBirthDate and ds.PatientSex in ("F", "M") and ds.AccessionNumber and ds.StudyDate
            assert ds.WindowWidth > 0 and ds.StudyInstanceUID != ds.SeriesInstanceUID != ds.SOPInstanceUID
            pixels = ds.pixel_array
            assert pixels.shape == (128, 128) and pixels.max() < 2**profile.bit_depth


def test_monochrome1_stores_bone_dark(tmp_path):
    mono2 = dataclasses.replace(GENERAL, name="site", photometric="MONOCHROME2")
    mono1 = dataclasses.replace(GENERAL, name="site", photometric="MONOCHROME1")
    for profile in (mono1, mono2):
        generate_dataset(
            tmp_path / profile.photometric, sites=[profile], images_per_site=2, size=96, dicom=True, progress=False
        )
    for index in range(2):
        name = f"site/dicom/site_{index:05d}.dcm"
        a = pydicom.dcmread(tmp_path / "MONOCHROME1" / name).pixel_array.astype(int)
        b = pydicom.dcmread(tmp_path / "MONOCHROME2" / name).pixel_array.astype(int)
        assert np.array_equal(a, (2**GENERAL.bit_depth - 1) - b)


def test_made_up_identity_stays_in_dicom_only(dataset):
    texts = [(dataset / "meta.csv").read_text(), (dataset / "data.yaml").read_text()]
    texts += [p.read_text() for p in dataset.rglob("*.txt")] + [p.read_text() for p in dataset.rglob("data.yaml")]
    names = [str(p.relative_to(dataset)) for p in dataset.rglob("*")]
    for site in ("general_hospital", "trauma_center"):
        for r in _read_jsonl(dataset / site / "ground_truth.jsonl"):
            dcm = (dataset / site / r["dicom"]).read_bytes()
            for secret in (r["dicom_patient_name"], r["dicom_patient_id"]):
                assert secret.encode() in dcm
                assert not any(secret in t for t in texts) and not any(secret in n for n in names)
                assert not any(secret.encode() in p.read_bytes() for p in (dataset / site / "images").rglob("*.png"))


def test_bad_arguments_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="general_hospital"):
        get_profile("no_such_site")
    cases = [
        (dict(images_per_site=0), "images_per_site"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(val_fraction=-0.1), "val_fraction"),
        (dict(size=16), "size"),
        (dict(sites=["general_hospital", "general_hospital"]), "sites"),
        (dict(sites="general_hospital"), "sites"),
        (dict(seed=-1), "seed"),
    ]
    for kwargs, field in cases:
        with pytest.raises(ConfigError, match=field):
            generate_dataset(tmp_path / "new", progress=False, **kwargs)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(ConfigError, match="out"):
        generate_dataset(tmp_path / "full", progress=False)
    for kwargs, field in [
        (dict(bit_depth=11), "bit_depth"),
        (dict(photometric="RGB"), "photometric"),
        (dict(prevalence=1.5), "prevalence"),
        (dict(body_parts={"skull": 1.0}), "body_parts"),
        (dict(fracture_types={"greenstick": 1.0}), "fracture_types"),
        (dict(png_bits=12), "png_bits"),
        (dict(name="Bad Name"), "name"),
    ]:
        with pytest.raises(ConfigError, match=field):
            dataclasses.replace(GENERAL, **kwargs)
    with pytest.raises(ConfigError, match="fracture"):
        _render(GENERAL, 0, fracture="greenstick")
    with pytest.raises(ConfigError, match="body_part"):
        _render(GENERAL, 0, body_part="skull")
