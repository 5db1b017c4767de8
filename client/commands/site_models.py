"""`fracfl site fetch|request|gate|approve|promote|recheck|rollback|status`: the site's model store (client/models/)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from common.errors import ConfigError


def _settings(a: argparse.Namespace) -> tuple[Any, Any]:
    """The store and the site's model settings from --models-dir / --site-config ([models], [gate])."""
    from client.models.settings import load_model_settings
    from client.models.store import ModelStore

    settings = load_model_settings(a.site_config)
    root = Path(a.models_dir) if a.models_dir else settings.dir
    if root is None:
        raise ConfigError("give --models-dir, or --site-config with a [models] dir")
    gate = settings.gate
    for key in ("data", "split", "seed"):
        if getattr(a, key, None) is not None:
            gate = replace(gate, **{key: getattr(a, key)})
    if getattr(a, "key", None):
        settings = replace(settings, key=Path(a.key))
    return ModelStore(root), replace(settings, gate=gate)


def _withdrawn(a: argparse.Namespace) -> frozenset[str]:
    """The instances the PACS withdrew, from the feedback store the site.toml's [continual] names (none without one):
    the gate leaves them out of its held-out cases as rounds leave them out of training."""
    from client.continual.config import continual_table, feedback_db
    from client.feedback.store import FeedbackStore

    db = feedback_db(continual_table(a.site_config), a.site_config)
    return FeedbackStore(db).withdrawn() if db is not None else frozenset()


def _data(gate: Any) -> Path:
    """The held-out data.yaml: as given, or, for the site's training folder D, its current pool's (whose `test`
    split holds the reviewed patients never trained on)."""
    from client.continual.pool import current_pool

    if not gate.data:
        raise ConfigError("give the held-out data: --data D or DATA_YAML, or [gate] data in site.toml")
    path = Path(gate.data)
    if not path.is_dir():
        return path
    pool = current_pool(path)
    if pool is None:
        raise ConfigError(f"{path} has no training pool yet: build one with `fracfl site pool --data {path} --build`")
    return pool.data_yaml


def _show_decision(decision: Any) -> None:
    f = decision.figures
    champ, chal = f.get("champion") or {}, f["challenger"]
    left_out = f.get("n_withdrawn_left_out") or 0
    withdrawn = f" ({left_out} withdrawn in PACS left out)" if left_out else ""
    print(
        f"held-out: {f['n_images']} images, {f['n_fracture_images']} with a fracture, {f['n_units']} {f['unit']}s"
        + withdrawn
    )
    found = "a finding on the fracture" if f.get("found_by") == "localised" else "any finding"  # older logs: any
    target = f.get("target_fp_per_image")
    point = (
        f"operating point {f['operating_point']}"
        if target is None
        else f"each model at its own operating point: at most {target:g} false positives per image"
    )
    print(f"a fracture image counts as found by {found} ({point})")
    for role, s in (("champion", champ), ("challenger", chal)):
        if s:
            sens = "undefined" if s["sensitivity"] is None else f"{s['sensitivity']:.3f}"
            at = "" if target is None else f"  at score >= {s['conf']:.4f}"
            print(f"{role:10s} sensitivity {sens}  FP/image {s['fp_per_image']:.3f}{at}  ({s['model']})")
    if "delta_sensitivity" in f:
        ci = f.get("delta_sensitivity_ci")
        shown = f", {f['confidence']:.0%} CI [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""
        print(f"change     sensitivity {f['delta_sensitivity']:+.3f}{shown}; FP/image {f['delta_fp_per_image']:+.3f}")
    print(f"bootstrap: {f['bootstrap']} resamples of {f['unit']}s, seed {f['seed']} ({f['seed_source']})")
    print("ACCEPTED" if decision.accepted else "REFUSED: " + "; ".join(decision.reasons))


def _fetch(a: argparse.Namespace) -> int:
    from client.models.fetch import fetch_from_inbox, fetch_from_registry, fetch_received

    store, _ = _settings(a)
    if a.version == "received":
        folder = fetch_received(store)
    elif a.registry:
        folder = fetch_from_registry(store, a.registry, a.version)
    else:
        folder = fetch_from_inbox(store, a.version)
    print(f"installed {folder.name} in {folder} (hashes checked); next: fracfl site gate {folder.name}")
    return 0


