"""Which version is the site's clinical model, and every change to it: gate, approve, promote, re-check, roll back,
status.

Each step appends one line to M/decisions.jsonl. `promote` makes a version current only through a signed approval
record: normally from a gate decision that accepted it, or with `force` and a written reason (logged as such).
`recheck` judges the clinical model again, with the same gate, against the version it replaced, on held-out cases
reviewed since its promotion; `rollback` returns to that version, whose approval is checked again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.models.approval import NotApproved, check_approval, check_approver, sign_approval
from client.models.gate import GateDecision, gate
from client.models.requested import pending
from client.models.settings import GateConfig
from client.models.store import ModelStore, normalise
from common.errors import ConfigError, DataError
from common.privacy import signing


def champion(store: ModelStore) -> str | None:
    """The current clinical version's name, or None."""
    current = store.current()
    return str(current["version"]) if current else None


def run_gate(
    store: ModelStore, version: str, data: Path, cfg: GateConfig, withdrawn: frozenset[str] = frozenset()
) -> tuple[GateDecision, dict[str, Any]]:
    """Gate an installed version against the current champion, leaving out the images the PACS withdrew; the decision
    is logged and returned with its entry."""
    version = normalise(version)
    problems = store.check(version)
    if problems:
        raise DataError(store.folder(version), "refusing to gate a damaged version: " + "; ".join(problems))
    champ = champion(store)
    if champ == version:
        raise ConfigError(f"{version} is already the site's clinical model")
    decision = gate(
        store.folder(champ) if champ else None, store.folder(version), Path(data), cfg.split, cfg, withdrawn
    )
    entry = store.log(
        {
            "action": "gate",
            "version": version,
            "champion": champ,
            "accepted": decision.accepted,
            "reasons": decision.reasons,
            "figures": decision.figures,
        }
    )
    return decision, entry


def approve(
    store: ModelStore,
    version: str,
    approver: str,
    key: Ed25519PrivateKey,
    *,
    force_reason: str | None = None,
) -> dict[str, Any]:
    """Sign an approval record for `version` from its latest gate decision, which must have accepted it against
    the present champion; `force_reason` approves without one (the reason is recorded and logged)."""
    version = normalise(version)
    gated = _last_gate(store, version)
    if force_reason is not None:
        reason = " ".join(force_reason.split())
        if not reason:
            raise ConfigError("--force needs --reason: say why this version is approved without the gate")
        basis, figures = f"forced: {reason}", (gated or {}).get("figures", {})
    elif gated is None or not gated["accepted"]:
        why = "it was never gated" if gated is None else "the gate refused it: " + "; ".join(gated["reasons"])
        raise NotApproved(f"{version} cannot be approved: {why} (`fracfl site gate {version}`, or --force --reason)")
    elif gated.get("champion") != champion(store):
        raise NotApproved(
            f"{version} was gated against {gated.get('champion')}, but the clinical model is now "
            f"{champion(store)}: gate it again"
        )
    else:
        basis, figures = f"gate decision of {gated['time']}", gated["figures"]
    record = sign_approval(store, version, approver, figures, basis, key)
    store.save_approval(record)
    store.log({"action": "approve", "version": version, "approved_by": record["approved_by"], "basis": basis})
    return record


def promote(
    store: ModelStore,
    version: str,
    approver: str,
    key: Ed25519PrivateKey,
    *,
    data: Path | None = None,
    cfg: GateConfig | None = None,
    force_reason: str | None = None,
    withdrawn: frozenset[str] = frozenset(),
) -> tuple[GateDecision | None, dict[str, Any] | None]:
    """Gate `version` (unless forced), approve it and make it current. Returns the gate decision and the approval
    record (None when the gate refused: nothing changed, the refusal is logged)."""
    version = normalise(version)
    decision = None
    if force_reason is None:
        if data is None or cfg is None:
            raise ConfigError("promote: give the held-out data ([gate] data or --data) to run the gate")
        decision, _ = run_gate(store, version, data, cfg, withdrawn)
        if not decision.accepted:
            store.log({"action": "promote", "version": version, "accepted": False, "reasons": decision.reasons})
            return decision, None
    record = approve(store, version, approver, key, force_reason=force_reason)
    previous = champion(store)
    store.set_current(record)
    store.log(
        {
            "action": "promote",
            "version": version,
            "from": previous,
            "accepted": True,
            "approved_by": record["approved_by"],
            "forced": force_reason is not None,
        }
    )
    return decision, record


def predecessor(store: ModelStore) -> str | None:
    """The version the clinical model replaced when it was last promoted; None for the site's first model."""
    now = champion(store)
    return next(
        (
            e.get("from")
            for e in reversed(store.decisions())
            if e.get("action") == "promote" and e.get("version") == now and e.get("accepted")
        ),
        None,
    )


def recheck(
    store: ModelStore, data: Path, cfg: GateConfig, withdrawn: frozenset[str] = frozenset()
) -> GateDecision | None:
    """Judge the clinical model again, as the challenger, against the version it replaced, as the champion, with the
    gate `cfg` on the held-out split of `data` (which has grown with the cases reviewed since the promotion). The
    decision is logged as a `recheck`; None (nothing logged) when the clinical model replaced nothing. A refusal
    changes nothing by itself: rolling back is the site's decision (`rollback`)."""
    now, before = champion(store), predecessor(store)
    if now is None or before is None:
        return None
    for version in (now, before):
        problems = store.check(version)
        if problems:
            raise DataError(store.folder(version), "refusing to re-check a damaged version: " + "; ".join(problems))
    decision = gate(store.folder(before), store.folder(now), Path(data), cfg.split, cfg, withdrawn)
    store.log(
        {
            "action": "recheck",
            "version": now,
            "champion": before,
            "accepted": decision.accepted,
            "reasons": decision.reasons,
            "figures": decision.figures,
        }
    )
    return decision


def rollback(store: ModelStore, approver: str, key: Ed25519PrivateKey, reason: str = "") -> dict[str, Any]:
    """Make the version current before the present one the clinical model again, if its approval still holds."""
    now = champion(store)
    if now is None:
        raise ConfigError("rollback: the site has no clinical model yet")
    before = predecessor(store)
    if before is None:
        raise ConfigError(f"rollback: {now} is the first clinical model of this site; there is nothing before it")
    record = store.approval(before)
    problems = check_approval(store, record, signing.public_hex(key))
    if problems:
        raise NotApproved(f"rollback to {before} refused: " + "; ".join(problems))
    assert record is not None
    store.set_current(record)
    store.log({"action": "rollback", "version": before, "from": now, "by": check_approver(approver), "reason": reason})
    return record


def status(store: ModelStore, public_key: str | None = None) -> dict[str, Any]:
    """The current model, who approved it and when, on which figures, whether its approval checks out (when the
    site's key is known), the installed versions, those delivered and those requested, and the decision history."""
    current = store.current()
    out: dict[str, Any] = {
        "store": str(store.root),
        "current": current,
        "versions": store.versions(),
        "delivered": store.delivered(),
        "requested": pending(store),
    }
    if current is not None and public_key is not None:
        out["approval_problems"] = check_approval(store, current, public_key)
    out["history"] = store.decisions()
    return out


def _last_gate(store: ModelStore, version: str) -> dict[str, Any] | None:
    return next(
        (e for e in reversed(store.decisions()) if e.get("action") == "gate" and e.get("version") == version), None
    )
