"""De-identified DICOM plus labels -> a site training set (the folder layout `fracfl train`/`simulate` read).

Everything written is named by pseudonymous SOP Instance UID and derived from the de-identified copy, so the
training folder holds no identifying value: images (grey PNG from the shared DICOM reader), YOLO labels, the
de-identified DICOM itself (for re-reading later), and data.yaml. Splits are drawn per pseudonymous patient, so one
patient's images never sit on both sides of train/validation/test. The test split (`--test-fraction`) is the site's
held-out set: drawn by a keyed hash under the site's own salt (client/continual/holdout.py), the same rule the
feedback pool holds patients out by, and never trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import yaml

from client.continual.holdout import holdout_salt, in_holdout
from client.dicom.deid import BurnedInAnnotation, Deidentifier, SiteKeys
from client.dicom.pipeline import PROCESSING_ERROR, _encode, processing_problem
from client.inference.analyse import atomic_json, atomic_write
from client.inference.predict import collect
from common.data.labels import read_labels
from common.dicom import DicomRejected, read_dicom_image, redact
from common.errors import ConfigError, DataError
from common.privacy.patients import PATIENTS_FILE, read_patients, write_patients
from common.utils.staged import recover, staged_folder

DEFAULT_NAMES = {0: "fracture"}


@dataclass
class IngestReport:
    added: int = 0
    skipped: list[tuple[Path, str, str]] = field(
        default_factory=list
    )  # (file, reason code, problem): shown locally only
    splits: dict[str, int] = field(default_factory=dict)  # images in each split of the whole folder after this ingest
    val_fraction: float = 0.25
    test_fraction: float = 0.0

    def counts(self) -> dict:
        """Counts by reason, the only part written into the training folder (file names may identify patients)."""
        return {
            "added": self.added,
            "skipped": dict(Counter(r for _, r, _ in self.skipped)),
            "splits": self.splits,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
        }

    def warnings(self) -> list[str]:
        """Why the folder cannot serve a federated run yet: a site trains on `train` and reports on `val`."""
        why = {
            "train": "the site has nothing to train on",
            "val": "the site cannot report validation metrics (its evaluation in a federated run fails)",
        }
        return [
            f"the {split} split is empty: {why[split]}; ingest more patients or change --val-fraction"
            for split in ("train", "val")
            if not self.splits.get(split)
        ]


def ingest(
    dicom: str | Path,
    labels: str | Path,
    out: str | Path,
    keys_dir: str | Path,
    *,
    burned_in: str = "refuse",
    val_fraction: float = 0.25,
    test_fraction: float | None = None,
    names: dict[int, str] | None = None,
) -> IngestReport:
    """Add every readable DICOM radiograph under `dicom` that has a YOLO label file (same stem, anywhere under
    `labels`; an empty file means no fracture) to the training folder `out`, de-identified.

    `test_fraction` None keeps the share the folder was split with (0 for a new folder, or one split before the
    test split existed); patients held out for test are drawn first, the rest split into train and val as before.

    Each input is handled on its own: a bad one is reported in `skipped` and the others are finished. The folder is
    rebuilt beside `out` and swapped in at the end (common.utils.staged), so it is always complete: the old version
    or the new one, never images without `data.yaml` and `ingest.json`."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(
            f"--val-fraction {val_fraction}: the share of patients put in validation must be at least 0 and below 1"
        )
    redact.install()  # no DICOM value in any log line or warning (common.dicom.redact)
    out = Path(out)
    recover(out)
    test_fraction = _check_same_split(out / "ingest.json", val_fraction, test_fraction)
    deid = Deidentifier(SiteKeys(keys_dir), burned_in)
    label_files = {p.stem: p for p in Path(labels).rglob("*.txt")}
    report = IngestReport(val_fraction=val_fraction, test_fraction=test_fraction)
    names = names or DEFAULT_NAMES
    splits = ("train", "val", "test") if test_fraction else ("train", "val")
    with staged_folder(out) as stage:
        patients = read_patients(stage)  # image -> pseudonymous patient: the privacy unit of DP training
        split_of = _splitter(val_fraction, test_fraction, holdout_salt(stage) if test_fraction else b"")
        for path in collect([dicom]):
            with redact.handling():
                entry = _prepare(path, label_files.get(path.stem), deid, names, split_of, report)
            if entry is not None:
                files, (image, patient) = entry
                for relative, data in files.items():
                    (stage / relative).parent.mkdir(parents=True, exist_ok=True)
                    atomic_write(stage / relative, data)
                patients[image] = patient
                report.added += 1
        atomic_write(stage / PATIENTS_FILE, write_patients(patients))
        for split in splits:  # an empty split is still a split: data.yaml names it, so it must load
            (stage / "images" / split).mkdir(parents=True, exist_ok=True)
        atomic_write(
            stage / "data.yaml",
            yaml.safe_dump({**{s: f"images/{s}" for s in splits}, "names": names}, sort_keys=False).encode(),
        )
        report.splits = {split: sum(1 for _ in (stage / "images" / split).glob("*.png")) for split in splits}
        atomic_json(stage / "ingest.json", report.counts())
    return report


