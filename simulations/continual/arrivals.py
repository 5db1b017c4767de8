"""New radiographs arriving at a simulated site each period, with their ground truth kept apart.

What the site gets (`Arrival`: an image file, a patient pseudonym, the body part) is written under the site's own
folder; the truth (`TruthBox`es) goes to a separate file that only the simulated radiologist and the report read,
never the site's model. Image `index` of `site` in `period` is rendered from
`default_rng([seed, ARRIVALS_KEY, crc32(site), period, index])`, so a period's arrivals do not depend on other
sites, on earlier periods or on the order they are made, and a drifted site keeps its stream of seeds.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from common.errors import DataError
from common.synth import SiteProfile, render_radiograph

ARRIVALS_KEY = zlib.crc32(b"fracfl continual arrivals")  # keeps these seeds apart from the period-0 dataset's


@dataclass(frozen=True)
class Arrival:
    """One radiograph as the site sees it: no label."""

    image_id: str  # `{site}_p{period:03d}_{index:05d}`, unique across sites and periods; the image's SOP UID stand-in
    image: Path
    patient: str  # pseudonym; the held-out split is drawn by patient
    body_part: str
    profile: str  # acquisition profile it was made with (the site's, or the one it drifted to)


@dataclass(frozen=True)
class TruthBox:
    """One true fracture, in the image's pixels."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    type: str


def patient_pseudonym(seed: int, site: str, number: int) -> str:
    """A stable made-up patient id: the same patient number at the same site is the same patient in every period."""
    return "p" + hashlib.sha256(f"{seed}/{site}/{number}".encode()).hexdigest()[:16]


def arrive(
    site: str,
    profile: SiteProfile,
    period: int,
    count: int,
    size: int,
    seed: int,
    patients: int,
    images_dir: Path,
    truth_file: Path,
) -> list[Arrival]:
    """Render `count` radiographs for `site` in `period` with `profile` into `images_dir` (PNG, bone bright, as the
    period-0 data) and their ground truth into `truth_file` (JSON Lines, overwritten); returns the arrivals."""
    site_key = zlib.crc32(site.encode())
    numbers = np.random.default_rng([seed, ARRIVALS_KEY, site_key, period]).integers(0, patients, size=count)
    images_dir.mkdir(parents=True, exist_ok=True)
    truth_file.parent.mkdir(parents=True, exist_ok=True)
    arrivals = []
    with truth_file.open("w", encoding="utf-8") as truth:
        for index in range(count):
            image_id = f"{site}_p{period:03d}_{index:05d}"
            image = render_radiograph(
                profile, np.random.default_rng([seed, ARRIVALS_KEY, site_key, period, index]), size
            )
            path = images_dir / f"{image_id}.png"
            cv2.imwrite(str(path), image.display)
            boxes = [{"box": [float(v) for v in f.box_xyxy], "type": f.type} for f in image.fractures]
            truth.write(json.dumps({"image_id": image_id, "fractures": boxes}) + "\n")
            arrivals.append(
                Arrival(
                    image_id, path, patient_pseudonym(seed, site, int(numbers[index])), image.body_part, profile.name
                )
            )
    return arrivals


def read_truth(truth_file: Path) -> dict[str, list[TruthBox]]:
    """image_id -> its true fractures, as `arrive` wrote them; a malformed line raises DataError with its number."""
    out: dict[str, list[TruthBox]] = {}
    with truth_file.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                rec = json.loads(line)
                out[str(rec["image_id"])] = [
                    TruthBox(tuple(map(float, b["box"])), str(b["type"])) for b in rec["fractures"]
                ]
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(truth_file, f"not a ground-truth record ({e})", lineno) from None
    return out
