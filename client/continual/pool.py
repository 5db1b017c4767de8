"""The site's training pool: reviewed cases from the feedback store as immutable, fingerprinted versions in D/pool/.

Layout (D is the site's training folder, as `fracfl ingest` writes it)::

    D/pool/v0003/images/{train,test}/<uid>.png    the de-identified kept copies, as reviewers saw them
    D/pool/v0003/labels/{train,test}/<uid>.txt    YOLO labels from the verdicts (client/continual/labels.py)
    D/pool/v0003/data.yaml                        train: and test: keys, the class names of D
    D/pool/v0003/patients.csv                     image -> patient pseudonym (patient-level DP covers the pool)
    D/pool/v0003/pool.json                        version, fingerprint, counts, changes since the previous version
    D/pool/current.json                           the current version
    D/pool/last-round.json                        the version the site's last training round used

`test` is the held-out split: a patient is held out when `in_holdout` says so under the site's salt, or when D's
own test split already holds them; either way none of their images is ever trained on. A version is only made when
its content changed; its fingerprint covers every image's bytes, its split and its labels. pool.json holds counts
only (no image or patient identifiers), so it can be shown or summarised anywhere at the site.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import yaml

from client.continual.config import PoolConfig
from client.continual.holdout import holdout_salt, in_holdout
from client.continual.labels import NEGATIVE, POSITIVE, Labels, image_labels, yolo_rows
from client.feedback.store import FeedbackStore, ImageRow
from client.review.images import kept_pixels
from common.data.spec import DEFAULT_NAMES, load_spec
from common.errors import DataError, FracflError
from common.privacy.fingerprint import fingerprint, image_hashes
from common.privacy.patients import PATIENTS_FILE, read_patients, write_patients
from common.utils.durable import locked, replace_atomic

POOL_DIR = "pool"
CURRENT = "current.json"
LAST_ROUND = "last-round.json"
INFO = "pool.json"
TRAIN, HOLDOUT = "train", "test"
KINDS = (POSITIVE, NEGATIVE)
SAFE_STEM = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")  # a UID as a file name: nothing that leaves the folder


@dataclass(frozen=True)
class PoolVersion:
    """One immutable version of the pool; `info` is its pool.json."""

    version: int
    fingerprint: str
    root: Path
    info: dict[str, Any]
    holdout_split: str = HOLDOUT

    @property
    def data_yaml(self) -> Path:
        return self.root / "data.yaml"

    @property
    def name(self) -> str:
        return self.root.name


@dataclass(frozen=True)
class Entry:
    """One image the pool should hold: its name (pseudonymous SOP Instance UID), split, labels and source."""

    stem: str
    split: str
    patient: str | None
    labels: Labels
    image_ref: str


@dataclass(frozen=True)
class Plan:
    """What a build would put in the pool now, and why the other images of the store are not in it (counts)."""

    entries: list[Entry]
    skipped: Counter[str]
    names: dict[int, str]
    holdout_fraction: float


def _dir(data_dir: Path, version: int) -> Path:
    return Path(data_dir) / POOL_DIR / f"v{version:04d}"


def load_version(root: Path) -> PoolVersion:
    """The version in folder `root`; DataError when its pool.json is missing or unreadable."""
    try:
        info = json.loads((root / INFO).read_text())
        return PoolVersion(int(info["version"]), str(info["fingerprint"]), root, info)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(root / INFO, f"unreadable pool version ({e})") from e


def current_pool(data_dir: Path) -> PoolVersion | None:
    """The version D/pool/current.json names, or None when the site has no pool yet."""
    return _named(Path(data_dir), CURRENT)


def last_round_pool(data_dir: Path) -> PoolVersion | None:
    """The version the site's last training round used, or None."""
    return _named(Path(data_dir), LAST_ROUND)


def record_round(data_dir: Path, pool: PoolVersion) -> None:
    """Note that a training round used `pool` (what `fracfl site pool` compares the next version with)."""
    replace_atomic(Path(data_dir) / POOL_DIR / LAST_ROUND, json.dumps({"version": pool.version}) + "\n")


