"""Render docs/img/synth_samples.png: synthetic radiographs of each body part and fracture type,
with their ground-truth boxes, so the docs show what the generator produces.

    .venv/bin/python bench/synth_figure.py [OUT.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from common.synth import get_profile, render_radiograph

# (site, body part, fracture type or False, seed): every body part and fracture type, four sites.
SAMPLES = [
    ("general_hospital", "hand", "transverse", 0),
    ("trauma_center", "forearm", "displaced", 1),
    ("general_hospital", "lower_leg", "oblique", 2),
    ("trauma_center", "femur", "comminuted", 3),
    ("rural_clinic", "forearm", "hairline", 4),
    ("pediatric_wrist", "hand", False, 5),
    ("trauma_center", "lower_leg", "displaced", 6),
    ("pediatric_wrist", "forearm", "transverse", 7),
]
TILE = 320
BOX_COLOUR = (40, 40, 230)  # BGR red


def render_grid(tile: int = TILE, columns: int = 4) -> np.ndarray:
    """BGR grid of 512-px renders shrunk to `tile` px, boxes drawn, captioned."""
    tiles = []
    for site, body_part, fracture, seed in SAMPLES:
        image = render_radiograph(
            get_profile(site), np.random.default_rng(seed), 512, body_part=body_part, fracture=fracture
        )
        grey = image.display if image.display.dtype == np.uint8 else (image.display >> 8).astype(np.uint8)
        scale = tile / grey.shape[0]
        bgr = cv2.cvtColor(cv2.resize(grey, (tile, tile), interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
        for f in image.fractures:
            x0, y0, x1, y1 = (int(round(v * scale)) for v in f.box_xyxy)
            cv2.rectangle(bgr, (x0, y0), (x1, y1), BOX_COLOUR, 1, cv2.LINE_AA)
        kinds = ", ".join(sorted({f.type for f in image.fractures})) or "no fracture"
        caption = np.full((22, tile, 3), 32, np.uint8)
        cv2.putText(
            caption,
            f"{body_part}: {kinds} ({site})",
            (5, 15),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (230, 230, 230),
            1,
            cv2.LINE_AA,
        )
        tiles.append(cv2.copyMakeBorder(np.vstack([bgr, caption]), 3, 3, 3, 3, cv2.BORDER_CONSTANT, value=(32, 32, 32)))
    rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    return np.vstack(rows)


def main(argv: list[str] | None = None) -> None:
    out = Path((argv or sys.argv[1:] or ["docs/img/synth_samples.png"])[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    rgb = cv2.cvtColor(render_grid(), cv2.COLOR_BGR2RGB)
    # A 256-colour palette keeps the PNG small: the image is grey apart from boxes and captions.
    Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
