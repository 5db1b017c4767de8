"""Run the detector over a dataset and score it: the one evaluation path for `fracfl train/evaluate` and sites."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from common import offline  # noqa: F401
from common.config import EvalConfig
from common.data.augment import boxes_to_pixels
from common.data.dataset import DetectionDataset, collate
from common.metrics import DetectionReport, ImageResult, evaluate_detections
from common.utils.progress import progress_bar
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


@torch.inference_mode()
def predict_dataset(
    model: nn.Module, data: DetectionDataset, cfg: EvalConfig, device: torch.device, progress: bool = True
) -> list[ImageResult]:
    """Predictions and ground truth for every image of `data`, both in original-image pixels."""
    model.to(device).eval()
    nc = len(model.names)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate)
    results = []
    with progress_bar(progress) as bar:
        task = bar.add_task("evaluate", total=len(data))
        for batch in loader:
            raw = model(batch["img"].to(device))[0]
            for det, i in zip(decode(raw, cfg, nc), batch["index"].tolist()):
                s = data.prepared(i)
                gt = boxes_to_pixels(data.labels[i], s.orig_hw[1], s.orig_hw[0])
                pred = to_original(det.cpu().numpy(), s.gain, s.pad, s.orig_hw)
                results.append(ImageResult(image_id=data.images[i].name, pred=pred, gt=gt))
            bar.update(task, advance=len(batch["index"]))
    return results


def evaluate_model(
    model: nn.Module, data: DetectionDataset, cfg: EvalConfig, device: torch.device, progress: bool = True
) -> DetectionReport:
    """Box-level and image-level metrics of `model` on `data` at the configured operating point."""
    results = predict_dataset(model, data, cfg, device, progress)
    return evaluate_detections(results, dict(model.names), conf=cfg.conf, iou=cfg.iou)
