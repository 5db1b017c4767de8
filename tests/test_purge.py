"""`fracfl site purge`: retention of kept copies, quarantined files, the listener's failed/done items and linking-
table rows by age; a dry run by default, counts journalled, and the privacy ledger never touched."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing

import pytest

from client.dicom.deid import SiteKeys
from client.purge import purge
from common.cli import build_parser
from common.errors import ConfigError
from common.privacy.ledger import Ledger, verify

OLD = time.time() - 40 * 86_400


def _write(path, text="x", mtime=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def site(tmp_path):
    """A listener's places with one old and one recent thing in each, and a ledger inside the quarantine folder."""
    keep, queue = tmp_path / "keep", tmp_path / "var" / "listener"
    files = {
        "old_copy": _write(keep / "2.25.1.dcm", mtime=OLD),
        "new_copy": _write(keep / "2.25.2.dcm"),
        "old_q": _write(queue / "quarantine" / "undecodable" / "20240101T_a.dcm", mtime=OLD),
        "old_q_reason": _write(queue / "quarantine" / "undecodable" / "20240101T_a.dcm.reason.json", mtime=OLD),
        "new_q": _write(queue / "quarantine" / "undecodable" / "20990101T_b.dcm"),
        "old_failed": _write(queue / "failed" / "item1" / "object.dcm", mtime=OLD),
        "new_done": _write(queue / "done" / "item2" / "object.dcm"),
    }
    _write(queue / "failed" / "item1" / "meta.json", "{}", mtime=OLD)
    ledger = Ledger(queue / "quarantine" / "privacy" / "ledger.jsonl")  # a ledger where it should not be
    ledger.append("round", {"epsilon": 1.0})
    for p in ledger.path.parent.iterdir():
        os.utime(p, (OLD, OLD))
    keys = SiteKeys(tmp_path / "deid")
    keys.record([("2.25.9", "uid", "1.2.3"), ("ANON-OLD", "patient", "MRN-1")])
    with closing(sqlite3.connect(keys.links_path)) as db, db:
        db.execute("UPDATE links SET seen = ? WHERE pseudonym = 'ANON-OLD'", (OLD,))
        db.execute("INSERT INTO links VALUES ('2.25.8', 'uid', '1.2.4', NULL)")  # written before dates were kept
    return tmp_path, keep, queue, files, ledger


def _links(root):
    with closing(sqlite3.connect(root / "deid" / "links.sqlite")) as db:
        return {r[0] for r in db.execute("SELECT pseudonym FROM links")}


def test_dry_run_reports_and_removes_nothing(site):
    root, keep, queue, files, _ = site
    journal = root / "purge.jsonl"
    r = purge(
        30, keep_dir=keep, quarantine_dir=queue / "quarantine", queue_dir=queue, deid_dir=root / "deid", journal=journal
    )
    assert r.counts == {
        "kept copies": 1,
        "quarantined files": 2,
        "queue failed items": 1,
        "queue done items": 0,
        "linking-table rows": 1,
    }
    assert r.undated_links == 1 and r.protected == 2 and not r.applied  # ledger.jsonl and its head
    assert all(p.exists() for p in files.values()) and _links(root) == {"2.25.9", "ANON-OLD", "2.25.8"}
    line = json.loads(journal.read_text())
    assert line["applied"] is False and line["counts"]["kept copies"] == 1
    assert "2.25.1" not in journal.read_text() and "MRN" not in journal.read_text()  # counts, never names


def test_yes_removes_only_what_is_older_and_never_the_ledger(site):
    root, keep, queue, files, ledger = site
    before = ledger.path.read_bytes()
    secret = (root / "deid" / "site_secret.key").read_bytes()
    r = purge(
        30, keep_dir=keep, quarantine_dir=queue / "quarantine", queue_dir=queue, deid_dir=root / "deid", apply=True
    )
    assert r.applied and r.bytes > 0
    gone = {"old_copy", "old_q", "old_q_reason", "old_failed"}
    assert {k for k, p in files.items() if not p.exists()} == gone
    assert not (queue / "failed" / "item1").exists()  # the whole item, meta included
    assert _links(root) == {"2.25.9", "2.25.8"}  # the recent and the undated row stay
    assert ledger.path.read_bytes() == before and verify(ledger.path)[0].ok
    assert (root / "deid" / "site_secret.key").read_bytes() == secret  # pseudonyms stay consistent


def test_linking_rows_are_dated_by_their_last_use(tmp_path):
    keys = SiteKeys(tmp_path / "deid")
    keys.record([("ANON-1", "patient", "MRN-1")])
    with closing(sqlite3.connect(keys.links_path)) as db, db:
        db.execute("UPDATE links SET seen = ?", (OLD,))
    keys.record([("ANON-1", "patient", "MRN-1")])  # the patient is seen again: the link is current
    assert purge(30, deid_dir=tmp_path / "deid", apply=True).counts == {"linking-table rows": 0}
    assert keys.original("ANON-1") == ("patient", "MRN-1")


def test_an_old_linking_table_gains_its_date_column(tmp_path):
    (tmp_path / "deid").mkdir()
    with closing(sqlite3.connect(tmp_path / "deid" / "links.sqlite")) as db, db:
        db.execute("CREATE TABLE links (pseudonym TEXT PRIMARY KEY, kind TEXT NOT NULL, original TEXT NOT NULL)")
        db.execute("INSERT INTO links VALUES ('ANON-2', 'patient', 'MRN-2')")
    assert purge(30, deid_dir=tmp_path / "deid").undated_links == 1  # purge itself changes no schema
    SiteKeys(tmp_path / "deid").record([("ANON-3", "patient", "MRN-3")])
    r = purge(30, deid_dir=tmp_path / "deid")
    assert (r.undated_links, r.counts["linking-table rows"]) == (1, 0)


def test_bad_requests_and_the_command(site, capsys):
    _, keep, queue, files, _ = site
    with pytest.raises(ConfigError, match="positive number of days"):
        purge(0, keep_dir=keep)
    with pytest.raises(ConfigError, match="at least one place"):
        purge(30)
    parser, _ = build_parser()
    args = parser.parse_args(["site", "purge", "--older-than", "30", "--queue-dir", str(queue / "nowhere")])
    with pytest.raises(ConfigError, match="none of the places given exists"):
        args.func(args)
    assert not (queue / "nowhere").exists()  # a purge of nothing creates nothing
    args = parser.parse_args(
        ["site", "purge", "--older-than", "30", "--queue-dir", str(queue), "--keep-dir", str(keep)]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "would remove 1 kept copies" in out and "would remove 1 linking-table rows" in out
    assert "dry run: nothing was removed" in out and files["old_copy"].exists()
    assert (queue / "purge-log.jsonl").exists()
    args = parser.parse_args(
        ["site", "purge", "--older-than", "30", "--queue-dir", str(queue), "--keep-dir", str(keep), "--yes"]
    )
    assert args.func(args) == 0 and not files["old_copy"].exists() and not files["old_q"].exists()
    assert "removed 1 kept copies" in capsys.readouterr().out
    assert len((queue / "purge-log.jsonl").read_text().splitlines()) == 2
