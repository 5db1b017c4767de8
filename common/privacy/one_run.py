"""Statistics of the one-run privacy audit (Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training
Run", NeurIPS 2023, arXiv:2305.08846).

m canaries are each put in the training set with probability 1/2, independently. After one training run the auditor
guesses "in" for the k+ canaries it scores highest, "out" for the k- lowest, and abstains on the rest. If training is
(eps, delta)-DP, the number of correct guesses W among the r = k+ + k- guesses satisfies (the paper's Theorem 3):

    P[W >= v] <= f(v) + 2 m delta max_{i=1..v} (f(v - i) - f(v)) / i,   f(v) = P[Binomial(r, e^eps/(1+e^eps)) >= v].

An observed v that would have probability <= beta under eps-DP refutes eps; the largest refuted eps is an empirical
lower bound on the mechanism's epsilon, holding with confidence 1 - beta. It is only a lower bound: a small value says
this attack found little, not that the mechanism is private.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import special, stats

from common.errors import ConfigError


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Largest probability of >= v correct guesses out of r (m canaries) for any (eps, delta)-DP training."""
    if not (0 <= v <= r <= m and eps >= 0 and 0 <= delta <= 1):
        raise ConfigError(
            f"one-run audit: need 0 <= v <= r <= m, eps >= 0, 0 <= delta <= 1 "
            f"(got m={m}, r={r}, v={v}, eps={eps}, delta={delta})"
        )
    q = float(special.expit(eps))  # accuracy of eps-DP randomised response, the worst case
    tail = float(stats.binom.sf(v - 1, r, q))  # f(v) = P[Binomial(r, q) >= v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[X = v-1], P[X = v-2], ..., P[X = 0]
    alpha = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))  # max_i (f(v - i) - f(v)) / i
    return min(tail + 2 * m * delta * alpha, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, beta: float) -> float:
    """Largest eps whose (eps, delta)-DP claim the observation (v correct of r guesses) refutes at level beta; 0 when
    none is refuted. The p-value grows with eps, so bisection finds the boundary (to 1e-6)."""
    if not 0 < beta < 1:
        raise ConfigError(f"one-run audit: confidence level beta must be in (0, 1), got {beta}")
    if r == 0 or p_value(m, r, v, 0.0, delta) > beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) <= beta:
        lo, hi = hi, 2 * hi
        if hi > 1e4:  # cannot happen for v <= r (q^r -> 1); guards against a non-terminating search
            return lo
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p_value(m, r, v, mid, delta) <= beta else (lo, mid)
    return lo


def guesses(scores: np.ndarray, k_plus: int, k_minus: int) -> np.ndarray:
    """+1 ("in") for the k+ highest scores, -1 ("out") for the k- lowest, 0 (abstain) elsewhere. Ties are broken by
    canary index, which is fixed before membership is drawn, so the guess depends only on the trained model."""
    m = len(scores)
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > m:
        raise ConfigError(f"one-run audit: k+ = {k_plus} and k- = {k_minus} must be >= 0 and sum to at most m = {m}")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    out = np.zeros(m, dtype=np.int8)
    out[order[:k_plus]] = 1
    out[order[m - k_minus :]] = -1  # empty when k- = 0
    return out


def default_choices(m: int) -> list[tuple[int, int]]:
    """Fixed in advance: guess on the top and bottom eighth, quarter and half (r = m/4, m/2, m)."""
    return [(k, k) for k in sorted({max(1, m // 8), max(1, m // 4), m // 2}) if k >= 1]


@dataclass(frozen=True)
class OneRunResult:
    """The audit's outcome at its best (k+, k-) among `choices` tried (each tested at beta / choices)."""

    epsilon: float  # empirical lower bound, confidence 1 - beta
    m: int
    r: int
    correct: int
    k_plus: int
    k_minus: int
    beta: float
    delta: float
    choices: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def audit(
    scores: np.ndarray,
    members: np.ndarray,
    *,
    beta: float = 0.05,
    delta: float = 0.0,
    choices: list[tuple[int, int]] | None = None,
) -> OneRunResult:
    """Empirical epsilon lower bound from canary scores (higher = more likely trained on) and true membership.

    Trying several (k+, k-) and keeping the best is a multiple comparison: each choice is tested at beta / len(choices)
    (Bonferroni), so the reported bound still holds with confidence 1 - beta.
    """
    scores, members = np.asarray(scores, dtype=np.float64), np.asarray(members, dtype=bool)
    if scores.shape != members.shape or scores.ndim != 1 or len(scores) < 2:
        raise ConfigError(
            f"one-run audit: need one score per canary and at least 2 canaries "
            f"(scores {scores.shape}, members {members.shape})"
        )
    if not np.all(np.isfinite(scores)):
        raise ConfigError("one-run audit: canary scores must be finite")
    m = len(scores)
    choices = choices or default_choices(m)
    truth = np.where(members, 1, -1)
    best = None
    for k_plus, k_minus in choices:
        t = guesses(scores, k_plus, k_minus)
        r, v = int(np.abs(t).sum()), int((t * truth > 0).sum())
        eps = epsilon_lower_bound(m, r, v, delta, beta / len(choices))
        if (
            best is None
            or eps > best.epsilon
            or (eps == best.epsilon and v / max(r, 1) > best.correct / max(best.r, 1))
        ):
            best = OneRunResult(eps, m, r, v, k_plus, k_minus, beta, delta, len(choices))
    return best


def max_bound(m: int, beta: float, delta: float = 0.0, choices: int = 1) -> float:
    """The largest bound m canaries can ever give (every one of m guesses right): the audit's resolution."""
    return epsilon_lower_bound(m, m, m, delta, beta / choices) if m > 0 else 0.0
