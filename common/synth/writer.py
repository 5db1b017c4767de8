"""Write a multi-site synthetic dataset: one Ultralytics YOLO dataset per site plus a pooled view.

Each image is rendered from its own seed (seed, site, index), so a site's data does not depend
on which other sites are generated or in what order, and any image can be regenerated alone.
"""

from __future__ import annotations

import csv
import json
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import yaml
from rich.progress import Progress

from common.errors import ConfigError
from common.synth.dicom import fictional_identity, write_dicom
from common.synth.profiles import DEFAULT_SITES, SiteProfile, get_profile
from common.synth.render import SynthImage, check_size, render_radiograph

CLASS_NAMES = {0: "fracture"}
META_COLUMNS = (
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
)


def generate_dataset(
    out: Path,
    sites: Sequence[SiteProfile | str] | None = None,
    images_per_site: int = 60,
    size: int = 512,
    val_fraction: float = 0.25,
    seed: int = 0,
    dicom: bool = False,
    progress: bool = True,
) -> Path:
    """Render `images_per_site` radiographs per site into `out` and return the pooled data.yaml.

    Sites may be profiles or preset names (default: general_hospital, trauma_center,
    rural_clinic). `out` must be new or empty, so stale files never mix with a new run.
    """
    out = Path(out)
    profiles = _check_args(out, sites, images_per_site, size, val_fraction, seed)
    out.mkdir(parents=True, exist_ok=True)
    meta_rows: list[dict] = []
    with Progress(disable=not progress) as bar:
        task = bar.add_task("synthetic radiographs", total=len(profiles) * images_per_site)
        for profile in profiles:
            bar.update(task, description=f"synth {profile.name}")
            meta_rows += _write_site(
                out, profile, images_per_site, size, val_fraction, seed, dicom, lambda: bar.advance(task)
            )
    with open(out / "meta.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=META_COLUMNS)
        writer.writeheader()
        writer.writerows(meta_rows)
    pooled = {
        "train": [f"{p.name}/images/train" for p in profiles],
        "val": [f"{p.name}/images/val" for p in profiles],
        "names": CLASS_NAMES,
    }
    return _write_yaml(out / "data.yaml", pooled)


def _check_args(
    out: Path,
    sites: Sequence[SiteProfile | str] | None,
    images_per_site: int,
    size: int,
    val_fraction: float,
    seed: int,
) -> list[SiteProfile]:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"out: {out} exists and is not an empty folder; choose a new folder or delete it")
    if isinstance(images_per_site, bool) or not isinstance(images_per_site, (int, np.integer)) or images_per_site < 1:
        raise ConfigError(f"images_per_site must be an integer >= 1, got {images_per_site!r}")
    check_size(size)
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(sites, (str, SiteProfile)):
        raise ConfigError(f"sites must be a list of profiles or preset names, got a single {type(sites).__name__}")
    profiles = [
        s if isinstance(s, SiteProfile) else get_profile(s) for s in (DEFAULT_SITES if sites is None else sites)
    ]
    names = [p.name for p in profiles]
    if not profiles or len(set(names)) != len(names):
        raise ConfigError(f"sites must be a non-empty list of distinct sites, got {names}")
    return profiles


def _write_site(
    out: Path,
    profile: SiteProfile,
    count: int,
    size: int,
    val_fraction: float,
    seed: int,
    dicom: bool,
    tick: Callable[[], None],
) -> list[dict]:
    """Render one site's images, labels, ground truth (and DICOM); returns its meta.csv rows."""
    root = out / profile.name
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    if dicom:
        (root / "dicom").mkdir()
    site_key = zlib.crc32(profile.name.encode())
    n_val = min(count - 1, max(1, round(count * val_fraction))) if val_fraction > 0 else 0
    val_ids = set(np.random.default_rng([seed, site_key]).permutation(count)[:n_val].tolist())
    rows = []
    with open(root / "ground_truth.jsonl", "w") as gt:
        for index in range(count):
            image_id = f"{profile.name}_{index:05d}"
            split = "val" if index in val_ids else "train"
            rng = np.random.default_rng([seed, site_key, index])
            image = render_radiograph(profile, rng, size)
            cv2.imwrite(str(root / "images" / split / f"{image_id}.png"), image.display)
            (root / "labels" / split / f"{image_id}.txt").write_text(_yolo_label(image, size))
            record = _ground_truth(image_id, split, image)
            if dicom:
                identity = fictional_identity(rng, image.age_years)
                write_dicom(root / "dicom" / f"{image_id}.dcm", image, profile, identity, f"{seed}/{image_id}")
                record.update(
                    dicom=f"dicom/{image_id}.dcm",
                    dicom_patient_name=identity.name,
                    dicom_patient_id=identity.patient_id,
                )
            gt.write(json.dumps(record) + "\n")
            rows.append(
                dict(
                    image_id=image_id,
                    site=profile.name,
                    split=split,
                    body_part=image.body_part,
                    fractured=int(bool(image.fractures)),
                    boxes=len(image.fractures),
                    laterality=image.laterality,
                    width=size,
                    height=size,
                    pixel_spacing_mm=image.pixel_spacing_mm,
                    bit_depth=profile.bit_depth,
                )
            )
            tick()
    _write_yaml(root / "data.yaml", {"train": "images/train", "val": "images/val", "names": CLASS_NAMES})
    return rows


def _yolo_label(image: SynthImage, size: int) -> str:
    """YOLO rows 'class cx cy w h', normalised; empty for an image without fracture."""
    lines = []
    for f in image.fractures:
        x0, y0, x1, y1 = f.box_xyxy
        lines.append(
            f"0 {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} {(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}\n"
        )
    return "".join(lines)


def _ground_truth(image_id: str, split: str, image: SynthImage) -> dict:
    return {
        "image_id": image_id,
        "split": split,
        "image": f"images/{split}/{image_id}.png",
        "label": f"labels/{split}/{image_id}.txt",
        "body_part": image.body_part,
        "laterality": image.laterality,
        "width": image.display.shape[1],
        "height": image.display.shape[0],
        "pixel_spacing_mm": image.pixel_spacing_mm,
        "bit_depth": image.bit_depth,
        "fractures": [
            {
                "box_xyxy": list(f.box_xyxy),
                "type": f.type,
                "displacement_mm": f.displacement_mm,
                "angulation_deg": f.angulation_deg,
                "bone": f.bone,
            }
            for f in image.fractures
        ],
    }


def _write_yaml(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path
