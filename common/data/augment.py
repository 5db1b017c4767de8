"""Letterboxing and augmentations for grayscale radiographs with boxes.

Boxes travel as pixel xyxy through every step. All augmentations except mosaic use one image only, which is what
DP-SGD's per-image guarantee needs; `AugmentConfig.mixes_images` says when that no longer holds.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from common.config import AugmentConfig

PAD_VALUE = 114  # Ultralytics' letterbox grey, so imported Ultralytics weights see familiar borders


def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize the long side to `size` keeping the aspect ratio, pad to a square; return image, gain, (padx, pady)."""
    h, w = img.shape[:2]
    gain = size / max(h, w)
    nh, nw = max(1, round(h * gain)), max(1, round(w * gain))
    if (nh, nw) != (h, w):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if gain < 1 else cv2.INTER_LINEAR)
    top, left = (size - nh) // 2, (size - nw) // 2
    out = np.full((size, size), PAD_VALUE, dtype=img.dtype)
    out[top : top + nh, left : left + nw] = img
    return out, gain, (float(left), float(top))


def boxes_to_pixels(labels: np.ndarray, w: int, h: int) -> np.ndarray:
    """YOLO rows (cls, cx, cy, bw, bh normalised) to (cls, x1, y1, x2, y2) in pixels."""
    out = labels.astype(np.float32).copy()
    out[:, 1] = (labels[:, 1] - labels[:, 3] / 2) * w
    out[:, 2] = (labels[:, 2] - labels[:, 4] / 2) * h
    out[:, 3] = (labels[:, 1] + labels[:, 3] / 2) * w
    out[:, 4] = (labels[:, 2] + labels[:, 4] / 2) * h
    return out


def pixels_to_boxes(boxes: np.ndarray, size: int) -> np.ndarray:
    """(cls, x1, y1, x2, y2) pixels in a square image of `size` back to normalised YOLO rows."""
    out = boxes.copy()
    out[:, 1] = (boxes[:, 1] + boxes[:, 3]) / 2 / size
    out[:, 2] = (boxes[:, 2] + boxes[:, 4]) / 2 / size
    out[:, 3] = (boxes[:, 3] - boxes[:, 1]) / size
    out[:, 4] = (boxes[:, 4] - boxes[:, 2]) / size
    return out


def random_affine(
    img: np.ndarray, boxes: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate, zoom and shift a square image; boxes become the hull of their moved corners, tiny leftovers dropped."""
    size = img.shape[0]
    angle = rng.uniform(-cfg.degrees, cfg.degrees)
    zoom = rng.uniform(1 - cfg.scale, 1 + cfg.scale)
    m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, zoom)
    m[:, 2] += rng.uniform(-cfg.translate, cfg.translate, 2) * size
    img = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=PAD_VALUE)
    if len(boxes) == 0:
        return img, boxes
    x1, y1, x2, y2 = boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4]
    corners = np.stack([np.stack(c, 1) for c in ((x1, y1), (x2, y1), (x1, y2), (x2, y2))], 1)  # (n, 4, 2)
    moved = corners @ m[:, :2].T + m[:, 2]
    new = np.concatenate([boxes[:, :1], moved.min(1), moved.max(1)], 1)
    area0 = (x2 - x1) * (y2 - y1) * zoom**2
    new[:, 1:] = new[:, 1:].clip(0, size)
    w, h = new[:, 3] - new[:, 1], new[:, 4] - new[:, 2]
    keep = (w > 2) & (h > 2) & (w * h > 0.2 * area0 * _hull_factor(angle))
    return img, new[keep].astype(np.float32)


def _hull_factor(angle_deg: float) -> float:
    """How much a rotated box's axis-aligned hull grows: clipping is judged against the hull, not the box."""
    a = math.radians(abs(angle_deg))
    return (abs(math.cos(a)) + abs(math.sin(a))) ** 2


def intensity(img: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Exposure-like changes: brightness, contrast, gamma and quantum-like noise."""
    x = img.astype(np.float32) / 255.0
    x = x ** math.exp(rng.uniform(-cfg.gamma, cfg.gamma))
    x = (x - 0.5) * (1 + rng.uniform(-cfg.contrast, cfg.contrast)) + 0.5 + rng.uniform(-cfg.brightness, cfg.brightness)
    if cfg.noise > 0:
        x = x + rng.normal(0, cfg.noise, x.shape).astype(np.float32)
    return (x.clip(0, 1) * 255).round().astype(np.uint8)


def augment(img: np.ndarray, boxes: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-image augmentations in a fixed order on a letterboxed square image with pixel boxes."""
    if rng.random() < cfg.hflip:
        img = img[:, ::-1].copy()
        if len(boxes):
            boxes = boxes.copy()
            boxes[:, [1, 3]] = img.shape[1] - boxes[:, [3, 1]]
    if cfg.degrees or cfg.translate or cfg.scale:
        img, boxes = random_affine(img, boxes, cfg, rng)
    if cfg.brightness or cfg.contrast or cfg.gamma or cfg.noise:
        img = intensity(img, cfg, rng)
    return img, boxes


def mosaic(tiles: list[tuple[np.ndarray, np.ndarray]], size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Four letterboxed images in a 2x2 grid, cropped back to `size` at a random offset that shows all four."""
    canvas = np.full((2 * size, 2 * size), PAD_VALUE, dtype=np.uint8)
    out = []
    for k, (img, boxes) in enumerate(tiles):
        ox, oy = (k % 2) * size, (k // 2) * size
        canvas[oy : oy + size, ox : ox + size] = img
        b = boxes.copy()
        b[:, [1, 3]] += ox
        b[:, [2, 4]] += oy
        out.append(b)
    x0, y0 = (int(rng.integers(size // 4, 3 * size // 4 + 1)) for _ in range(2))
    crop = canvas[y0 : y0 + size, x0 : x0 + size]
    boxes = np.concatenate(out) if out else np.zeros((0, 5), np.float32)
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - x0).clip(0, size)
    boxes[:, [2, 4]] = (boxes[:, [2, 4]] - y0).clip(0, size)
    keep = ((boxes[:, 3] - boxes[:, 1]) > 2) & ((boxes[:, 4] - boxes[:, 2]) > 2)
    return crop.copy(), boxes[keep]
