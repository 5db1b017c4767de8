"""The site's model settings: `[models]` and `[gate]` in its site.toml (beside `[privacy]`, which client.site_config
reads). Every key is optional; a wrong one is a ConfigError naming the file, the table and the key."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from common.privacy.signing import KEY_NAME

UNITS = ("patient", "image")
FOUND_BY = ("localised", "any_finding")


@dataclass(frozen=True)
class GateConfig:
    """When a challenger may replace the champion, judged on the site's held-out reviewed cases.

    `seed`: None draws the bootstrap seed from the OS's secure source (recorded with the figures, so a decision can
    be recomputed); a number makes the figures reproducible from the config alone (for documents and tests).
    """

    sensitivity_margin: float = 0.02  # largest allowed drop of image-level sensitivity (0.02 = 2 points)
    require_ci: bool = False  # true: the CI's lower bound of the change must clear -margin (non-inferiority)
    max_fp_per_image: float | None = None  # absolute bound on false-positive boxes per image; None: no bound
    max_fp_increase: float | None = 0.5  # largest allowed rise of false positives per image over the champion
    bootstrap: int = 2000  # resamples for the confidence intervals
    confidence: float = 0.95
    unit: str = "patient"  # resample patients (patients.csv beside data.yaml) or images
    seed: int | None = None
    split: str = "test"  # the held-out split of the site's data.yaml
    data: str | None = None  # the held-out data.yaml; None: give --data
    conf: float | None = None  # operating point; None: the evaluation default (common.config.EvalConfig)
    # Each model at its own operating point instead: the lowest score threshold at which it makes at most this many
    # false-positive boxes per held-out image (client/models/gate.py); the listener then uses that version's point.
    target_fp_per_image: float | None = None
    # When a fracture image counts as found: "localised", a finding matches one of its reviewed fracture boxes (at
    # the evaluation IoU); "any_finding", the image has a finding anywhere (worklist triage).
    found: str = "localised"

    def check(self, where: str = "[gate]") -> None:
        if not 0 <= self.sensitivity_margin < 1:
            raise ConfigError(f"{where} sensitivity_margin: expected a number in [0, 1), got {self.sensitivity_margin}")
        for key in ("max_fp_per_image", "max_fp_increase"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{where} {key}: expected a number >= 0, got {value}")
        if self.bootstrap < 100:
            raise ConfigError(f"{where} bootstrap: at least 100 resamples, got {self.bootstrap}")
        if not 0.5 <= self.confidence < 1:
            raise ConfigError(f"{where} confidence: expected a number in [0.5, 1), got {self.confidence}")
        if self.unit not in UNITS:
            raise ConfigError(f"{where} unit: {self.unit!r}; choose from {', '.join(UNITS)}")
        if self.found not in FOUND_BY:
            raise ConfigError(f"{where} found: {self.found!r}; choose from {', '.join(FOUND_BY)}")
        if self.conf is not None and not 0 <= self.conf <= 1:
            raise ConfigError(f"{where} conf: expected a number in [0, 1], got {self.conf}")
        fp = self.target_fp_per_image
        if fp is not None and not (math.isfinite(fp) and fp >= 0):
            raise ConfigError(f"{where} target_fp_per_image: expected a number >= 0, got {fp}")
        if fp is not None and self.conf is not None:
            raise ConfigError(
                f"{where}: give conf (one operating point for both models) or target_fp_per_image, not both"
            )


@dataclass(frozen=True)
class ModelSettings:
    """Where the site's model store lives and which key signs its approvals (default: the privacy ledger's key)."""

    dir: Path | None = None
    key: Path | None = None
    gate: GateConfig = field(default_factory=GateConfig)


# The type of each [gate] key (TOML has no null: an optional key is simply left out).
_GATE_TYPES: dict[str, type] = {
    "sensitivity_margin": float,
    "require_ci": bool,
    "max_fp_per_image": float,
    "max_fp_increase": float,
    "bootstrap": int,
    "confidence": float,
    "unit": str,
    "seed": int,
    "split": str,
    "data": str,
    "conf": float,
    "target_fp_per_image": float,
    "found": str,
}


def _gate_values(raw: dict[str, Any], where: str) -> dict[str, Any]:
    out = {}
    for key, value in raw.items():
        kind = _GATE_TYPES.get(key)
        if kind is None:
            raise ConfigError(f"{where}: unknown key {key!r}; known: {', '.join(_GATE_TYPES)}")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ConfigError(f"{where} {key}: expected {kind.__name__}, got {value!r}")
        out[key] = value
    return out


def load_model_settings(path: str | Path | None) -> ModelSettings:
    """`[models]` and `[gate]` of the site.toml at `path` (defaults without a file)."""
    if path is None:
        return ModelSettings()
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the site configuration ({e})") from e
    models, gate_raw = raw.get("models", {}), raw.get("gate", {})
    for name, table in (("models", models), ("gate", gate_raw)):
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{name}] must be a table")
    unknown = set(models) - {"dir", "key"}
    if unknown:
        raise ConfigError(f"{path}: [models] unknown key(s) {sorted(unknown)}; known: dir, key")
    gate = GateConfig(**_gate_values(gate_raw, f"{path}: [gate]"))
    gate.check(f"{path}: [gate]")
    ledger = (raw.get("privacy") or {}).get("ledger_dir")
    key = models.get("key") or (str(Path(ledger) / KEY_NAME) if ledger else None)
    return ModelSettings(
        dir=_absolute(models.get("dir"), path, "[models] dir"), key=_absolute(key, path, "[models] key"), gate=gate
    )


def _absolute(value: Any, path: Path, where: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not Path(value).is_absolute():
        raise ConfigError(f"{path}: {where} must be an absolute path, got {value!r}")
    return Path(value)
