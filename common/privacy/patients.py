"""Patients as the privacy unit (user-level DP-SGD): Poisson sampling over patients, one clipped gradient each.

A patient with k radiographs is protected by image-level DP only at group level k. Here each step draws every
patient independently with probability q, takes (at most `max_images` of) the drawn patient's images, sums their
per-image gradients and clips that sum as one: adding or removing a whole patient moves the noisy sum by at most
the clipping norm, so the accountant runs on (noise, q, steps) over the patient count (McMahan et al. 2018,
"Learning differentially private recurrent language models", applied per step as in Opacus' user-level variant).

Patients are pseudonyms written by `fracfl ingest` into `patients.csv` beside data.yaml (image stem -> pseudonymous
patient id); an image without one is its own patient.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from opacus.optimizers import DPOptimizer
from torch.utils.data import Sampler

from common.errors import DataError

PATIENTS_FILE = "patients.csv"
PATIENT_UNIT = "one patient (all of a patient's radiographs, by pseudonym)"
IMAGE_UNIT = "one radiograph (image); a patient with k images is protected at group level k"


def read_patients(root: str | Path) -> dict[str, str]:
    """Image stem -> pseudonymous patient id from `root/patients.csv`; empty when the folder has none."""
    path = Path(root) / PATIENTS_FILE
    if not path.is_file():
        return {}
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise DataError(path, f"unreadable patient list ({e})") from e
    if rows and not {"image", "patient"} <= set(rows[0]):
        raise DataError(path, "expected the columns image,patient")
    return {r["image"]: r["patient"] for r in rows if r.get("image") and r.get("patient")}


def write_patients(patients: Mapping[str, str]) -> bytes:
    """The bytes of `patients.csv` for `patients` (sorted, so a re-ingest rewrites the same file)."""
    lines = ["image,patient"] + [f"{image},{patients[image]}" for image in sorted(patients)]
    return ("\n".join(lines) + "\n").encode()


def patient_groups(images: Sequence[Path], patients: Mapping[str, str]) -> np.ndarray:
    """A patient number per image (0..P-1, in order of first appearance); an image without a pseudonym is alone."""
    keys = [patients.get(Path(p).stem, f"image:{i}") for i, p in enumerate(images)]
    index: dict[str, int] = {}
    return np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)


class PatientPoissonSampler(Sampler[list[int]]):
    """Logical batches: each patient drawn independently with probability `sample_rate` (Poisson sampling over
    patients), contributing at most `max_images` of their images, picked at random when they have more (the sum
    is clipped as one, so which images and how many does not change the sensitivity). `int(1 / q)` batches an
    epoch, as Opacus' UniformWithReplacementSampler."""

    def __init__(self, groups: np.ndarray, sample_rate: float, max_images: int, generator: torch.Generator):
        self.members = [np.flatnonzero(groups == g) for g in range(int(groups.max()) + 1)] if len(groups) else []
        self.sample_rate, self.max_images, self.generator = sample_rate, max_images, generator
        self.steps = int(1 / sample_rate)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            drawn = torch.rand(len(self.members), generator=self.generator) < self.sample_rate
            batch: list[int] = []
            for g in torch.nonzero(drawn).flatten().tolist():
                rows = self.members[g]
                if len(rows) > self.max_images:
                    pick = torch.randperm(len(rows), generator=self.generator)[: self.max_images].numpy()
                    rows = rows[np.sort(pick)]
                batch.extend(rows.tolist())
            yield batch


class PatientSplittingSampler(Sampler[list[int]]):
    """Physical batches of at most `max_batch` images that never split a patient (a patient is clipped within one
    physical batch), telling the optimiser which chunk ends a logical batch, as Opacus' BatchSplittingSampler."""

    def __init__(self, sampler: PatientPoissonSampler, groups: np.ndarray, max_batch: int, optimizer: DPOptimizer):
        self.sampler, self.groups, self.max_batch, self.optimizer = sampler, groups, max_batch, optimizer

    def __len__(self) -> int:
        expected = self.sampler.sample_rate * len(self.groups)
        return int(np.ceil(len(self.sampler) * max(expected, 1) / self.max_batch))

    def __iter__(self) -> Iterator[list[int]]:
        for logical in self.sampler:
            chunks: list[list[int]] = [[]]
            for g in dict.fromkeys(self.groups[logical].tolist()):  # patients in drawn order
                rows = [i for i in logical if self.groups[i] == g]
                if chunks[-1] and len(chunks[-1]) + len(rows) > self.max_batch:
                    chunks.append([])
                chunks[-1].extend(rows)
            for chunk in chunks[:-1]:
                self.optimizer.signal_skip_step(do_skip=True)
                yield chunk
            self.optimizer.signal_skip_step(do_skip=False)
            yield chunks[-1]


def sum_by_patient(optimizer: DPOptimizer, rows: torch.Tensor, groups: torch.Tensor) -> None:
    """Replace each parameter's per-image gradients by per-patient sums, so the optimiser clips patients."""
    if len(rows) == 0:
        return
    patient = torch.unique(groups[rows.cpu()], return_inverse=True)[1]
    count = int(patient.max()) + 1
    for p in optimizer.params:
        if getattr(p, "grad_sample", None) is None:
            continue
        per_image = optimizer._get_flat_grad_sample(p)
        summed = torch.zeros((count, *per_image.shape[1:]), dtype=per_image.dtype, device=per_image.device)
        p.grad_sample = summed.index_add_(0, patient.to(per_image.device), per_image)


class RowTracker:
    """The physical batches, each also handed to the optimiser as the dataset rows its gradients belong to (read
    from the batch itself, so workers' prefetching cannot put them out of step)."""

    def __init__(self, loader: torch.utils.data.DataLoader[Any], optimizer: DPOptimizer):
        self.loader, self.optimizer = loader, optimizer

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            self.optimizer.rows = batch["index"]
            yield batch
