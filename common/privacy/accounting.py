"""Privacy accounting for the Poisson-subsampled Gaussian mechanism of DP-SGD, with Opacus' accountants.

A site's spending is a history of (noise multiplier, sample rate, steps) entries: the same shape as Opacus'
accountant state, so an accountant rebuilt from the ledger after a restart gives exactly the figure of one that
never stopped. Both RDP and PRV figures are reported; budget decisions use RDP. Both are valid upper bounds, so either
may be used; RDP is the standard one, cheap enough to check before every round, and in practice the looser one.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

from common.errors import ConfigError

MAX_SIGMA = 500.0  # beyond this the model learns nothing; a budget needing more is treated as exhausted


@dataclass(frozen=True)
class Mechanism:
    """`steps` releases of the Gaussian mechanism with Poisson sampling rate `sample_rate`."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def as_tuple(self) -> tuple[float, float, int]:
        return (float(self.noise_multiplier), float(self.sample_rate), int(self.steps))


def default_delta(n_images: int) -> float:
    """Well below 1/N, as DP needs: min(1e-5, 0.1 / N)."""
    return min(1e-5, 0.1 / max(n_images, 1))


def sample_rate(batch_size: int, n_images: int) -> float:
    """Poisson sampling rate giving an expected logical batch of `batch_size` images."""
    if n_images <= 0:
        raise ConfigError("privacy: the site has no training images")
    return min(1.0, batch_size / n_images)


def steps_per_round(local_epochs: int, max_steps: int | None, rate: float) -> int:
    """Optimiser steps of one local round; an epoch of Poisson sampling is int(1/q) steps, as in Opacus."""
    return int(max_steps) if max_steps is not None else max(1, local_epochs) * int(1 / rate)


def _history(entries: list[Mechanism]) -> list[tuple[float, float, int]]:
    """Entries with the same noise and sample rate merged (composition is order-free): PRV's cost grows with the
    number of distinct mechanisms, and a run has one."""
    steps: dict[tuple[float, float], int] = {}
    for m in entries:
        if m.steps > 0:
            key = (float(m.noise_multiplier), float(m.sample_rate))
            steps[key] = steps.get(key, 0) + int(m.steps)
    return [(s, q, n) for (s, q), n in steps.items()]


def _rdp(history: list[Mechanism]) -> np.ndarray:
    """RDP of the composition at Opacus' default orders (RDP adds up over mechanisms)."""
    total = np.zeros(len(RDPAccountant.DEFAULT_ALPHAS))
    for sigma, q, steps in _history(history):
        total += np.asarray(
            rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=RDPAccountant.DEFAULT_ALPHAS)
        )
    return total


def _rdp_epsilon(rdp: np.ndarray, delta: float) -> float:
    with warnings.catch_warnings():  # "optimal order is the largest alpha": the bound is still valid, only looser
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


def epsilon_rdp(history: list[Mechanism], delta: float) -> float:
    """Exactly what Opacus' RDPAccountant reports for this history."""
    return _rdp_epsilon(_rdp(history), delta) if _history(history) else 0.0


def epsilon_prv(history: list[Mechanism], delta: float) -> float:
    acc = PRVAccountant()
    acc.history = _history(history)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():  # q = 1 takes log(0) on the way
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(acc.get_epsilon(delta)) if acc.history else 0.0


def epsilons(history: list[Mechanism], delta: float) -> dict[str, float]:
    """Both accountants' figures and the one budget decisions use (RDP)."""
    rdp, prv = epsilon_rdp(history, delta), epsilon_prv(history, delta)
    return {"rdp": rdp, "prv": prv, "epsilon": rdp}


def calibrate(history: list[Mechanism], rate: float, steps: int, target: float, delta: float) -> float | None:
    """Smallest noise multiplier (within 1 %) such that `history` plus `steps` more steps ends at or below `target`
    epsilon (RDP); None when no amount of noise gets there (the budget is already spent)."""
    spent = _rdp(history)

    def eps(sigma: float) -> float:
        return _rdp_epsilon(spent + _rdp([Mechanism(sigma, rate, steps)]), delta)

    if eps(MAX_SIGMA) > target:
        return None
    lo, hi = 0.05, MAX_SIGMA
    if eps(lo) <= target:
        return lo
    while hi / lo > 1.01:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if eps(mid) <= target else (mid, hi)
    return hi
