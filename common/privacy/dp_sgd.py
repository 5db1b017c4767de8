"""Sample-level DP-SGD for the shared training engine, built from Opacus' parts.

Opacus' `PrivacyEngine.make_private` assumes datasets that return tuples; ours return dicts with boxes, so the
pieces are assembled here: per-sample gradients (`GradSampleModule`), clipping and noise (`DPOptimizer`), Poisson
sampling (`UniformWithReplacementSampler`) and memory-bounded physical batches (`BatchSplittingSampler`, what
`BatchMemoryManager` uses). Accounting is not done here: the site's ledger records what each round spent.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.batch_memory_manager import BatchSplittingSampler
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader

from common.engine.loader import same_options
from common.errors import ConfigError
from common.privacy.grad_sample import LeanGradSampleModule
from common.privacy.ledger import SECURE, SEEDED
from common.privacy.patients import PatientPoissonSampler, PatientSplittingSampler, RowTracker, sum_by_patient

MODES = ("lean", "hooks", "functorch")  # per-sample gradient engines (grad_sample_module); docs/benchmarks.md


def secure_seed() -> int:
    """63 bits from the operating system's CSPRNG (`secrets`). Noise and sampling are seeded from it, never from
    anything the server sent: with a known seed the server could regenerate the noise and subtract it, and would
    know which images were drawn (no amplification by subsampling)."""
    return secrets.randbits(63)


def grad_sample_module(model: nn.Module, mode: str) -> GradSampleModule:
    """Opacus' per-sample gradient wrapper for `mode`: "hooks" (Opacus' grad samplers), "functorch" (torch.func for
    every layer) or "lean" (hooks without the batch gradient DP-SGD discards: same per-sample gradients, faster)."""
    if mode not in MODES:
        raise ConfigError(f"privacy.grad_sample_mode: expected one of {MODES}, got {mode!r}")
    cls = LeanGradSampleModule if mode == "lean" else GradSampleModule
    return cls(model, batch_first=True, loss_reduction="mean", strict=True, force_functorch=mode == "functorch")


class _DPOptimizer(DPOptimizer):
    """A DPOptimizer that also steps on an empty Poisson batch (no per-sample gradients: noise only), as DP-SGD's
    analysis assumes every drawn batch, empty or not, is one release."""

    def pre_step(self, closure=None):
        if all(getattr(p, "grad_sample", None) is None for p in self.params):
            for p in self.params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        return super().pre_step(closure)


class _PatientDPOptimizer(_DPOptimizer):
    """Clips each patient's summed gradient instead of each image's (user-level DP-SGD); `rows` is set by the
    physical loader (RowTracker) before every step."""

    def __init__(self, *args, groups: torch.Tensor, **kwargs):
        super().__init__(*args, **kwargs)
        self.groups, self.rows = groups, torch.zeros(0, dtype=torch.long)

    def pre_step(self, closure=None):
        sum_by_patient(self, self.rows, self.groups)
        return super().pre_step(closure)


class DPSGD:
    """The engine's `PrivacyHook` for DP-SGD: Poisson batches at `sample_rate`, each image's gradient clipped to
    `max_grad_norm`, Gaussian noise of `noise_multiplier` times that norm added to every step.

    With `groups` (a patient number per training image, see common.privacy.patients) the unit is the patient:
    patients are drawn at `sample_rate`, and each drawn patient's summed gradient is clipped as one.

    Noise and sampling are drawn from generators seeded by `secure_seed()` afresh for every `wrap` (every round).
    A `seed` makes them reproducible: research mode only, since whoever knows the seed can remove the noise."""

    def __init__(
        self,
        noise_multiplier: float,
        max_grad_norm: float,
        sample_rate: float,
        max_physical_batch: int = 8,
        grad_sample_mode: str = "lean",
        seed: int | None = None,
        groups: np.ndarray | None = None,
    ):
        if grad_sample_mode not in MODES:
            raise ConfigError(f"privacy.grad_sample_mode: expected one of {MODES}, got {grad_sample_mode!r}")
        if not (noise_multiplier >= 0 and max_grad_norm > 0 and 0 < sample_rate <= 1 and max_physical_batch >= 1):
            raise ConfigError(
                f"privacy: invalid DP-SGD parameters (noise {noise_multiplier}, clip {max_grad_norm}, "
                f"sample rate {sample_rate}, physical batch {max_physical_batch})"
            )
        self.noise_multiplier, self.max_grad_norm, self.sample_rate = noise_multiplier, max_grad_norm, sample_rate
        self.max_physical_batch, self.mode, self.seed = max_physical_batch, grad_sample_mode, seed
        self.groups = groups
        self._module: GradSampleModule | None = None

    @property
    def noise_source(self) -> str:
        """What the ledger and the model card record: SECURE, or SEEDED (reproducible, not private from the seed's
        holder)."""
        return SECURE if self.seed is None else SEEDED

    def wrap(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader
    ) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
        """Per-sample-gradient model, DP optimiser and a loader of logical Poisson batches (its length is the
        number of optimiser steps in an epoch)."""
        problems = ModuleValidator.validate(model, strict=False)
        if problems:
            raise ConfigError(
                f"privacy=dp_sgd: the model cannot be trained with DP-SGD ({problems[0]}); "
                "use model.norm=group (BatchNorm mixes the images of a batch)"
            )
        n = len(loader.dataset)
        self._module = grad_sample_module(model, self.mode)
        noise_seed, sample_seed = (secure_seed(), secure_seed()) if self.seed is None else (self.seed + 1, self.seed)
        noise = torch.Generator(next(model.parameters()).device).manual_seed(noise_seed)  # on the noise's device
        sampling = torch.Generator().manual_seed(sample_seed)
        options = {
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "loss_reduction": "mean",
            "generator": noise,
        }
        if self.groups is None:
            dp_opt = _DPOptimizer(optimizer, expected_batch_size=max(1, round(self.sample_rate * n)), **options)
            sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=self.sample_rate, generator=sampling)
        else:
            if len(self.groups) != n:
                raise ConfigError(f"privacy: {len(self.groups)} patient numbers for {n} training images")
            patients = int(self.groups.max()) + 1
            dp_opt = _PatientDPOptimizer(
                optimizer,
                expected_batch_size=max(1, round(self.sample_rate * patients)),
                groups=torch.as_tensor(self.groups),
                **options,
            )
            sampler = PatientPoissonSampler(self.groups, self.sample_rate, self.max_physical_batch, sampling)
        logical = DataLoader(loader.dataset, batch_sampler=sampler, **same_options(loader))
        return self._module, dp_opt, logical

    def batches(self, loader: DataLoader, optimizer: torch.optim.Optimizer) -> Iterable[dict]:
        """Physical batches of at most `max_physical_batch` images; the optimiser steps once per logical batch."""
        if self.groups is None:
            split = BatchSplittingSampler(
                sampler=loader.batch_sampler, max_batch_size=self.max_physical_batch, optimizer=optimizer
            )
            return DataLoader(loader.dataset, batch_sampler=split, **same_options(loader))
        split = PatientSplittingSampler(loader.batch_sampler, self.groups, self.max_physical_batch, optimizer)
        return RowTracker(DataLoader(loader.dataset, batch_sampler=split, **same_options(loader)), optimizer)

    def release(self) -> None:
        """Remove Opacus' hooks, so the model (reused between rounds) trains normally afterwards."""
        if self._module is not None:
            self._module.cleanup()
            self._module = None
