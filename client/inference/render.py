"""The picture a reader looks at: the radiograph with finding boxes, labels and (optionally) the heatmap over it."""

from __future__ import annotations

import cv2
import numpy as np

BOX_COLOUR = (255, 200, 0)  # RGB: amber reads well over both the grey image and the heatmap
HEAT_ALPHA = 0.35


def annotate(
    image: np.ndarray, findings: list[dict], heatmap: np.ndarray | None = None, header: str | None = None
) -> np.ndarray:
    """RGB uint8 (H, W, 3): grey `image` with the heatmap blended in, a box and 'type score' label per finding."""
    rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if heatmap is not None:
        heat = cv2.applyColorMap((np.clip(heatmap, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        weight = (HEAT_ALPHA * np.clip(heatmap, 0, 1))[..., None]  # cold regions keep the original grey
        rgb = (rgb * (1 - weight) + heat * weight).astype(np.uint8)
    h, w = image.shape
    thick = max(1, round(max(h, w) / 400))
    scale = max(0.35, max(h, w) / 1400)
    for f in findings:
        x1, y1, x2, y2 = (int(round(v)) for v in f["box"])
        cv2.rectangle(rgb, (x1, y1), (x2, y2), BOX_COLOUR, thick)
        label = f"{f['class_name']} {f['score']:.2f}"
        cv2.putText(rgb, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, scale, BOX_COLOUR, thick, cv2.LINE_AA)
    if header:
        cv2.putText(
            rgb,
            header,
            (4, max(12, int(18 * scale))),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            thick,
            cv2.LINE_AA,
        )
    return np.ascontiguousarray(rgb)