def _named(data_dir: Path, pointer: str) -> PoolVersion | None:
    path = data_dir / POOL_DIR / pointer
    if not path.is_file():
        return None
    try:
        version = int(json.loads(path.read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(path, f"unreadable pool pointer ({e})") from e
    return load_version(_dir(data_dir, version))


def _names(data_dir: Path, store: FeedbackStore) -> dict[int, str]:
    """D's class names (the pool must share them to train beside D); the store's must agree where it has any."""
    has_data = any((data_dir / n).is_file() for n in ("data.yaml", "data.yml")) or (data_dir / "images").is_dir()
    names = load_spec(data_dir).names if has_data else {}
    theirs = dict(enumerate(store.class_names()))
    if names and theirs and theirs != names:
        raise FracflError(
            f"{store.path}: the feedback store's class names {list(theirs.values())} differ from those of the site "
            f"data {data_dir} {list(names.values())}; labels would mean other classes"
        )
    return names or theirs or dict(DEFAULT_NAMES)


def _held_out_patients(data_dir: Path) -> set[str]:
    """Patients D's own test split holds (ingest's --test-fraction): they stay held out in the pool too."""
    test = data_dir / "images" / HOLDOUT
    if not test.is_dir():
        return set()
    patients = read_patients(data_dir)
    return {patients[p.stem] for p in test.iterdir() if p.stem in patients}


def plan_pool(store: FeedbackStore, data_dir: Path, cfg: PoolConfig) -> Plan:
    """Decide every image of the store: its labels and split, or why it stays out (see labels.py)."""
    data_dir = Path(data_dir)
    names = _names(data_dir, store)
    salt = holdout_salt(data_dir)
    held = _held_out_patients(data_dir)
    verdicts: dict[int, list] = {}
    for v in store.verdicts():
        verdicts.setdefault(v.image_id, []).append(v)
    by_uid: dict[str, list[tuple[ImageRow, Labels]]] = {}
    for row in sorted(store.worklist(), key=lambda r: r.id):  # one sop_uid may be analysed by several models
        by_uid.setdefault(row.sop_uid, []).append((row, image_labels(row, verdicts.get(row.id, []))))
    entries, skipped, gone = [], Counter[str](), store.withdrawn()
    for uid, analyses in by_uid.items():
        usable = [(row, lab) for row, lab in analyses if lab.usable]
        withdrawn = uid in gone  # on any analysis, or before fracfl analysed it
        if withdrawn or not usable or not SAFE_STEM.match(uid):
            skipped["withdrawn" if withdrawn else analyses[-1][1].kind if not usable else "unsafe_name"] += 1
            continue
        row, lab = max(usable, key=lambda p: p[1].decided_by)  # the analysis reviewed last speaks for the image
        bad = [b for b in lab.boxes if b.cls >= len(names)]
        if bad:
            raise FracflError(
                f"{store.path}: image {row.id} has a box of class {bad[0].cls}, but the site's data has "
                f"{len(names)} class(es) {list(names.values())}"
            )
        key = row.patient or f"image:{uid}"
        split = HOLDOUT if key in held or in_holdout(key, cfg.holdout_fraction, salt) else TRAIN
        entries.append(Entry(uid, split, row.patient, lab, row.image_ref))
    return Plan(entries, skipped, names, cfg.holdout_fraction)


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's header, without decoding it."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise DataError(path, "not a PNG file")
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def _previous_files(pool: PoolVersion | None) -> dict[str, tuple[str, Path]]:
    """stem -> (split, image path) of a version's images."""
    if pool is None:
        return {}
    return {p.stem: (split, p) for split in (TRAIN, HOLDOUT) for p in (pool.root / "images" / split).glob("*.png")}


Item = tuple[str, str, str]  # (split, kind, label file text) of one image


def folder_items(folder: Path | None) -> dict[str, Item]:
    """stem -> Item for every image of a pool folder (a version, or one being built); empty for None."""
    out: dict[str, Item] = {}
    for split in (TRAIN, HOLDOUT) if folder is not None else ():
        for label in (folder / "labels" / split).glob("*.txt"):
            text = label.read_text()
            out[label.stem] = (split, POSITIVE if text.strip() else NEGATIVE, text)
    return out


def plan_items(plan: Plan, previous: PoolVersion | None) -> dict[str, Item]:
    """stem -> Item of what a build would write now; the label text is worked out only for images `previous`
    holds (from their stored size), since any other image counts as added whatever its labels."""
    before = _previous_files(previous)
    return {
        e.stem: (
            e.split,
            e.labels.kind,
            yolo_rows(e.labels.boxes, *_png_size(before[e.stem][1])) if e.stem in before else "",
        )
        for e in plan.entries
    }


def changes(before: Mapping[str, Item], after: Mapping[str, Item], since: int | None) -> dict[str, Any]:
    """Images added, changed (other labels or split) and removed from `before` to `after`, as counts by kind
    (added and changed by their new kind, removed by their old one); `since` names the earlier version."""
    out: dict[str, Any] = {"since": since, **{k: dict.fromkeys(KINDS, 0) for k in ("added", "changed", "removed")}}
    for stem, (split, kind, text) in after.items():
        if stem not in before:
            out["added"][kind] += 1
        elif before[stem][0] != split or before[stem][2] != text:
            out["changed"][kind] += 1
    for stem, (_, kind, _) in before.items():
        if stem not in after:
            out["removed"][kind] += 1
    return out


def summarise(folder: Path) -> dict[str, dict[str, int]]:
    """Counts per split of a pool folder: images, positives, hard negatives, boxes, patients."""
    patients, items = read_patients(folder), folder_items(folder)
    out = {}
    for split in (TRAIN, HOLDOUT):
        mine = {stem: item for stem, item in items.items() if item[0] == split}
        out[split] = {
            "images": len(mine),
            **{kind: sum(1 for _, k, _ in mine.values() if k == kind) for kind in KINDS},
            "boxes": sum(len(text.splitlines()) for _, _, text in mine.values()),
            "patients": len({patients.get(stem, f"image:{stem}") for stem in mine}),
        }
    return out


def _locked(data_dir: Path) -> contextlib.AbstractContextManager[None]:
    """One build at a time per site folder."""
    return locked(Path(data_dir) / POOL_DIR / ".lock")


def build_pool(store: FeedbackStore, data_dir: Path, cfg: PoolConfig) -> PoolVersion:
    """Make the next version from the store's verdicts, or return the current one when nothing changed."""
    data_dir = Path(data_dir)
    with _locked(data_dir):
        previous = current_pool(data_dir)
        if previous is not None and float(previous.info.get("holdout_fraction", cfg.holdout_fraction)) != (
            cfg.holdout_fraction
        ):
            raise FracflError(
                f"[continual] holdout_fraction {cfg.holdout_fraction}: the pool of {data_dir} was split with "
                f"{previous.info['holdout_fraction']}; another share would move patients into training"
            )
        plan = plan_pool(store, data_dir, cfg)
        existing = [int(p.name[1:]) for p in (data_dir / POOL_DIR).glob("v[0-9]*") if p.name[1:].isdigit()]
        version = max(existing, default=0) + 1
        stage = data_dir / POOL_DIR / f".staging-v{version:04d}"
        shutil.rmtree(stage, ignore_errors=True)
        try:
            skipped = _write(stage, plan, _previous_files(previous))
            fp = _fingerprint(stage)
            if previous is not None and fp == previous.fingerprint:
                shutil.rmtree(stage)
                return previous
            info = {
                "version": version,
                "fingerprint": fp,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "holdout_fraction": plan.holdout_fraction,
                "holdout_split": HOLDOUT,
                "counts": summarise(stage),
                "changes": changes(
                    folder_items(previous.root if previous else None),
                    folder_items(stage),
                    previous.version if previous else None,
                ),
                "skipped": dict(sorted((plan.skipped + skipped).items())),
            }
            (stage / INFO).write_text(json.dumps(info, indent=1) + "\n")
            os.rename(stage, _dir(data_dir, version))
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        replace_atomic(data_dir / POOL_DIR / CURRENT, json.dumps({"version": version}) + "\n")
        return load_version(_dir(data_dir, version))


def _write(stage: Path, plan: Plan, previous: Mapping[str, tuple[str, Path]]) -> Counter[str]:
    """The version's files in `stage`; returns the images left out because their kept copy cannot be read (an
    image an earlier version holds is taken from there, so a purged kept copy does not drop it)."""
    for sub in ("images", "labels"):
        for split in (TRAIN, HOLDOUT):
            (stage / sub / split).mkdir(parents=True)
    skipped, patients = Counter[str](), {}
    for e in plan.entries:
        image = stage / "images" / e.split / f"{e.stem}.png"
        if e.stem in previous:
            os.link(previous[e.stem][1], image)
        else:
            try:
                ok, png = cv2.imencode(".png", kept_pixels(e.image_ref))
            except FracflError:
                skipped["image_unreadable"] += 1
                continue
            if not ok:
                skipped["image_unreadable"] += 1
                continue
            image.write_bytes(png.tobytes())
            image.chmod(0o444)
        (stage / "labels" / e.split / f"{e.stem}.txt").write_text(yolo_rows(e.labels.boxes, *_png_size(image)))
        if e.patient:
            patients[e.stem] = e.patient
    (stage / PATIENTS_FILE).write_bytes(write_patients(patients))
    (stage / "data.yaml").write_text(
        yaml.safe_dump({"train": f"images/{TRAIN}", "test": f"images/{HOLDOUT}", "names": plan.names}, sort_keys=False)
    )
    return skipped


def _fingerprint(folder: Path) -> str:
    """Content of a version: every image's bytes (common.privacy.fingerprint's hashing), its split and labels."""
    items = []
    for split in (TRAIN, HOLDOUT):
        images = sorted((folder / "images" / split).glob("*.png"))
        for path, digest in zip(images, image_hashes(images), strict=True):
            label = (folder / "labels" / split / f"{path.stem}.txt").read_bytes()
            items.append(f"{split}/{path.stem}:{digest}:{hashlib.sha256(label).hexdigest()}")
    return fingerprint(items)
