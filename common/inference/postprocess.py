"""Decoding the head's output into boxes in original-image pixels: one implementation for evaluation and predict."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ultralytics.utils.nms import non_max_suppression

from common.config import EvalConfig

LOW_CONF = 0.001  # keep low-scoring boxes: mAP and ROC need the whole score range, the operating point filters later


def decode(
    raw: torch.Tensor, cfg: EvalConfig, nc: int, bounds: Sequence[tuple[float, float, float, float]] | None = None
) -> list[torch.Tensor]:
    """NMS on the head's (B, 4 + nc, anchors) output; rows are x1, y1, x2, y2, score, cls in network pixels.

    `bounds` (per image: x1, y1, x2, y2 of the image inside the letterbox, see `image_bounds`) clips the boxes
    *before* NMS. Clipping only afterwards turned boxes that ran past the edge into identical duplicates that NMS
    had already let through (they overlapped less before clipping). Ultralytics' NMS has a wall-clock budget per
    image that silently drops boxes on a slow CPU; it is lifted so results never depend on machine load.
    """
    if bounds is not None:
        raw = clip_to_image(raw, bounds)
    return non_max_suppression(
        raw, conf_thres=LOW_CONF, iou_thres=cfg.nms_iou, max_det=cfg.max_det, nc=nc, max_time_img=1e6
    )


def image_bounds(gain: float, pad: tuple[float, float], orig_hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """Where the original image lies in the letterboxed input: (x1, y1, x2, y2) in network pixels."""
    return pad[0], pad[1], pad[0] + orig_hw[1] * gain, pad[1] + orig_hw[0] * gain


def clip_to_image(raw: torch.Tensor, bounds: Sequence[tuple[float, float, float, float]]) -> torch.Tensor:
    """The head's centre-size boxes (rows 0..3 of each (4 + nc, anchors) output) clipped to each image's bounds."""
    b = torch.as_tensor(bounds, dtype=raw.dtype, device=raw.device)[:, :, None]  # (B, 4, 1)
    cx, cy, w, h = raw[:, 0:1], raw[:, 1:2], raw[:, 2:3], raw[:, 3:4]
    x1, x2 = (cx - w / 2).clamp_min(b[:, 0:1]), (cx + w / 2).clamp_max(b[:, 2:3])
    y1, y2 = (cy - h / 2).clamp_min(b[:, 1:2]), (cy + h / 2).clamp_max(b[:, 3:4])
    x2, y2 = torch.maximum(x1, x2), torch.maximum(y1, y2)  # a box wholly outside becomes empty, not inverted
    return torch.cat([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, raw[:, 4:]], dim=1)


def to_original(det: np.ndarray, gain: float, pad: tuple[float, float], orig_hw: tuple[int, int]) -> np.ndarray:
    """Boxes from letterboxed network pixels back to the original image's pixels, clipped to it."""
    out = det.copy()
    out[:, [0, 2]] = ((det[:, [0, 2]] - pad[0]) / gain).clip(0, orig_hw[1])
    out[:, [1, 3]] = ((det[:, [1, 3]] - pad[1]) / gain).clip(0, orig_hw[0])
    return out
