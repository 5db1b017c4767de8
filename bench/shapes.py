"""Synthetic "shapes" sites for bench/continual.py: rectangles on noise that a tiny detector learns in a few hundred
CPU steps, in two appearances. `bright` is what the sites' original data and the public pretraining show; `dark`
(darker than the background instead of brighter) is what arrives at the feedback site after a drift, and a model
that has only seen `bright` misses it. Not radiographs: the synthetic radiographs' fractures are a few pixels wide and need far
more training than a CPU benchmark can give (docs/benchmarks.md), so this task measures the loop's mechanics on a
signal a small model can learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from simulations.continual.arrivals import Arrival, TruthBox, patient_pseudonym

CONTRAST = {"bright": 120.0, "dark": -45.0}  # added to the background (mean 60, sd 15)


def _image(rng: np.random.Generator, size: int, appearance: str, fractured: bool) -> tuple[np.ndarray, list]:
    img = rng.normal(60, 15, (size, size))
    boxes = []
    if fractured:
        w, h = rng.integers(size // 4, size // 2, 2)
        x, y = rng.integers(2, size - 2 - w), rng.integers(2, size - 2 - h)
        img[y : y + h, x : x + w] += CONTRAST[appearance]
        boxes.append((float(x), float(y), float(x + w), float(y + h)))
    return img.clip(0, 255).astype(np.uint8), boxes


def shapes_site(root: Path, n: int, size: int, appearance: str, seed: int, prevalence: float = 0.5) -> Path:
    """A site's dataset (75 % train, 25 % val, one patient per image in patients.csv); returns its data.yaml."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        split = "val" if i % 4 == 0 else "train"
        img, boxes = _image(rng, size, appearance, rng.random() < prevalence)
        for sub in ("images", "labels"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
        stem = f"{root.name}_{i:05d}"  # unique across sites: the server's pooled validation lists every site's
        Image.fromarray(img).save(root / "images" / split / f"{stem}.png")
        label = "".join(
            f"0 {(x0 + x1) / 2 / size} {(y0 + y1) / 2 / size} {(x1 - x0) / size} {(y1 - y0) / size}\n"
            for x0, y0, x1, y1 in boxes
        )
        (root / "labels" / split / f"{stem}.txt").write_text(label)
        rows.append(f"{stem},{patient_pseudonym(seed, root.name, i)}")
    (root / "patients.csv").write_text("image,patient\n" + "\n".join(rows) + "\n")
    data = root / "data.yaml"
    data.write_text("train: images/train\nval: images/val\nnames: {0: fracture}\n")
    return data


def shapes_arrivals(
    site: str, appearance: str, period: int, count: int, size: int, seed: int, patients: int, folder: Path
) -> list[tuple[Arrival, list[TruthBox]]]:
    """`count` unlabelled images arriving at `site` in `period`, each with its ground truth (kept apart, as
    simulations/continual/arrivals.py keeps it)."""
    rng = np.random.default_rng([seed, period, 7919])
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        img, boxes = _image(rng, size, appearance, rng.random() < 0.5)
        image_id = f"{site}_p{period:03d}_{i:05d}"
        path = folder / f"{image_id}.png"
        Image.fromarray(img).save(path)
        patient = patient_pseudonym(seed, site, int(rng.integers(patients)))
        out.append((Arrival(image_id, path, patient, "shapes", appearance), [TruthBox(b, "transverse") for b in boxes]))
    return out
