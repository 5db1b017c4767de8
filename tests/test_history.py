"""The run's round history (server/history.py): typed records, the JSON Lines file resume depends on, files written
before records carried a version, crash artefacts and damage."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from common.errors import DataError
from common.protocol import NUM_EXAMPLES, UNDEFINED
from server.history import VERSION, RoundRecord, append_records, read_records, truncate_after
from server.privacy import latest_reports
from server.report import report_facts
from server.run import best_round
from tests.test_report import synthetic_records

V0 = Path(__file__).parent / "data" / "records-v0.jsonl"  # written by fracfl before records carried a version


def test_records_written_before_versions_load_unchanged():
    lines = [json.loads(line) for line in V0.read_text().splitlines()]
    records = read_records(V0)
    assert len(records) == len(lines) == 15 and all("version" not in d for d in lines)
    for d, r in zip(
        lines, records, strict=True
    ):  # every field survives: the record written today is the old one plus a version
        assert r.to_json() == {"version": VERSION, **d}
    first = records[0]
    assert (first.round, first.site, first.phase, first.examples) == (0, "pooled", "server", 6)
    assert first.metrics["precision"] is None and first.metrics["specificity"] == 1.0
    rejected = [r for r in records if not r.ok]
    assert {(r.round, r.site) for r in rejected} == {(1, "site_1"), (2, "site_1")}
    assert rejected[0].status.startswith("rejected: non-finite") and rejected[0].privacy["epsilon"] > 0
    # The readers of records work on the old file as on a new one.
    assert latest_reports(records)["site_1"]["status"].startswith("rejected")
    assert report_facts(records, "old run", {})["sites"] == ["site_0", "site_1", "site_2"]
    assert best_round(records)["by"] == "pooled validation mAP50"


def test_a_record_from_a_newer_fracfl_is_refused_with_its_line(tmp_path):
    path = tmp_path / "records.jsonl"
    append_records(path, synthetic_records()[:2])
    with path.open("a") as f:
        f.write(json.dumps({"version": VERSION + 1, "round": 1, "site": "a", "phase": "train"}) + "\n")
        f.write(json.dumps({"version": VERSION, "round": 1, "site": "a", "phase": "train"}) + "\n")
    with pytest.raises(DataError, match=rf"records\.jsonl:3: .*record version {VERSION + 1}"):
        read_records(path)


@pytest.mark.parametrize(
    "line,problem",
    [
        ('{"round": 0, "site": "a", "phase": "eval"}', "phase 'eval'"),
        ('{"round": 0, "site": "a"}', "missing phase"),
        ("[1, 2]", "expected a JSON object"),
        ('{"round": 0, "site": "a", "phase": "train", "metrics": 3}', "metrics"),
    ],
)
def test_a_line_that_is_not_a_round_record_is_damage(tmp_path, line, problem):
    path = tmp_path / "records.jsonl"
    path.write_text(line + "\n" + '{"round": 1, "site": "a", "phase": "train"}\n')
    with pytest.raises(DataError, match=rf"records\.jsonl:1: not a round record \(.*{problem}"):
        read_records(path)


def test_jsonl_round_trip_and_truncated_tail(tmp_path, caplog):
    path = tmp_path / "rounds.jsonl"
    recs = synthetic_records()
    append_records(path, [r for r in recs if r.round <= 2])
    append_records(path, [r for r in recs if r.round > 2])
    back = read_records(path)
    assert len(back) == len(recs) and back[0] == recs[0]
    assert next(r for r in back if r.status.startswith("rejected")).metrics["loss"] is None  # inf -> null
    assert json.loads(path.read_text().splitlines()[0])["version"] == VERSION

    # A crash mid-write leaves half a line: reading ignores it, the next append cuts it off first.
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"round": 5, "site": "trauma_ce')
    with caplog.at_level(logging.WARNING, logger="fracfl.report"):
        assert len(read_records(path)) == len(recs)
    assert "incomplete last line" in caplog.text
    append_records(path, [RoundRecord(5, "pooled", "server")])
    again = read_records(path)
    assert len(again) == len(recs) + 1 and again[-1].round == 5
    assert path.read_bytes().startswith(whole) and path.read_bytes().count(b"trauma_ce\n") == 0

    # A complete last record that only lost its newline is kept.
    path.write_bytes(whole + b'{"round": 9, "site": "x", "phase": "train"}')
    append_records(path, [RoundRecord(10, "x", "train")])
    assert [r.round for r in read_records(path)[-2:]] == [9, 10]

    # Damage in the middle is not a crash artefact: it is reported with its line number.
    path.write_bytes(b'{"round": 0, "site": "x", "phase": "train"}\nnot json\n{"round": 1}\n')
    with pytest.raises(DataError, match=r"rounds\.jsonl:2"):
        read_records(path)
    assert read_records(tmp_path / "none.jsonl", missing_ok=True) == []


def test_a_resumed_run_keeps_the_records_of_completed_rounds_only(tmp_path):
    path = tmp_path / "records.jsonl"
    recs = synthetic_records()
    append_records(path, recs)
    kept = truncate_after(path, 2)
    assert kept == [RoundRecord.from_json(r.to_json()) for r in recs if r.round <= 2] and read_records(path) == kept
    assert not path.with_name("records.jsonl.tmp").exists()
    assert truncate_after(tmp_path / "none.jsonl", 3) == [] and not (tmp_path / "none.jsonl").exists()


def test_the_pooled_record_decodes_the_wire_numbers():
    r = RoundRecord.pooled(3, {"map50": 0.5, "roc_auc": UNDEFINED, NUM_EXAMPLES: 12.0})
    assert (r.round, r.site, r.phase, r.examples, r.status) == (3, "pooled", "server", 12, "ok")
    assert r.metrics == {"map50": 0.5, "roc_auc": None}
    assert RoundRecord.from_json(r.to_json()) == r
    assert RoundRecord.from_json({"round": 1, "site": "a", "phase": "train", "metrics": {"x": math.nan}}).metrics == {
        "x": None
    }
