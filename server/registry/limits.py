"""The intended-use and limitations section every card carries, derived from the card's own figures so it cannot be
left out or disagree with them: what the model is for (and that it is not a medical device), the data per site,
performance with 95 % confidence intervals where the card's counts allow one, and known failure modes.

A card holds aggregates only: no per-image result leaves a site. So intervals are Wilson score intervals on image
counts (sensitivity over the radiographs with a fracture, specificity over those without); mAP and ROC AUC, which
would need a bootstrap over per-image results, are reported without one, and the card says so.
"""

from __future__ import annotations

import math
from typing import Any

from common.protocol import N_POSITIVE

INTENDED_USE = (
    "Research and evaluation of federated fracture detection. It draws boxes around suspected fractures "
    "on radiographs (CR/DX) for a qualified reader to review. It is NOT a medical device: it is not "
    "cleared, approved or CE-marked for diagnosis, must not be the only read of an image, and must not "
    "drive treatment decisions."
)
HELD_OUT = (
    "Figures are measured on each site's validation split: radiographs the model was not trained on. The "
    "same splits are used to pick the best round, so the figures of a chosen round are somewhat optimistic; "
    "an independent test set at each site is the real check before any clinical evaluation."
)
INTERVALS = (
    "95 % intervals are Wilson score intervals on image counts (sensitivity over radiographs with a fracture, "
    "specificity over those without). This card holds aggregates only (no per-image result leaves a site), "
    "so mAP and ROC AUC have no interval here: a bootstrap needs per-image results, which stay at the sites. "
    "Sites send their image counts rounded to the nearest 10 (the exact counts stay there), so a site's interval "
    "is approximate, and a site with too few validation images sends no figures at all."
)
FAILURE_MODES = (
    "Subtle, non-displaced or hairline fractures, and fractures visible in one projection only, are missed more often.",
    (
        "Anatomy, projections, ages (children's growth plates), implants, casts and splints that are rare in the "
        "training sites' data are outside what was learnt; performance there is unknown."
    ),
    (
        "Scanners, vendors, image processing or populations unlike the training sites' (domain shift) lower performance "
        "without warning; validate at each new site first."
    ),
    "A site with few fracture images has a wide sensitivity interval: its figure alone says little.",
    (
        "Under DP-SGD each image's influence is bounded, so rare presentations are learnt least; accuracy is lower than "
        "without DP."
    ),
    (
        "Sensitivity and specificity hold at the card's operating threshold only; boxes localise approximately (one box "
        "may cover several fractures, or one fracture get several boxes)."
    ),
)
Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (well behaved at 0 and n, unlike the normal approximation)."""
    if n <= 0:
        raise ValueError("wilson: n must be > 0")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _interval(value: Any, n: int | None) -> dict[str, Any] | None:
    if not isinstance(value, (int, float)) or n is None or n <= 0:
        return None
    lo, hi = wilson(round(value * n), n)
    return {"value": float(value), "n": n, "ci95": [round(lo, 4), round(hi, 4)]}


def _whole(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and value >= 0 and float(value).is_integer() else None


def performance(scope: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """One row: the validation figures of `scope` (pooled or a site) with intervals where its counts allow."""
    images, positive = _whole(metrics.get("n_images")), _whole(metrics.get(N_POSITIVE))
    negative = images - positive if images is not None and positive is not None else None
    row: dict[str, Any] = {"scope": scope, "images": images, "fracture_images": positive}
    for key, n in (("sensitivity", positive), ("specificity", negative)):
        row[key] = _interval(metrics.get(key), n)
    for key in ("map50", "roc_auc"):
        value = metrics.get(key)
        row[key] = float(value) if isinstance(value, (int, float)) else None
    return row


def limitations(sites: list[dict[str, Any]], metrics: dict[str, Any]) -> dict[str, Any]:
    """The section, from a card's cleaned `sites` and `metrics`."""
    per_site = metrics.get("per_site") or {}
    data = [
        {
            "site": s["name"],
            "training_images": s["examples"],
            "status": s["status"],
            "validation_images": _whole((per_site.get(s["name"]) or {}).get("n_images")),
        }
        for s in sites
    ]
    rows = [performance("pooled", metrics["pooled"])] if metrics.get("pooled") else []
    rows += [performance(name, m) for name, m in per_site.items()]
    return {
        "intended_use": INTENDED_USE,
        "data": data,
        "held_out": HELD_OUT,
        "intervals": INTERVALS,
        "performance": rows,
        "failure_modes": list(FAILURE_MODES),
    }
