"""The typed config of the simulated continuous loop (`fracfl simulate +continual=default`, conf/continual/).

It sits on top of a plain simulation job: the partition builds the sites' original data (period 0), the federation
and training settings drive each period's round, and `continual` says what happens between rounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from common.errors import ConfigError
from common.synth import SiteProfile, get_profile
from simulations.config import SimulationJob
from simulations.continual import steps


@dataclass
class DriftConfig:
    """From `period` on, images arriving at `site` are acquired with preset `profile` (a new detector, a new
    vendor's processing, another case mix)."""

    site: str = ""
    period: int = 1
    profile: str = ""


@dataclass
class RadiologistConfig:
    """The simulated reader: the synthetic ground truth, made fallible."""

    miss_rate: float = 0.1  # a true fracture the model missed is not added
    error_rate: float = 0.05  # a box decision goes the wrong way: a correct finding rejected, a wrong one confirmed
    match_iou: float = 0.5  # a model box within this IoU of a true fracture is a correct finding
    move_below_iou: float = 0.7  # a correct finding overlapping its fracture less than this is moved onto it
    reviewer: str = "sim-radiologist"  # the pseudonym written into the verdicts


@dataclass
class GateMargins:
    """Handed to the sites' champion/challenger gate (client/models/settings.py GateConfig, same meanings): how much
    worse a challenger may be on the site's held-out reviewed cases."""

    sensitivity_margin: float = 0.05  # largest allowed drop of image-level sensitivity
    max_fp_per_image: float | None = 1.0  # false positives per held-out image the challenger may make
    max_fp_increase: float | None = 0.5  # largest allowed rise of false positives per image over the champion
    require_ci: bool = False  # true: the CI's lower bound of the sensitivity change must clear -margin
    bootstrap: int = 1000  # resamples for the confidence interval shown with each decision
    conf: float | None = None  # operating point; None: the evaluation default
    target_fp_per_image: float | None = None  # or each model at its own point: at most this many FPs per image
    found: str = "localised"  # found by a finding on the fracture ("localised") or by any finding ("any_finding")


@dataclass
class ContinualConfig:
    periods: int = 3  # T: each period brings arrivals, review, the pool, a round and the gates
    arrivals_per_period: int = 20  # new radiographs per site per period
    holdout_fraction: float = 0.3  # share of patients whose reviewed cases are held out (never trained on)
    patients_per_site: int = 10_000  # arrivals draw a patient from this many, so some patients return
    # With DP-SGD: each period's run plans its noise to end at (period + 1) x this epsilon (capped by
    # privacy.target_epsilon, the sites' lifetime target); null: every run aims at the lifetime target at once, so
    # period 0 spends nearly all of it.
    epsilon_per_period: float | None = None
    radiologist: RadiologistConfig = field(default_factory=RadiologistConfig)
    gate: GateMargins = field(default_factory=GateMargins)
    drift: list[DriftConfig] = field(default_factory=list)


@dataclass
class ContinualJob(SimulationJob):
    continual: ContinualConfig = field(default_factory=ContinualConfig)


def _fraction(value: float, key: str, upper_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (0 <= value < 1 if upper_open else 0 <= value <= 1):
        raise ConfigError(f"continual.{key} must be in [0, 1{')' if upper_open else ']'}, got {value!r}")


def check_continual(cfg: ContinualConfig, sites: Sequence[str]) -> None:
    """Every invalid value raises ConfigError naming its key; `sites` are the simulated sites' names."""
    if cfg.periods < 1:
        raise ConfigError(f"continual.periods must be >= 1, got {cfg.periods}")
    if cfg.arrivals_per_period < 1:
        raise ConfigError(f"continual.arrivals_per_period must be >= 1, got {cfg.arrivals_per_period}")
    if cfg.epsilon_per_period is not None and not cfg.epsilon_per_period > 0:
        raise ConfigError(f"continual.epsilon_per_period must be > 0 (or null), got {cfg.epsilon_per_period}")
    if cfg.patients_per_site < 1:
        raise ConfigError(f"continual.patients_per_site must be >= 1, got {cfg.patients_per_site}")
    _fraction(cfg.holdout_fraction, "holdout_fraction", upper_open=True)
    r = cfg.radiologist
    for key in ("miss_rate", "error_rate", "match_iou", "move_below_iou"):
        _fraction(getattr(r, key), f"radiologist.{key}")
    if not r.reviewer:
        raise ConfigError("continual.radiologist.reviewer must be a non-empty pseudonym")
    steps.gate_config(cfg.gate, 0)  # the site gate's own checks, naming continual.gate
    seen = set()
    for i, d in enumerate(cfg.drift):
        if d.site not in sites:
            raise ConfigError(f"continual.drift[{i}].site: {d.site!r} is not a simulated site ({', '.join(sites)})")
        if not 1 <= d.period <= cfg.periods:
            raise ConfigError(f"continual.drift[{i}].period must be in 1..{cfg.periods}, got {d.period}")
        if (d.site, d.period) in seen:
            raise ConfigError(f"continual.drift[{i}]: site {d.site!r} drifts twice at period {d.period}")
        seen.add((d.site, d.period))
        get_profile(d.profile)  # an unknown preset raises ConfigError listing the known ones


def profile_at(cfg: ContinualConfig, base: SiteProfile, period: int) -> SiteProfile:
    """The acquisition profile of site `base.name` in `period`: the latest drift at or before it, else its own."""
    drifts = sorted((d.period, d.profile) for d in cfg.drift if d.site == base.name and d.period <= period)
    return get_profile(drifts[-1][1]) if drifts else base
