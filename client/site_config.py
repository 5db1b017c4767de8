"""A hospital site's own privacy configuration (`site.toml`), made by `fracfl site init` and named in the
SuperNode's node config as `site-config`.

The server is honest-but-curious: it may propose a target, a ceiling and a delta, but at a real site these can only
be tightened, never raised, and the ledger is always the one this file names. A real site without this file, or
with an unusable one, refuses to train.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from common.privacy.signing import KEY_NAME, load_or_create

NODE_KEY = "site-config"  # node config key naming the file
FILE_NAME = "site.toml"


@dataclass(frozen=True)
class SitePrivacy:
    """What the site decided: its noise target, its hard ceiling (both lifetime epsilon totals), an optional delta,
    the absolute folder of its ledger, and whether research mode (seeded noise) may ever be used."""

    target_epsilon: float
    ceiling_epsilon: float
    ledger_dir: Path
    delta: float | None = None
    research_mode: bool = False
    modes: tuple[str, ...] = ("dp_sgd",)


MODES = ("dp_sgd", "client_dp", "none")  # privacy.mode values; a site lists those it accepts in [privacy] modes


def _number(raw: Mapping[str, Any], key: str, where: Path, *, optional: bool = False) -> float | None:
    if key not in raw:
        if optional:
            return None
        raise ConfigError(f"{where}: [privacy] {key} is missing")
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{where}: [privacy] {key} must be a positive number, got {value!r}")
    return float(value)


def load_site_privacy(path: str | Path) -> SitePrivacy:
    """Read and check `site.toml`; ConfigError names the file and the field that is wrong."""
    path = Path(path)
    if not path.is_absolute():
        raise ConfigError(
            f"node config {NODE_KEY}={str(path)!r}: give an absolute path (a relative one depends on "
            "where the SuperNode was started)"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8")).get("privacy")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the site configuration ({e})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: no [privacy] table")
    target, ceiling = _number(raw, "target_epsilon", path), _number(raw, "ceiling_epsilon", path)
    delta = _number(raw, "delta", path, optional=True)
    if delta is not None and delta >= 1:
        raise ConfigError(f"{path}: [privacy] delta must be below 1, got {delta}")
    ledger = Path(str(raw.get("ledger_dir", "")))
    if not raw.get("ledger_dir") or not ledger.is_absolute():
        raise ConfigError(f"{path}: [privacy] ledger_dir must be an absolute folder, got {raw.get('ledger_dir')!r}")
    research = raw.get("research_mode", False)
    if not isinstance(research, bool):
        raise ConfigError(f"{path}: [privacy] research_mode must be true or false, got {research!r}")
    modes = raw.get("modes", ["dp_sgd"])
    if not isinstance(modes, list) or not modes or any(m not in MODES for m in modes):
        raise ConfigError(f"{path}: [privacy] modes must be a non-empty list drawn from {list(MODES)}, got {modes!r}")
    return SitePrivacy(min(target, ceiling), ceiling, ledger, delta, research, tuple(modes))


def write_site_config(
    folder: Path,
    *,
    target_epsilon: float = 8.0,
    ceiling_epsilon: float = 10.0,
    delta: float | None = None,
    modes: Sequence[str] = ("dp_sgd",),
) -> Path:
    """Create `folder/site.toml` (never overwritten) with the ledger and its signing key in `folder/privacy`;
    returns its path."""
    folder = folder.resolve()
    path = folder / FILE_NAME
    if path.exists():
        raise ConfigError(
            f"{path} exists: edit it (limits may be lowered at any time; raising them is a "
            "governance decision) or choose another folder"
        )
    if not 0 < target_epsilon <= ceiling_epsilon:
        raise ConfigError(f"site init: need 0 < target ({target_epsilon}) <= ceiling ({ceiling_epsilon})")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "privacy").mkdir(exist_ok=True)
    load_or_create(folder / "privacy" / KEY_NAME)  # the ledger's signing key, owner-only
    lines = [
        "# This site's privacy limits (fracfl site init). The server cannot raise them: a run asking for a",
        "# higher target or ceiling, or another ledger, is refused. Epsilons are lifetime totals for the images.",
        "[privacy]",
        f"target_epsilon = {float(target_epsilon)}",
        f"ceiling_epsilon = {float(ceiling_epsilon)}",
        *([f"delta = {float(delta)}"] if delta is not None else []),
        f'ledger_dir = "{folder / "privacy"}"',
        "research_mode = false  # true lets a run seed the DP noise (the server could remove it): never for patients",
        "# The privacy modes this site trains under: dp_sgd (noise drawn here). client_dp adds the noise at the",
        "# server, which could leave it out; none sends updates without any noise. Add them only knowingly.",
        f"modes = {json.dumps(list(modes))}",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    load_site_privacy(path)  # what we wrote must read back
    return path