def _request(a: argparse.Namespace) -> int:
    from client.models.requested import cancel, pending, request

    store, _ = _settings(a)
    if a.cancel and not a.versions:
        raise ConfigError("--cancel: name the versions whose requests to withdraw")
    wanted = (cancel if a.cancel else request)(store, a.versions) if a.versions else pending(store)
    if not wanted:
        print("no versions requested")
        return 0
    for version, since in wanted.items():
        print(f"requested {version} (since {since})")
    print("the federation delivers them after its next run, into the inbox; then: fracfl site fetch VERSION")
    return 0


def _gate(a: argparse.Namespace) -> int:
    from client.models.lifecycle import run_gate

    store, settings = _settings(a)
    decision, _ = run_gate(store, a.version, _data(settings.gate), settings.gate, _withdrawn(a))
    _show_decision(decision)
    return 0 if decision.accepted else 1


def _approve(a: argparse.Namespace) -> int:
    from client.models.approval import load_site_key
    from client.models.lifecycle import approve

    store, settings = _settings(a)
    record = approve(store, a.version, a.approver, load_site_key(settings.key), force_reason=_forced(a))
    print(f"approved {record['version']} by {record['approved_by']} at {record['approved_at']} ({record['basis']})")
    return 0


def _promote(a: argparse.Namespace) -> int:
    from client.models.approval import load_site_key
    from client.models.lifecycle import promote

    store, settings = _settings(a)
    key = load_site_key(settings.key)
    forced = _forced(a)
    data = None if forced is not None else _data(settings.gate)
    decision, record = promote(
        store, a.version, a.approver, key, data=data, cfg=settings.gate, force_reason=forced, withdrawn=_withdrawn(a)
    )
    if decision is not None:
        _show_decision(decision)
    if record is None:
        print(f"{a.version} not promoted; the clinical model is unchanged")
        return 1
    print(
        f"{record['version']} is now the clinical model (approved by {record['approved_by']}, {record['approved_at']})"
    )
    return 0


def _recheck(a: argparse.Namespace) -> int:
    from client.models.lifecycle import recheck

    store, settings = _settings(a)
    decision = recheck(store, _data(settings.gate), settings.gate, _withdrawn(a))
    if decision is None:
        print("nothing to re-check: the clinical model replaced no earlier one")
        return 0
    _show_decision(decision)
    if not decision.accepted:
        print(
            "the clinical model no longer passes the gate against the one it replaced; to go back: fracfl site rollback"
        )
    return 0 if decision.accepted else 1


def _rollback(a: argparse.Namespace) -> int:
    from client.models.approval import load_site_key
    from client.models.lifecycle import rollback

    store, settings = _settings(a)
    record = rollback(store, a.approver, load_site_key(settings.key), a.reason or "")
    print(f"rolled back: {record['version']} is the clinical model again (approved by {record['approved_by']})")
    return 0


def _status(a: argparse.Namespace) -> int:
    from client.models.approval import load_site_key, operating_point, public_pem
    from client.models.lifecycle import status
    from common.privacy import signing

    store, settings = _settings(a)
    key = load_site_key(settings.key) if settings.key is not None and settings.key.is_file() else None
    info = status(store, signing.public_hex(key) if key is not None else None)
    if a.write_public_key:
        if key is None:
            raise ConfigError("--write-public-key: the site's key is not available here")
        Path(a.write_public_key).write_bytes(public_pem(key))
        print(f"wrote the site's public key to {a.write_public_key} (approval_key of a clinical listener)")
    if a.json:
        print(json.dumps(info, indent=1))
        return 0
    current = info["current"]
    if current is None:
        print(f"{store.root}: no clinical model yet")
    else:
        print(f"clinical model: {current['version']}, approved by {current['approved_by']} at {current['approved_at']}")
        print(f"  basis: {current['basis']}")
        ch = (current.get("figures") or {}).get("challenger") or {}
        if ch:
            print(f"  figures: sensitivity {ch.get('sensitivity')}, FP/image {ch.get('fp_per_image')}")
        point = operating_point(current)
        print(
            "  operating point: the listener's configured eval.conf"
            if point is None
            else f"  operating point: score >= {point:.4f} (chosen by its gate; listeners use it for this version)"
        )
        problems = info.get("approval_problems")
        if problems:
            print("  APPROVAL DOES NOT HOLD: " + "; ".join(problems))
        elif problems is not None:
            print("  approval: signature and files verified")
    print(f"installed: {', '.join(info['versions']) or 'none'}")
    print(f"delivered (inbox): {', '.join(info['delivered']) or 'none'}")
    print(f"requested: {', '.join(info['requested']) or 'none'}")
    for e in info["history"][-a.last :]:
        outcome = "" if "accepted" not in e else (" accepted" if e["accepted"] else " refused")
        who = e.get("approved_by") or e.get("by") or ""
        print(f"  {e['time']} {e['action']} {e.get('version')}{outcome}{' by ' + who if who else ''}")
    return 0


