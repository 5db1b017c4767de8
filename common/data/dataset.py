"""The torch dataset behind training and evaluation: decoded, letterboxed, optionally augmented radiographs.

Every label file is read and validated when the dataset is built, so a bad row stops a run before any training
and every bad file is named at once. Nothing is written next to the data (no label caches).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from common.config import AugmentConfig
from common.data.augment import augment, boxes_to_pixels, letterbox, mosaic, pixels_to_boxes
from common.data.images import read_image
from common.data.labels import read_labels
from common.data.spec import DatasetSpec, label_path, load_spec
from common.errors import DataError

log = logging.getLogger("fracfl.data")


@dataclass(frozen=True)
class Sample:
    """One prepared image: square grey uint8 image, pixel boxes (cls, x1, y1, x2, y2), and how it was resized."""

    img: np.ndarray
    boxes: np.ndarray
    gain: float
    pad: tuple[float, float]
    orig_hw: tuple[int, int]


class DetectionDataset(Dataset):
    """Images of one split with their YOLO labels, resized to `imgsz`; augmented when `augment` is given."""

    def __init__(
        self,
        images: list[Path],
        nc: int,
        imgsz: int,
        augment: AugmentConfig | None = None,
        cache: bool = False,
        seed: int = 0,
        label_files: list[Path] | None = None,
    ):
        if not images:
            raise DataError("<dataset>", "no images in this split")
        self.images = list(images)
        self.imgsz = imgsz
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.labels = _read_all_labels(label_files or [label_path(p) for p in self.images], nc)
        self.positive = np.array([len(lab) > 0 for lab in self.labels])
        self._cache: dict[int, Sample] | None = {} if cache else None
        self._cache_full = False  # the memory bound was reached: later images are decoded each time
        self.cache_bytes = 0

    @classmethod
    def from_data(cls, data: str | Path, split: str, imgsz: int, **kwargs: Any) -> "DetectionDataset":
        """Build from a data.yaml or dataset folder and a split name (train, val, ...)."""
        spec = load_spec(data)
        images = spec.images(split)
        return cls(images, spec.nc, imgsz, label_files=[spec.label_file(p) for p in images], **kwargs)

    @classmethod
    def from_specs(
        cls, parts: Sequence[tuple[DatasetSpec, Sequence[Path]]], imgsz: int, **kwargs: Any
    ) -> "DetectionDataset":
        """One dataset from images of several datasets (each with its spec, for labels), e.g. a site's own train
        split beside its feedback pool; they must share class names, or a class index would mean two things."""
        names = {tuple(spec.names.items()) for spec, _ in parts}
        if len(names) > 1:
            where = ", ".join(str(spec.source or spec.root) for spec, _ in parts)
            raise DataError(where, f"datasets trained together have different class names: {sorted(names)}")
        images = [p for _, chosen in parts for p in chosen]
        labels = [spec.label_file(p) for spec, chosen in parts for p in chosen]
        return cls(images, parts[0][0].nc, imgsz, label_files=labels, **kwargs)

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw; the same (seed, epoch, index) always gives the same sample."""
        self.epoch = epoch

    def prepared(self, i: int) -> Sample:
        """Decoded and letterboxed image i with its boxes in letterbox pixels (cached in memory when asked)."""
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        raw = read_image(self.images[i])
        img, gain, pad = letterbox(raw, self.imgsz)
        boxes = boxes_to_pixels(self.labels[i], raw.shape[1], raw.shape[0])
        boxes[:, [1, 3]] = boxes[:, [1, 3]] * gain + pad[0]
        boxes[:, [2, 4]] = boxes[:, [2, 4]] * gain + pad[1]
        sample = Sample(img, boxes, gain, pad, (raw.shape[0], raw.shape[1]))
        if self._cache is not None and not self._cache_full:
            self._cache[i] = sample
            self.cache_bytes += img.nbytes + boxes.nbytes
        return sample

    def warm_cache(self, max_bytes: int, threads: int = 1) -> None:
        """Decode every image once, in this process and before loader workers start, so that the workers share
        the decoded images (forked, copy-on-write) instead of each decoding and caching its own copy, and epochs
        and federated rounds after the first decode nothing. Stops adding at `max_bytes`; says what it holds."""
        if self._cache is None or self._cache_full or len(self._cache) == len(self):
            return
        t0, todo = time.perf_counter(), [i for i in range(len(self)) if i not in self._cache]
        per_image = self.imgsz * self.imgsz  # uint8 grey letterboxed square
        room = max(0, (max_bytes - self.cache_bytes) // per_image)
        with ThreadPoolExecutor(max(1, threads)) as pool:  # OpenCV decodes and resizes without the GIL
            list(pool.map(self.prepared, todo[:room]))
        self._cache_full = len(todo) > room
        log.info("decoded-image cache: %d of %d images, %.0f MB (bound %.0f MB), %.1f s", len(self._cache),
                 len(self), self.cache_bytes / 1e6, max_bytes / 1e6, time.perf_counter() - t0)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.prepared(i)
        img, boxes = s.img, s.boxes
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            if rng.random() < self.augment.mosaic:
                others = rng.integers(0, len(self), 3)
                img, boxes = mosaic([(img, boxes)] + [self._pair(int(j)) for j in others], self.imgsz, rng)
            img, boxes = augment(img, boxes, self.augment, rng)
        return {
            "img": torch.from_numpy(np.ascontiguousarray(img)).unsqueeze(0),
            "labels": torch.from_numpy(pixels_to_boxes(boxes, self.imgsz)),
            "index": i,
            "positive": bool(self.positive[i]),
        }

    def _pair(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.prepared(j)
        return s.img, s.boxes


def _read_all_labels(files: list[Path], nc: int) -> list[np.ndarray]:
    """Labels of every image; all problems are gathered and reported together."""
    labels, errors = [], []
    for p in files:
        try:
            labels.append(read_labels(p, nc))
        except DataError as e:
            errors.append(e)
            labels.append(np.zeros((0, 5), np.float32))
    if errors:
        more = f" (and {len(errors) - 1} more; `fracfl data check` lists them all)" if len(errors) > 1 else ""
        raise DataError(errors[0].path, f"{errors[0].problem}{more}", errors[0].line)
    return labels


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack the grey uint8 images (B, 1, S, S) and flatten boxes with their image index, as Ultralytics' loss
    expects. Images stay uint8 and single-channel until `model_input` on the device: 12x fewer bytes through the
    workers' shared memory and the host-to-GPU copy. An empty list (a Poisson batch that drew no image) gives an
    empty batch."""
    if not items:
        return {"img": torch.zeros((0, 1, 1, 1), dtype=torch.uint8), "batch_idx": torch.zeros(0),
                "cls": torch.zeros((0, 1)),
                "bboxes": torch.zeros((0, 4)), "index": torch.zeros(0, dtype=torch.long),
                "positive": torch.zeros(0, dtype=torch.bool)}
    labels = [it["labels"] for it in items]
    batch_idx = torch.cat([torch.full((len(lab),), i, dtype=torch.float32) for i, lab in enumerate(labels)])
    rows = torch.cat(labels) if labels else torch.zeros((0, 5))
    return {
        "img": torch.stack([it["img"] for it in items]),
        "batch_idx": batch_idx,
        "cls": rows[:, :1],
        "bboxes": rows[:, 1:],
        "index": torch.tensor([it["index"] for it in items]),
        "positive": torch.tensor([it["positive"] for it in items]),
    }


def model_input(img: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A collated uint8 grey batch as the network's input on `device`: float [0, 1], three identical channels."""
    x = img.to(device, non_blocking=True).float().div_(255.0).expand(-1, 3, -1, -1)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
