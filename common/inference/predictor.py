"""One radiograph in, findings out: the same letterbox, decoding, NMS and operating point for every backend."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.config import EvalConfig
from common.data.augment import letterbox
from common.inference.backend import Backend
from common.inference.postprocess import decode, image_bounds, to_original
from common.metrics.triage import image_score


@dataclass(frozen=True)
class Prediction:
    """Findings on one image, boxes in the original image's pixels (x1, y1, x2, y2).

    `boxes`/`scores`/`classes` keep every box above the low NMS threshold (what mAP needs); `findings()` gives the
    ones at or above the operating point, which is what a reader is shown.
    """

    boxes: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32
    classes: np.ndarray  # (N,) int64
    names: dict[int, str]
    conf: float  # operating point
    orig_hw: tuple[int, int]

    @property
    def probability(self) -> float:
        """Image-level fracture score: the highest box score (0 without boxes), as in the triage metrics."""
        return image_score(self.scores)

    @property
    def positive(self) -> bool:
        """The verdict at the operating point."""
        return self.probability >= self.conf

    def findings(self) -> list[dict]:
        """Boxes at or above the operating point, highest score first, as plain JSON-ready dicts."""
        keep = np.flatnonzero(self.scores >= self.conf)
        keep = keep[np.argsort(-self.scores[keep], kind="stable")]
        return [
            {
                "box": [round(float(v), 1) for v in self.boxes[i]],
                "score": round(float(self.scores[i]), 4),
                "class_id": int(self.classes[i]),
                "class_name": self.names.get(int(self.classes[i]), str(int(self.classes[i]))),
            }
            for i in keep
        ]


def to_input(img: np.ndarray) -> torch.Tensor:
    """Letterboxed grey uint8 (S, S) to the network's (3, S, S) float input in [0, 1], as the training loader does."""
    return torch.from_numpy(np.ascontiguousarray(img)).unsqueeze(0).expand(3, -1, -1).float().div(255.0)


class Predictor:
    """Runs a backend on decoded grey images (uint8, H x W) with the evaluation config's NMS and operating point."""

    def __init__(self, backend: Backend, cfg: EvalConfig):
        self.backend = backend
        self.cfg = cfg

    def predict(self, image: np.ndarray) -> Prediction:
        """Findings for one decoded grey uint8 image."""
        if image.ndim != 2 or image.dtype != np.uint8:
            raise ValueError(f"expected a grey uint8 image (H, W), got {image.dtype} {image.shape}")
        lb, gain, pad = letterbox(image, self.backend.imgsz)
        raw = self.backend(to_input(lb).unsqueeze(0))
        bounds = [image_bounds(gain, pad, image.shape[:2])]
        det = decode(raw, self.cfg, len(self.backend.names), bounds)[0].cpu().numpy()
        det = to_original(det, gain, pad, image.shape[:2])
        return Prediction(
            boxes=det[:, :4].astype(np.float32),
            scores=det[:, 4].astype(np.float32),
            classes=det[:, 5].astype(np.int64),
            names=dict(self.backend.names),
            conf=self.cfg.conf,
            orig_hw=(int(image.shape[0]), int(image.shape[1])),
        )