def _splitter(val_fraction: float, test_fraction: float, salt: bytes) -> Callable[[str], str]:
    """The split of a patient pseudonym: held out for test first (keyed by the site's salt), then val by the
    unkeyed rule folders were always split with, so patients outside the test split keep their split."""

    def split(patient: str) -> str:
        if test_fraction and in_holdout(patient, test_fraction, salt):
            return "test"
        return "val" if _unit(patient) < val_fraction else "train"

    return split


def _prepare(
    path: Path,
    label: Path | None,
    deid: Deidentifier,
    names: dict[int, str],
    split_of: Callable[[str], str],
    report: IngestReport,
) -> tuple[dict[str, bytes], tuple[str, str]] | None:
    """The files one input adds (relative path -> bytes), all made in memory before any is written, and its (image,
    pseudonymous patient); None, with the reason in `report.skipped`, when the input cannot be used."""
    if label is None:
        report.skipped.append((path, "no_label", "no label file with this name"))
        return None
    try:
        image = read_dicom_image(path)
        clean = deid(image.dataset)
        boxes = read_labels(label, len(names))
        uid = str(clean.SOPInstanceUID)
        split = split_of(str(clean.PatientID))
        ok, png = cv2.imencode(".png", image.pixels)
        if not ok:
            raise RuntimeError("PNG encoding failed")
        return {
            f"images/{split}/{uid}.png": png.tobytes(),
            f"labels/{split}/{uid}.txt": "".join(
                f"{int(c)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for c, cx, cy, w, h in boxes.tolist()
            ).encode(),
            f"dicom/{uid}.dcm": _encode(clean),
        }, (uid, str(clean.PatientID))
    except DicomRejected as e:
        report.skipped.append((path, e.reason, redact.redact(e.problem)))
    except DataError as e:
        report.skipped.append((path, "bad_label", e.problem))
    except BurnedInAnnotation as e:
        report.skipped.append((path, "burned_in_annotation", str(e)))
    except Exception as e:  # one odd file must not stop the batch: reported, and the others are finished
        report.skipped.append((path, PROCESSING_ERROR, processing_problem(e)))
    return None


def _unit(key: str) -> float:
    """A stable number in [0, 1) from a pseudonym: the split of a patient never changes between ingests."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def _check_same_split(record: Path, val_fraction: float, test_fraction: float | None) -> float:
    """A folder keeps the validation and test shares it was first split with: with another share, some patients'
    new images would land in another split than their earlier ones (and a re-ingested image in both). Returns the
    test share to use: the one asked for, else the folder's (0 for a new folder or one made before test splits)."""
    if test_fraction is not None and not 0.0 <= test_fraction < 1.0:
        raise ConfigError(
            f"--test-fraction {test_fraction}: the share of patients held out for test must be at least 0 and below 1"
        )
    if not record.is_file():
        return test_fraction or 0.0
    try:
        d = json.loads(record.read_text())
        before, before_test = d.get("val_fraction"), float(d.get("test_fraction", 0.0))
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise DataError(record, f"unreadable ingest record ({e}); it says how this folder was split") from e
    if before is not None and float(before) != val_fraction:
        raise ConfigError(
            f"--val-fraction {val_fraction}: this folder was split with {before} ({record}); "
            "another share would move patients between train and val"
        )
    if test_fraction is not None and test_fraction != before_test:
        raise ConfigError(
            f"--test-fraction {test_fraction}: this folder was split with {before_test} ({record}); "
            "another share would move patients between the test split and the others"
        )
    return before_test
