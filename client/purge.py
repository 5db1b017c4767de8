"""Retention at a site: remove what the site keeps about patients once it is older than the site's retention period.

What is purged, by age (file modification time; a link row's last use):
    keep_dir/*.dcm                 de-identified copies the DICOM pipeline kept (pseudonymous)
    quarantine/<reason>/...        refused originals and their reason files (identifiable)
    queue_dir/failed/<id>/, done/<id>/   the listener's given-up and kept originals (identifiable)
    deid_dir/links.sqlite rows     pseudonym -> original links (identifiable); the secret itself is kept, so
                                   pseudonyms stay consistent for images still to come
Nothing else is touched: never the privacy ledger (its entries, head, dataset lists and signing key are the site's
record of spent budget), whatever folder it lies in. A run is a dry run unless `apply`; each run appends one line of
counts (never names) to a journal.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from client.dicom.deid import LINKS_FILE
from common.errors import ConfigError

log = logging.getLogger("fracfl.client.purge")
LEDGER_FILES = ("ledger.jsonl", "ledger.jsonl.head", "ledger-key.pem", "site.toml")
DAY = 86_400.0


@dataclass
class Purge:
    """What a purge found (dry run) or removed: counts and bytes per place, never names."""

    older_than_days: float
    cutoff: float  # UTC seconds: anything last changed before it is due
    applied: bool
    counts: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    undated_links: int = 0  # rows written before links recorded their use: kept, reported
    protected: int = 0  # ledger files found among the places and left alone

    def to_dict(self) -> dict:
        return asdict(self)


def _is_ledger(path: Path) -> bool:
    """A ledger file, anything in a folder that holds one (its dataset lists, key, head), or a folder holding one."""
    return (
        path.name in LEDGER_FILES
        or any((p / "ledger.jsonl").exists() for p in path.parents)
        or (path.is_dir() and any(path.rglob("ledger.jsonl")))
    )


def _age(path: Path) -> float:
    """Last change of a file, or of the newest file in a folder (a queue item's meta is rewritten as it moves)."""
    if path.is_dir():
        return max((p.stat().st_mtime for p in path.rglob("*") if p.is_file()), default=path.stat().st_mtime)
    return path.stat().st_mtime


def _candidates(keep_dir: Path | None, quarantine_dir: Path | None, queue_dir: Path | None) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    if keep_dir is not None and keep_dir.is_dir():
        found["kept copies"] = sorted(p for p in keep_dir.glob("*.dcm") if p.is_file())
    if quarantine_dir is not None and quarantine_dir.is_dir():
        found["quarantined files"] = sorted(p for p in quarantine_dir.glob("*/*") if p.is_file())
    for state in ("failed", "done"):
        folder = queue_dir / state if queue_dir is not None else None
        if folder is not None and folder.is_dir():
            found[f"queue {state} items"] = sorted(p for p in folder.iterdir() if p.is_dir())
    return found


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _links(db_path: Path, cutoff: float, result: Purge) -> None:
    with closing(sqlite3.connect(db_path, timeout=30)) as db, db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(links)")}
        if not columns:
            return
        if "seen" not in columns:  # never opened since retention was added: every row is undated
            result.undated_links = db.execute("SELECT COUNT(*) FROM links").fetchone()[0]
            return
        result.undated_links = db.execute("SELECT COUNT(*) FROM links WHERE seen IS NULL").fetchone()[0]
        due = db.execute("SELECT COUNT(*) FROM links WHERE seen < ?", (cutoff,)).fetchone()[0]
        result.counts["linking-table rows"] = due
        if result.applied and due:
            db.execute("DELETE FROM links WHERE seen < ?", (cutoff,))


def purge(
    older_than_days: float,
    *,
    keep_dir: str | Path | None = None,
    quarantine_dir: str | Path | None = None,
    queue_dir: str | Path | None = None,
    deid_dir: str | Path | None = None,
    apply: bool = False,
    journal: str | Path | None = None,
    now: float | None = None,
) -> Purge:
    """Find (and with `apply`, remove) everything in the given places last changed more than `older_than_days` ago."""
    if not older_than_days > 0:
        raise ConfigError(f"site purge: --older-than must be a positive number of days, got {older_than_days}")
    paths = [Path(p) if p is not None else None for p in (keep_dir, quarantine_dir, queue_dir, deid_dir)]
    if all(p is None for p in paths):
        raise ConfigError("site purge: name at least one place (--keep-dir, --quarantine-dir, --queue-dir, --deid-dir)")
    keep, quarantine_root, queue, deid = paths
    result = Purge(older_than_days, (time.time() if now is None else now) - older_than_days * DAY, apply)
    for place, items in _candidates(keep, quarantine_root, queue).items():
        due = []
        for item in items:
            if _is_ledger(item):
                result.protected += 1
            elif _age(item) < result.cutoff:
                due.append(item)
        result.counts[place] = len(due)
        for item in due:
            result.bytes += _size(item)
            if apply:
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    if deid is not None and (deid / LINKS_FILE).is_file():
        _links(deid / LINKS_FILE, result.cutoff, result)
    _record(result, journal)
    return result


def _record(result: Purge, journal: str | Path | None) -> None:
    what = ", ".join(f"{n} {place}" for place, n in result.counts.items()) or "nothing in the places given"
    log.info(
        "site purge (%s, older than %g days): %s, %d bytes%s",
        "applied" if result.applied else "dry run",
        result.older_than_days,
        what,
        result.bytes,
        f"; {result.undated_links} undated link rows kept" if result.undated_links else "",
    )
    if journal is not None:
        path = Path(journal)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps({"at": time.time(), **result.to_dict()}) + "\n")