def _forced(a: argparse.Namespace) -> str | None:
    if not getattr(a, "force", False):
        return None
    if not a.reason:
        raise ConfigError("--force needs --reason: say why the gate is skipped (it is recorded)")
    return a.reason


def register_actions(ssub: argparse._SubParsersAction) -> None:
    """Add the model-store actions to `fracfl site`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models-dir", default=None, help="the site's model store (default: site.toml [models] dir)")
    common.add_argument("--site-config", default=None, help="the site's site.toml ([models], [gate], the key)")
    signer = argparse.ArgumentParser(add_help=False)
    signer.add_argument("--approver", required=True, help="who approves (name or login; kept at the site only)")
    signer.add_argument("--key", default=None, help="the site's private key (default: from site.toml)")
    gated = argparse.ArgumentParser(add_help=False)
    gated.add_argument(
        "--data",
        default=None,
        help="the site's training folder D (its current pool's held-out split) or a held-out data.yaml (default: "
        "site.toml [gate] data)",
    )
    gated.add_argument("--split", default=None, help="its held-out split (default: [gate] split, test)")
    gated.add_argument("--seed", type=int, default=None, help="bootstrap seed (default: [gate] seed, else secure)")
    forced = argparse.ArgumentParser(add_help=False)
    forced.add_argument("--force", action="store_true", help="skip the gate (needs --reason; logged as forced)")
    forced.add_argument("--reason", default=None, help="why (recorded with the decision)")

    p = ssub.add_parser("fetch", parents=[common], help="install a published version into the model store")
    p.add_argument("version", help="v0007, latest (with --registry), or `received` (the last round's global model)")
    p.add_argument("--registry", default=None, help="a registry folder; without it, the version delivered to the inbox")
    p.set_defaults(func=_fetch)
    p = ssub.add_parser(
        "request", parents=[common], help="ask the federation for published versions (delivered after its next run)"
    )
    p.add_argument("versions", nargs="*", help="v0007 ... (none: list the pending requests)")
    p.add_argument("--cancel", action="store_true", help="withdraw the requests for these versions")
    p.set_defaults(func=_request)
    p = ssub.add_parser("gate", parents=[common, gated], help="champion/challenger gate on the held-out cases")
    p.add_argument("version")
    p.set_defaults(func=_gate)
    p = ssub.add_parser("approve", parents=[common, signer, forced], help="sign an approval record for a version")
    p.add_argument("version")
    p.set_defaults(func=_approve)
    p = ssub.add_parser(
        "promote", parents=[common, signer, gated, forced], help="gate, approve and make a version the clinical model"
    )
    p.add_argument("version")
    p.set_defaults(func=_promote)
    p = ssub.add_parser(
        "recheck",
        parents=[common, gated],
        help="judge the clinical model again against the one it replaced, on the held-out cases reviewed since",
    )
    p.set_defaults(func=_recheck)
    p = ssub.add_parser("rollback", parents=[common, signer], help="back to the previous approved clinical model")
    p.add_argument("--reason", default=None, help="why (recorded)")
    p.set_defaults(func=_rollback)
    p = ssub.add_parser("status", parents=[common], help="the clinical model, its approval and the decision history")
    p.add_argument("--json", action="store_true", help="everything as JSON")
    p.add_argument("--last", type=int, default=20, help="history lines shown (default %(default)s)")
    p.add_argument("--write-public-key", default=None, metavar="FILE", help="write the site's public key (PEM)")
    p.set_defaults(func=_status)
