"""The site's gate in front of Flower's `flwr-clientapp`: only app bundles (FABs) this site approved run here.

A SuperNode starts `flwr-clientapp` from PATH for every message; `fracfl site app-gate` writes a launcher of that name
into the site folder's `bin/`, put first on the SuperNode's PATH. The launcher runs Flower's own `flwr-clientapp`
with one step added: before the bundle is unpacked or imported, its SHA-256 must be in the site's allow-list
(`approved-fabs.jsonl`, written by `fracfl site approve-app` after checking the publisher's signature). Otherwise the
task fails with a clear reason (sent to the server as the ClientApp's error) and the refusal is appended to the
site's audit trail (`audit.jsonl`). The check lives in the site's installation, never in a bundle.

This module imports only the standard library and Flower: the launcher loads it by file path, so that no package
named like the bundle's own (`client`, `common`, ...) is imported before the bundle.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

APPROVED = "approved-fabs.jsonl"
AUDIT = "audit.jsonl"
LAUNCHER = "flwr-clientapp"


class FabRefused(RuntimeError):
    """The bundle is not approved at this site."""


def _append(path: Path, entry: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **entry}, sort_keys=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()


def audit(site_dir: Path, event: str, **details: Any) -> None:
    """One line in the site's audit trail."""
    _append(site_dir / AUDIT, {"event": event, **details})


def approved(site_dir: Path) -> set[str]:
    """The approved bundle hashes; a missing file approves nothing, an unreadable line is skipped (fail closed)."""
    path = site_dir / APPROVED
    if not path.is_file():
        return set()
    hashes = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            hashes.add(str(json.loads(line)["fab_sha256"]))
        except (ValueError, KeyError, TypeError):
            continue
    return hashes


def approve(site_dir: Path, sha: str, **details: Any) -> None:
    """Add `sha` to the allow-list (idempotent) and record who vouched for it."""
    if sha not in approved(site_dir):
        _append(site_dir / APPROVED, {"fab_sha256": sha, **details})
    audit(site_dir, "fab-approved", fab_sha256=sha, **details)


def check(site_dir: Path, fab: bytes) -> str:
    """The bundle's hash if approved; FabRefused (and an audit line) if not."""
    sha = hashlib.sha256(fab).hexdigest()
    if sha in approved(site_dir):
        return sha
    audit(site_dir, "fab-refused", fab_sha256=sha, reason="not in " + APPROVED)
    raise FabRefused(
        f"app bundle sha256:{sha} is not approved at this site; nothing of it was unpacked or run "
        "(a site approves a version with `fracfl site approve-app`, docs/deployment.md)"
    )


def install(site_dir: Path) -> None:
    """Check every bundle `flwr-clientapp` is about to unpack: Flower 1.42 unpacks it with `install_from_fab` right
    after receiving it and imports it only afterwards."""
    from flwr.supernode.runtime import run_clientapp

    unpack = run_clientapp.install_from_fab

    def gated(fab_file: Any, *args: Any, **kwargs: Any) -> Any:
        check(site_dir, fab_file if isinstance(fab_file, bytes) else Path(fab_file).read_bytes())
        return unpack(fab_file, *args, **kwargs)

    run_clientapp.install_from_fab = gated


def main(site_dir: str) -> None:
    """`flwr-clientapp`, gated."""
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    install(Path(site_dir))
    flwr_clientapp()


def write_launcher(site_dir: Path) -> Path:
    """`site_dir/bin/flwr-clientapp`: this interpreter, this file, this site folder."""
    launcher = site_dir / "bin" / LAUNCHER
    launcher.parent.mkdir(parents=True, exist_ok=True)
    launcher.write_text(
        f"#!{sys.executable}\n"
        '"""fracfl: Flower\'s flwr-clientapp, running only app bundles this site approved (client/fab_gate.py)."""\n'
        "import importlib.util\nimport sys\n\n"
        f"spec = importlib.util.spec_from_file_location('fracfl_fab_gate', {str(Path(__file__).resolve())!r})\n"
        "gate = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(gate)\n"
        f"sys.exit(gate.main({str(site_dir.resolve())!r}))\n"
    )
    launcher.chmod(0o755)
    return launcher
