"""`fracfl site pool --data D --feedback-db DB [--build]`: what the radiologists' verdicts changed in the site's
training pool since the version its last round trained on; with --build, a new pool version (client/continual)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in d.items() if n) or "none"


def _describe(change: dict[str, Any]) -> str:
    return "; ".join(f"{what} {_counts(change[what])}" for what in ("added", "changed", "removed"))


def _pool(a: argparse.Namespace) -> int:
    from client.continual.config import pool_config
    from client.continual.pool import (
        build_pool,
        changes,
        current_pool,
        folder_items,
        last_round_pool,
        plan_items,
        plan_pool,
    )
    from client.feedback.store import FeedbackStore
    from common.errors import ConfigError

    data, db = Path(a.data), Path(a.feedback_db)
    if not data.is_dir():
        raise ConfigError(f"--data {data}: no such folder (the site's training folder, as `fracfl ingest` writes)")
    if not db.is_file():
        raise ConfigError(f"--feedback-db {db}: no such file (the listener's feedback_db)")
    cfg = pool_config(a.site_config)
    store = FeedbackStore(db)
    current, base = current_pool(data), last_round_pool(data)
    base_name = f"v{base.version:04d} (the last round's)" if base else "an empty pool (no round has used one)"
    print(f"current pool version: {current.name if current else 'none'}")
    if a.build:
        built = build_pool(store, data, cfg)
        fresh = current is None or built.version != current.version
        print(f"{'built' if fresh else 'unchanged, still'} {built.name}, fingerprint {built.fingerprint[:16]}")
        after, skipped, counts = folder_items(built.root), built.info["skipped"], built.info["counts"]
    else:
        plan = plan_pool(store, data, cfg)
        after, skipped = plan_items(plan, base), dict(plan.skipped)
        counts = None
    print(f"since {base_name}: {_describe(changes(folder_items(base.root if base else None), after, None))}")
    if counts is not None:
        for split, c in counts.items():
            role = "held out, never trained on" if split == "test" else "trained on"
            print(
                f"  {split} ({role}): {c['images']} images ({c['positive']} positive, {c['hard_negative']} hard "
                f"negative), {c['boxes']} boxes, {c['patients']} patients"
            )
    print(f"not in the pool: {_counts(skipped)}")
    if not a.build:
        print("dry run: add --build to make a new version")
    return 0


def register_actions(ssub: argparse._SubParsersAction) -> None:
    p = ssub.add_parser(
        "pool",
        help="what the verdicts changed in the site's training pool since the last round (--build: a new version)",
        description="Reviewed cases of the feedback store become YOLO labels in D/pool/vNNNN (immutable, "
        "fingerprinted); patients are held out by a keyed hash under the site's own salt. See "
        "docs/continuous-learning.md.",
    )
    p.add_argument("--data", required=True, help="the site's training folder D (the pool lives in D/pool)")
    p.add_argument("--feedback-db", required=True, help="the site's feedback store (the listener's feedback_db)")
    p.add_argument("--site-config", default=None, help="site.toml whose [continual] holdout_fraction applies")
    p.add_argument("--build", action="store_true", help="make a new version when anything changed")
    p.set_defaults(func=_pool)
