"""Decoding the head's output into boxes in original-image pixels: one implementation for evaluation and predict."""

from __future__ import annotations

import numpy as np
import torch

from common.config import EvalConfig
from ultralytics.utils.nms import non_max_suppression

LOW_CONF = 0.001  # keep low-scoring boxes: mAP and ROC need the whole score range, the operating point filters later


def decode(raw: torch.Tensor, cfg: EvalConfig, nc: int) -> list[torch.Tensor]:
    """NMS on the head's (B, 4 + nc, anchors) output; rows are x1, y1, x2, y2, score, cls in network pixels.

    Ultralytics' NMS has a wall-clock budget per image that silently drops boxes on a slow CPU; it is lifted so
    results never depend on machine load.
    """
    return non_max_suppression(
        raw, conf_thres=LOW_CONF, iou_thres=cfg.nms_iou, max_det=cfg.max_det, nc=nc, max_time_img=1e6
    )


def to_original(det: np.ndarray, gain: float, pad: tuple[float, float], orig_hw: tuple[int, int]) -> np.ndarray:
    """Boxes from letterboxed network pixels back to the original image's pixels, clipped to it."""
    out = det.copy()
    out[:, [0, 2]] = ((det[:, [0, 2]] - pad[0]) / gain).clip(0, orig_hw[1])
    out[:, [1, 3]] = ((det[:, [1, 3]] - pad[1]) / gain).clip(0, orig_hw[0])
    return out
