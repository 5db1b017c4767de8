"""How often a site's reviewers disagree with its model, and whether the site requests a round because of it.

A reviewed image disagrees when a reviewer rejected, moved or re-classed a box the model drew, added a box it
missed, or marked "no fracture" on an image where it drew one (the feedback store's `disagreements` filter, the same
one the review worklist offers). Only images the current model version analysed count: a rate that mixed versions
would keep asking for rounds after a new model fixed what the old one got wrong. The current version is the one
that made the store's most recent finding (what the listener runs now).

The decision and its settings are the site's own: the `[continual]` table of its site.toml

    [continual]
    feedback_db = "/var/fracfl/feedback.db"   # the review store (absolute path)
    disagreement_threshold = 0.2              # request a round at this rate or above
    disagreement_min_reviewed = 30            # fewer reviewed images: no request, no rate sent (at least 10)

A site without `disagreement_threshold` takes no part: it never requests a round and sends no rate. What it sends
is the flag and the rate rounded to 0.05; never counts, versions or cases.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.continual.config import TABLE, continual_table, feedback_db
from client.feedback.store import FeedbackStore
from client.site import resolve_site
from common.errors import ConfigError, FracflError
from common.protocol import DISAGREEMENT, NAME, ROUND_REQUEST

log = logging.getLogger("fracfl.client")

STEP = 0.05  # the coarsest grid a rate leaves the site on
MIN_REVIEWED_FLOOR = 10  # below this, a rate would say how a handful of individual cases were judged
DEFAULT_MIN_REVIEWED = 30


@dataclass(frozen=True)
class RequestSettings:
    feedback_db: Path
    threshold: float  # request a round when the rate reaches this
    min_reviewed: int = DEFAULT_MIN_REVIEWED  # fewer reviewed images: no request, and the rate is not sent


def request_settings(site_toml: str | Path) -> RequestSettings | None:
    """The site's round-request settings from its site.toml's `[continual]` table; None when it sets no
    `disagreement_threshold` (the site takes no part). ConfigError names the file and key that are wrong."""
    path = Path(site_toml)
    raw = continual_table(path)
    if "disagreement_threshold" not in raw:
        return None
    threshold = raw["disagreement_threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ConfigError(f"{path}: [{TABLE}] disagreement_threshold must be a number in (0, 1], got {threshold!r}")
    minimum = raw.get("disagreement_min_reviewed", DEFAULT_MIN_REVIEWED)
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < MIN_REVIEWED_FLOOR:
        raise ConfigError(
            f"{path}: [{TABLE}] disagreement_min_reviewed must be a whole number of at least {MIN_REVIEWED_FLOOR}, "
            f"got {minimum!r}"
        )
    db = feedback_db(raw, path)
    if db is None:
        raise ConfigError(f"{path}: [{TABLE}] feedback_db must be the review store's absolute path, got None")
    return RequestSettings(db, float(threshold), minimum)


@dataclass(frozen=True)
class Disagreement:
    """Reviewed images of one model version, and how many of them disagree with it."""

    model_version: str | None
    reviewed: int
    disagreeing: int

    @property
    def rate(self) -> float | None:
        return self.disagreeing / self.reviewed if self.reviewed else None


def disagreement(store: FeedbackStore, model_version: str | None = None) -> Disagreement:
    """The rate for `model_version`, by default the version of the store's most recent finding."""
    version = model_version or store.latest_model_version()
    if version is None:
        return Disagreement(None, 0, 0)
    reviewed = store.count(model_version=version) - store.count(model_version=version, unreviewed=True)
    return Disagreement(version, reviewed, store.count(model_version=version, disagreements=True))


def coarsened(d: Disagreement, min_reviewed: int) -> float | None:
    """The rate as it may leave the site: rounded to 0.05, None below `min_reviewed` reviewed images."""
    if d.rate is None or d.reviewed < min_reviewed:
        return None
    return round(math.floor(d.rate / STEP + 0.5) * STEP, 2)


def requests_round(d: Disagreement, settings: RequestSettings) -> bool:
    """The site's decision, on its exact rate (only the decision and the coarsened rate are sent)."""
    return d.rate is not None and d.reviewed >= settings.min_reviewed and d.rate >= settings.threshold


def round_request_answer(node_config: Mapping[str, Any], manifest: str | None = None) -> dict[str, str | bool | float]:
    """What the site answers the server's round-request query: its name, whether it requests a round, and its
    coarsened rate. A site that takes no part, or whose settings or store cannot be read (logged here, at the
    site), does not request and sends no rate."""
    try:
        site = resolve_site(node_config, manifest)
        settings = request_settings(site.config) if site.config is not None else None
        if settings is None:
            return {NAME: site.name, ROUND_REQUEST: False}
        d = disagreement(FeedbackStore(settings.feedback_db))
    except (FracflError, sqlite3.Error) as e:
        log.error("cannot answer the server's round-request query: %s", e)
        return {ROUND_REQUEST: False}
    answer: dict[str, str | bool | float] = {NAME: site.name, ROUND_REQUEST: requests_round(d, settings)}
    rate = coarsened(d, settings.min_reviewed)
    if rate is not None:
        answer[DISAGREEMENT] = rate
    log.info(
        "round request: %s (model %s: %d of %d reviewed images disagree; threshold %.2f)",
        "yes" if answer[ROUND_REQUEST] else "no",
        d.model_version,
        d.disagreeing,
        d.reviewed,
        settings.threshold,
    )
    return answer
