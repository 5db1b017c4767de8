"""Run the detector over a dataset and score it: the one evaluation path for `fracfl train/evaluate` and sites."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from common import offline  # noqa: F401
from common.config import EvalConfig
from common.data.augment import boxes_to_pixels
from common.data.dataset import DetectionDataset, collate, model_input
from common.inference.backend import Backend, as_backend
from common.inference.postprocess import decode, image_bounds, to_original
from common.metrics import DetectionReport, ImageResult, evaluate_detections
from common.utils.progress import progress_bar


def predict_dataset(
    model: nn.Module | Backend, data: DetectionDataset, cfg: EvalConfig, device: torch.device, progress: bool = True
) -> list[ImageResult]:
    """Predictions and ground truth for every image of `data`, both in original-image pixels, from any backend.
    The model is moved to `device` before inference mode starts (models are cached and reloaded every round)."""
    backend = as_backend(model, device, data.imgsz)
    nc = len(backend.names)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate)
    results = []
    with progress_bar(progress) as bar, torch.inference_mode():
        task = bar.add_task("evaluate", total=len(data))
        for batch in loader:
            raw = backend(model_input(batch["img"], getattr(backend, "device", torch.device("cpu"))))
            samples = [data.prepared(i) for i in batch["index"].tolist()]
            bounds = [image_bounds(s.gain, s.pad, s.orig_hw) for s in samples]
            for det, i, s in zip(decode(raw, cfg, nc, bounds), batch["index"].tolist(), samples):
                gt = boxes_to_pixels(data.labels[i], s.orig_hw[1], s.orig_hw[0])
                pred = to_original(det.cpu().numpy(), s.gain, s.pad, s.orig_hw)
                results.append(ImageResult(image_id=data.images[i].name, pred=pred, gt=gt))
            bar.update(task, advance=len(batch["index"]))
    return results


def evaluate_model(
    model: nn.Module | Backend, data: DetectionDataset, cfg: EvalConfig, device: torch.device, progress: bool = True
) -> DetectionReport:
    """Box-level and image-level metrics of `model` on `data` at the configured operating point."""
    results = predict_dataset(model, data, cfg, device, progress)
    return evaluate_detections(results, dict(model.names), conf=cfg.conf, iou=cfg.iou)
