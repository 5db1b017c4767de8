"""De-identified DICOM plus labels -> a site training set (the folder layout `fracfl train`/`simulate` read).

Everything written is named by pseudonymous SOP Instance UID and derived from the de-identified copy, so the
training folder holds no identifying value: images (grey PNG from the shared DICOM reader), YOLO labels, the
de-identified DICOM itself (for re-reading later), and data.yaml. Splits are drawn per pseudonymous patient, so one
patient's images never sit on both sides of train/validation.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import yaml

from client.dicom.deid import BurnedInAnnotation, Deidentifier, SiteKeys
from client.dicom.pipeline import _encode
from client.inference.analyse import atomic_json, atomic_write
from client.inference.predict import collect
from common.data.labels import read_labels
from common.dicom import DicomRejected, read_dicom_image
from common.errors import ConfigError, DataError

DEFAULT_NAMES = {0: "fracture"}


@dataclass
class IngestReport:
    added: int = 0
    skipped: list[tuple[Path, str, str]] = field(default_factory=list)  # (file, reason code, problem): shown locally only
    splits: dict[str, int] = field(default_factory=dict)  # images in each split of the whole folder after this ingest
    val_fraction: float = 0.25

    def counts(self) -> dict:
        """Counts by reason, the only part written into the training folder (file names may identify patients)."""
        return {"added": self.added, "skipped": dict(Counter(r for _, r, _ in self.skipped)), "splits": self.splits,
                "val_fraction": self.val_fraction}

    def warnings(self) -> list[str]:
        """Why the folder cannot serve a federated run yet: a site trains on `train` and reports on `val`."""
        why = {"train": "the site has nothing to train on",
               "val": "the site cannot report validation metrics (its evaluation in a federated run fails)"}
        return [f"the {split} split is empty: {why[split]}; ingest more patients or change --val-fraction"
                for split in ("train", "val") if not self.splits.get(split)]


def ingest(dicom: str | Path, labels: str | Path, out: str | Path, keys_dir: str | Path, *, burned_in: str = "refuse",
           val_fraction: float = 0.25, names: dict[int, str] | None = None) -> IngestReport:
    """Add every readable DICOM radiograph under `dicom` that has a YOLO label file (same stem, anywhere under
    `labels`; an empty file means no fracture) to the training folder `out`, de-identified."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"--val-fraction {val_fraction}: the share of patients put in validation must be at least 0 "
                          "and below 1")
    out = Path(out)
    _check_same_split(out / "ingest.json", val_fraction)
    deid = Deidentifier(SiteKeys(keys_dir), burned_in)
    label_files = {p.stem: p for p in Path(labels).rglob("*.txt")}
    report = IngestReport(val_fraction=val_fraction)
    for path in collect([dicom]):
        label = label_files.get(path.stem)
        if label is None:
            report.skipped.append((path, "no_label", "no label file with this name"))
            continue
        try:
            image = read_dicom_image(path)
            clean = deid(image.dataset)
            boxes = read_labels(label, len(names or DEFAULT_NAMES))
        except (DicomRejected, DataError) as e:
            report.skipped.append((path, getattr(e, "reason", "bad_label"), e.problem))
            continue
        except BurnedInAnnotation as e:
            report.skipped.append((path, "burned_in_annotation", str(e)))
            continue
        uid = str(clean.SOPInstanceUID)
        split = "val" if _unit(str(clean.PatientID)) < val_fraction else "train"
        for sub in ("images", "labels"):
            (out / sub / split).mkdir(parents=True, exist_ok=True)
        (out / "dicom").mkdir(parents=True, exist_ok=True)
        _, png = cv2.imencode(".png", image.pixels)
        atomic_write(out / "images" / split / f"{uid}.png", png.tobytes())
        atomic_write(out / "labels" / split / f"{uid}.txt", "".join(
            f"{int(c)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for c, cx, cy, w, h in boxes.tolist()).encode())
        atomic_write(out / "dicom" / f"{uid}.dcm", _encode(clean))
        report.added += 1
    (out / "data.yaml").write_text(yaml.safe_dump({"train": "images/train", "val": "images/val",
                                                   "names": names or DEFAULT_NAMES}, sort_keys=False))
    report.splits = {split: sum(1 for _ in (out / "images" / split).glob("*.png")) for split in ("train", "val")}
    atomic_json(out / "ingest.json", report.counts())
    return report


def _unit(key: str) -> float:
    """A stable number in [0, 1) from a pseudonym: the split of a patient never changes between ingests."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def _check_same_split(record: Path, val_fraction: float) -> None:
    """A folder keeps the validation share it was first split with: with another share, some patients' new images
    would land in the other split than their earlier ones (and a re-ingested image in both)."""
    if not record.is_file():
        return
    try:
        before = json.loads(record.read_text()).get("val_fraction")
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(record, f"unreadable ingest record ({e}); it says how this folder was split") from e
    if before is not None and float(before) != val_fraction:
        raise ConfigError(f"--val-fraction {val_fraction}: this folder was split with {before} ({record}); "
                          "another share would move patients between train and val")
