"""An append-only privacy ledger: JSON Lines, each entry chained to the previous one by a SHA-256 hash.

    {"seq": 3, "prev": "<hash of entry 2>", "kind": "round", ..., "hash": "<sha256 of this entry without hash>"}

Editing an entry breaks its own hash; deleting or reordering one breaks the next entry's `prev`; cutting entries off
the end is caught by the head file (`<ledger>.head`, the last seq and hash, replaced atomically after each append),
which must match the last entry exactly: a non-empty ledger without it, or with entries beyond it, is broken.
Whoever can rewrite the file can recompute every hash and the head, so the heads a site reported to the server
(`check_heads`) are the anchor outside the file.
Reading verifies the chain first: a site whose ledger is damaged or unreadable must not train (fail closed).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.errors import FracflError
from common.privacy import signing
from common.utils.durable import replace_atomic

# Where a round's DP noise and Poisson draws came from, as entries record it ("noise"): drawn at the site from a
# secure source, or seeded from the run's seed (research mode: whoever knows the seed can remove the noise).
SECURE, SEEDED = "secure", "seeded (research mode)"

GENESIS = "0" * 64


class LedgerError(FracflError):
    """The ledger cannot be read, verified or written."""


@dataclass(frozen=True)
class Verdict:
    ok: bool
    entries: int
    line: int | None = None  # 1-based line where the chain breaks
    problem: str = ""
    anchored: int | None = None  # heads recorded by the server that were checked (None: not cross-checked)
    signed: bool = False  # entries from the first signed one on are signed with its key

    def __str__(self) -> str:
        if not self.ok:
            return f"broken at line {self.line}: {self.problem}"
        text = f"intact: {self.entries} entries" + (", signed" if self.signed else "")
        if self.anchored is None:
            return text
        return (
            f"{text}, matching all {self.anchored} heads the server recorded"
            if self.anchored
            else f"{text} (the server recorded no head for this site)"
        )


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 of the entry without its hash and signature (the signature signs this hash)."""
    body = {k: v for k, v in entry.items() if k not in ("hash", "sig")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def verify(path: str | Path) -> tuple[Verdict, list[dict[str, Any]]]:
    """Check every link of the chain and the head; return the verdict and the entries read up to any break."""
    path = Path(path)
    if not path.exists():
        return (Verdict(False, 0, None, "ledger file missing") if _head_path(path).exists() else Verdict(True, 0)), []
    entries: list[dict[str, Any]] = []
    prev, key = GENESIS, None
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                return Verdict(False, len(entries), line_no, "not valid JSON"), entries
            if not isinstance(e, dict):
                return Verdict(False, len(entries), line_no, "not a JSON object"), entries
            if e.get("seq") != line_no:
                return Verdict(
                    False,
                    len(entries),
                    line_no,
                    f"sequence number {e.get('seq')}, expected {line_no} (an entry was deleted, inserted or moved)",
                ), entries
            if e.get("prev") != prev:
                return Verdict(
                    False,
                    len(entries),
                    line_no,
                    "does not chain to the previous entry (an entry before it was deleted or changed)",
                ), entries
            if e.get("hash") != entry_hash(e):
                return Verdict(False, len(entries), line_no, "content does not match its hash (entry edited)"), entries
            key = key or e.get("key")
            if key is not None and not (e.get("key") == key and signing.valid(key, e["hash"], str(e.get("sig")))):
                return Verdict(
                    False,
                    len(entries),
                    line_no,
                    "not signed by the ledger's key (a signed ledger's "
                    "entries are all signed with the key of its first signed entry)",
                ), entries
            entries.append(e)
            prev = e["hash"]
    problem = _head_problem(_head_path(path), len(entries), prev)
    if problem:
        return Verdict(False, len(entries), problem[0], problem[1]), entries
    return Verdict(True, len(entries), signed=key is not None), entries


def _head_problem(head: Path, count: int, last: str) -> tuple[int | None, str] | None:
    """(line, problem) unless the head file records exactly the last entry. Entries after the head are as
    suspect as entries missing before it (appended by hand, or the head rolled back), and a non-empty ledger
    without its head is broken: otherwise deleting the head would switch the tail check off."""
    if not head.exists():
        return (None, f"head file {head.name} missing") if count else None
    try:
        h = json.loads(head.read_text())
        seq, digest = int(h["seq"]), str(h["hash"])
    except (OSError, ValueError, TypeError, KeyError):
        return None, f"head file {head.name} unreadable"
    if seq > count:
        return count + 1, f"entries {count + 1}..{seq} missing (the head records {seq})"
    if seq < count:
        return (
            seq + 1,
            f"entries {seq + 1}..{count} not recorded by the head (appended outside the ledger, "
            "or the head was rolled back)",
        )
    if digest != last:
        return count or None, "last entry differs from the head"
    return None


def check_heads(verdict: Verdict, entries: list[dict[str, Any]], reports: list[dict[str, Any]]) -> Verdict:
    """The site's chain against the heads the server recorded from its replies (`site-report` entries with
    `ledger_head` and `ledger_seq`): a rewritten chain has other hashes, a rollback or truncation lacks the later
    entries, and neither can be hidden by recomputing hashes at the site."""
    if not verdict.ok:
        return verdict
    hashes = {e["hash"] for e in entries}
    for r in reports:
        seq, digest = r.get("ledger_seq"), r.get("ledger_head")
        where = f"for run {r.get('run_id', '?')} round {r.get('round', '?')}"
        if isinstance(seq, int) and seq > len(entries):
            return Verdict(
                False,
                len(entries),
                len(entries) + 1,
                f"the server recorded entry {seq} {where}; the "
                f"ledger ends at entry {len(entries)} (truncated or rolled back to an older copy)",
            )
        at = entries[seq - 1]["hash"] if isinstance(seq, int) and seq >= 1 else None
        if not (at == digest if at is not None else digest in hashes):
            return Verdict(
                False,
                len(entries),
                seq if at else None,
                f"differs from the head the server recorded {where} (entry {seq if at else '?'} rewritten)",
            )
    return replace(verdict, anchored=len(reports))


class Ledger:
    """One ledger file. `entries()` and `append()` raise LedgerError on any damage or I/O failure. With a `key`,
    each appended entry carries its public key and the signature of its hash."""

    def __init__(self, path: str | Path, key: Ed25519PrivateKey | None = None):
        self.path, self.key = Path(path), key

    def entries(self) -> list[dict[str, Any]]:
        try:
            verdict, entries = verify(self.path)
        except OSError as e:
            raise LedgerError(f"privacy ledger {self.path} cannot be read: {e.strerror}") from e
        if not verdict.ok:
            raise LedgerError(
                f"privacy ledger {self.path} is damaged ({verdict}); training stays refused until "
                "governance staff restore it (`fracfl audit verify`)"
            )
        return entries

    def _check_key(self, entries: list[dict[str, Any]]) -> None:
        """Refuse to extend a signed ledger unsigned or with another key (the entry would break it)."""
        signed = next((e["key"] for e in entries if "key" in e), None)
        mine = signing.public_hex(self.key) if self.key is not None else None
        if signed is not None and mine != signed:
            raise LedgerError(
                f"privacy ledger {self.path} is signed with another key than this site's "
                f"({signing.KEY_NAME} lost or replaced?); governance staff must restore it"
            )

    def append(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Add one entry (after verifying the chain), flushed to disk before returning."""
        reserved = {"seq", "prev", "kind", "time", "hash", "key", "sig"} & set(fields)
        if reserved:
            raise LedgerError(f"privacy ledger {self.path}: fields {sorted(reserved)} are set by the ledger itself")
        entries = self.entries()
        self._check_key(entries)
        entry = {
            "seq": len(entries) + 1,
            "prev": entries[-1]["hash"] if entries else GENESIS,
            "kind": kind,
            "time": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            **fields,
        }
        if self.key is not None:
            entry["key"] = signing.public_hex(self.key)
        entry["hash"] = entry_hash(entry)
        if self.key is not None:
            entry["sig"] = signing.sign(self.key, entry["hash"])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            replace_atomic(_head_path(self.path), json.dumps({"seq": entry["seq"], "hash": entry["hash"]}))
        except OSError as e:
            raise LedgerError(f"privacy ledger {self.path} cannot be written: {e.strerror}") from e
        return entry
