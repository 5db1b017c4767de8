"""The site's own continuous-learning settings: the `[continual]` table of its site.toml (keys read here:
`holdout_fraction`, `original_share`, `use_pool`, `feedback_db`; other keys of the table belong to other parts of
fracfl).

What a site trains on is the site's decision: at a real site these values win over what a run proposes, and its
feedback store says which instances the PACS withdrew (never trained on).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from client.feedback.store import FeedbackStore
from client.site_config import NODE_KEY
from common.config import ReplayConfig
from common.errors import ConfigError

TABLE = "continual"


@dataclass(frozen=True)
class PoolConfig:
    """How the feedback pool is built: the share of patients held out (never trained on; the site's test set)."""

    holdout_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(f"[continual] holdout_fraction {self.holdout_fraction}: must be at least 0, below 1")


def continual_table(site_toml: str | Path | None) -> dict[str, Any]:
    """The `[continual]` table of a site.toml (empty when there is no file or no table)."""
    if site_toml is None:
        return {}
    path = Path(site_toml)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8")).get(TABLE, {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the site configuration ({e})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [{TABLE}] must be a table")
    return raw


def _share(raw: Mapping[str, Any], key: str, where: object, *, below_one: bool) -> float | None:
    if key not in raw:
        return None
    v = raw[key]
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0
    if not ok or (v >= 1 if below_one else v > 1):
        bound = "below 1" if below_one else "at most 1"
        raise ConfigError(f"{where}: [{TABLE}] {key} must be a number at least 0 and {bound}, got {v!r}")
    return float(v)


def pool_config(site_toml: str | Path | None) -> PoolConfig:
    """The pool settings of the site's file, else the defaults."""
    fraction = _share(continual_table(site_toml), "holdout_fraction", site_toml, below_one=True)
    return PoolConfig() if fraction is None else PoolConfig(fraction)


def feedback_db(raw: Mapping[str, Any], where: object) -> Path | None:
    """The review store the table names (`feedback_db`, an absolute path to an existing file), None when unset."""
    db = raw.get("feedback_db")
    if db is None:
        return None
    if not isinstance(db, str) or not Path(db).is_absolute():
        raise ConfigError(f"{where}: [{TABLE}] feedback_db must be the review store's absolute path, got {db!r}")
    if not Path(db).is_file():
        raise ConfigError(f"{where}: [{TABLE}] feedback_db {db} does not exist")
    return Path(db)


@dataclass(frozen=True)
class SiteReplay:
    """What a site's round may train on, by the site's own settings: the replay mix, and the instances the PACS
    withdrew (pseudonymous SOP Instance UIDs; None: the site names no feedback store, so it cannot know them)."""

    mix: ReplayConfig
    withdrawn: frozenset[str] | None = frozenset()


def site_replay(node_config: Mapping[str, Any], proposed: ReplayConfig) -> SiteReplay:
    """The replay this round uses: the run's proposal, with every key the site's own file sets taking its place
    (a real site names the file in its node config as `site-config`), and the withdrawals its feedback store holds
    now, read at every round. A simulated site takes the run's values and has no PACS to withdraw anything."""
    real = "data-dir" in node_config
    where = node_config.get(NODE_KEY) if real else None
    raw = continual_table(where)
    share = _share(raw, "original_share", where, below_one=False)
    use_pool = raw.get("use_pool", proposed.use_pool)
    if not isinstance(use_pool, bool):
        raise ConfigError(f"{where}: [{TABLE}] use_pool must be true or false, got {use_pool!r}")
    mix = replace(proposed, original_share=proposed.original_share if share is None else share, use_pool=use_pool)
    db = feedback_db(raw, where)
    if db is not None:
        return SiteReplay(mix, FeedbackStore(db).withdrawn())
    return SiteReplay(mix, None if real else frozenset())
