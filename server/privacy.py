"""The server's view of privacy: each site's latest report for model cards, and the server's summary ledger.

Sites are the authority on what their images cost (their own ledgers); the server copies what they report into a
hash-chained summary ledger of its own, so governance staff can audit a whole federation from one place and
compare each site's ledger head with the one it reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.config import PrivacyConfig
from common.privacy.ledger import Ledger

MECHANISM = ("DP-SGD at each site (Opacus): Poisson sampling, each image's gradient clipped, Gaussian noise; "
             "noise calibrated once for the whole planned run")
ACCOUNTING = "RDP and PRV accountants (Opacus), both upper bounds; budgets are checked against RDP"
UNIT = "one radiograph (image); a patient with k images is protected at group level k"


def latest_reports(records: list[dict[str, Any]], known: dict[str, dict[str, Any]] | None = None
                   ) -> dict[str, dict[str, Any]]:
    """Each site's most recent privacy report (trained or refused), updating `known`."""
    out = dict(known or {})
    for r in records:
        if r.get("phase") == "train" and r.get("privacy"):
            out[r["site"]] = dict(r["privacy"], status="trained" if r["status"] == "ok" else r["status"][:120])
    return out


def card_section(cfg: PrivacyConfig, reports: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The card's privacy section: every site's epsilon spent up to this version."""
    if cfg.mode != "dp_sgd":
        return None
    keys = ("epsilon", "epsilon_rdp", "epsilon_prv", "delta", "target_epsilon", "ceiling_epsilon",
            "noise_multiplier", "sample_rate", "steps_per_round", "max_grad_norm", "round", "status")
    return {"mode": "dp_sgd", "unit": UNIT, "mechanism": MECHANISM, "accounting": ACCOUNTING,
            "sites": {s: {k: rep[k] for k in keys if k in rep} for s, rep in sorted(reports.items())}}


def summarise(path: Path, run_id: str, records: list[dict[str, Any]]) -> int:
    """Append the round's site reports to the server's summary ledger (once each: a resumed round is not
    recorded twice). Returns the number of entries added."""
    ledger = Ledger(path)
    seen = {(e.get("run_id"), e.get("round"), e.get("site"), e.get("ledger_head")) for e in ledger.entries()}
    added = 0
    for r in records:
        rep = r.get("privacy")
        if r.get("phase") != "train" or not rep:
            continue
        key = (run_id, rep.get("round", r["round"]), r["site"], rep.get("ledger_head"))
        if key in seen:
            continue
        ledger.append("site-report", {**rep, "site": r["site"], "run_id": run_id, "status": r["status"][:200]})
        seen.add(key)
        added += 1
    return added
