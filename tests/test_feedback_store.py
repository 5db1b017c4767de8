"""The site's feedback store: findings, every kind of verdict with its previous value, conflicts, concurrency,
schema migrations."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from client.feedback.schema import MIGRATIONS, connect, migrate
from client.feedback.store import Box, ConflictError, FeedbackStore
from common.errors import FracflError


def _store(tmp_path: Path) -> FeedbackStore:
    return FeedbackStore(tmp_path / "feedback.db", class_names=["fracture", "avulsion"])


def _image(store: FeedbackStore, uid: str = "2.25.1", p: float = 0.9, n_boxes: int = 2, **kw) -> int:
    boxes = [Box(10 + 40 * k, 10, 40 + 40 * k, 50, score=0.8 - 0.1 * k) for k in range(n_boxes)]
    return store.record_image(
        sop_uid=uid,
        image_ref=f"/keep/{uid}.dcm",
        model_version="v3",
        probability=p,
        boxes=boxes,
        heatmap_ref=f"/keep/{uid}.heatmap.png",
        **kw,
    )


def test_record_and_read_back(tmp_path):
    store = _store(tmp_path)
    image_id = _image(store, body_part="WRIST", patient="PSEUDO-1")
    row = store.image_by_sop_uid("2.25.1")
    assert row is not None and row.id == image_id
    assert (row.model_version, row.probability, row.body_part, row.patient) == ("v3", 0.9, "WRIST", "PSEUDO-1")
    assert [b.box.as_list() for b in row.boxes] == [[10, 10, 40, 50], [50, 10, 80, 50]]
    assert {b.status for b in row.boxes} == {"proposed"} and {b.version for b in row.boxes} == {1}
    assert row.boxes[0].box.score == pytest.approx(0.8)
    assert store.image_by_sop_uid("2.25.404") is None
    # the listener re-processing the same job after a crash does not duplicate the finding
    assert _image(store) == image_id and len(store.worklist()) == 1
    with sqlite3.connect(tmp_path / "feedback.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_every_verdict_kind_keeps_the_previous_value(tmp_path):
    store = _store(tmp_path)
    image_id = _image(store)
    b1, b2 = store.image(image_id).boxes
    store.add_verdict(image_id=image_id, reviewer="rev-a", kind="confirm", box_id=b1.id, expected_version=1)
    store.add_verdict(image_id=image_id, reviewer="rev-a", kind="reject", box_id=b2.id)
    store.add_verdict(
        image_id=image_id, reviewer="rev-b", kind="move", box_id=b1.id, box=Box(12, 12, 44, 52), expected_version=2
    )
    store.add_verdict(image_id=image_id, reviewer="rev-b", kind="set_class", box_id=b1.id, class_name="avulsion")
    store.add_verdict(image_id=image_id, reviewer="rev-b", kind="add", box=Box(100, 100, 130, 140))
    store.add_verdict(image_id=image_id, reviewer="rev-b", kind="note", note="old healed fracture too")
    store.add_verdict(image_id=image_id, reviewer="rev-c", kind="no_fracture", source="pacs-kos", source_ref="2.25.99")
    v = store.verdicts(image_id)
    assert [x.kind for x in v] == ["confirm", "reject", "move", "set_class", "add", "note", "no_fracture"]
    assert v[0].previous == {"box": [10, 10, 40, 50], "cls": 0, "status": "proposed", "version": 1}
    assert v[2].previous["box"] == [10, 10, 40, 50] and v[2].value == {"box": [12, 12, 44, 52]}
    assert v[3].previous["cls"] == 0 and v[3].value == {"class_name": "avulsion", "cls": 1}
    assert v[6].source == "pacs-kos" and v[6].source_ref == "2.25.99" and v[6].previous["no_fracture"] is False
    assert all(x.created_at and x.reviewer for x in v)
    row = store.image(image_id)
    by_id = {b.id: b for b in row.boxes}
    assert by_id[b1.id].box.as_list() == [12, 12, 44, 52] and by_id[b1.id].box.cls == 1
    assert by_id[b1.id].status == "corrected" and by_id[b1.id].version == 4
    assert by_id[b2.id].status == "rejected"
    added = [b for b in row.boxes if b.origin == "reviewer"]
    assert len(added) == 1 and added[0].status == "added" and added[0].box.score is None
    assert v[4].box_id == added[0].id
    assert row.no_fracture and row.reviewed
    assert [a["action"] for a in store.audit_log()].count("verdict:confirm") == 1
    assert len([a for a in store.audit_log() if a["action"].startswith("verdict:")]) == 7


def test_bad_verdicts_are_refused_with_a_clear_error(tmp_path):
    store = _store(tmp_path)
    image_id = _image(store)
    box_id = store.image(image_id).boxes[0].id
    with pytest.raises(FracflError, match="kind 'approve'"):
        store.add_verdict(image_id=image_id, reviewer="r", kind="approve", box_id=box_id)
    with pytest.raises(FracflError, match="needs box_id"):
        store.add_verdict(image_id=image_id, reviewer="r", kind="confirm")
    with pytest.raises(FracflError, match="not one of the configured class names"):
        store.add_verdict(image_id=image_id, reviewer="r", kind="set_class", box_id=box_id, class_name="spiral")
    with pytest.raises(FracflError, match="no image 999"):
        store.add_verdict(image_id=999, reviewer="r", kind="no_fracture")
    with pytest.raises(FracflError, match="x1 < x2"):
        Box(10, 10, 5, 20)
    assert store.verdicts() == []


def test_stale_edit_of_the_same_box_is_a_conflict(tmp_path):
    store = _store(tmp_path)
    image_id = _image(store)
    box = store.image(image_id).boxes[0]
    store.add_verdict(
        image_id=image_id,
        reviewer="rev-a",
        kind="move",
        box_id=box.id,
        box=Box(11, 11, 41, 51),
        expected_version=box.version,
    )
    with pytest.raises(ConflictError, match="changed since version 1") as e:
        store.add_verdict(
            image_id=image_id, reviewer="rev-b", kind="reject", box_id=box.id, expected_version=box.version
        )
    assert e.value.current_version == 2
    assert [v.reviewer for v in store.verdicts()] == ["rev-a"]  # the loser wrote nothing
    version = store.image(image_id).version
    store.add_verdict(image_id=image_id, reviewer="rev-a", kind="no_fracture", expected_version=version)
    with pytest.raises(ConflictError):
        store.add_verdict(
            image_id=image_id, reviewer="rev-b", kind="add", box=Box(1, 1, 5, 5), expected_version=version
        )


def _write_verdicts(path: str, image_ids: list[int], reviewer: str, rounds: int) -> None:
    store = FeedbackStore(path)
    for k in range(rounds):
        for image_id in image_ids:
            store.add_verdict(image_id=image_id, reviewer=reviewer, kind="note", note=f"{reviewer} {k}")
            box_id = store.image(image_id).boxes[k % 2].id
            store.add_verdict(image_id=image_id, reviewer=reviewer, kind="confirm", box_id=box_id)


def test_concurrent_writers_lose_nothing(tmp_path):
    store = _store(tmp_path)
    ids = [_image(store, uid=f"2.25.{k}", p=0.1 * k) for k in range(1, 4)]
    path, rounds = str(tmp_path / "feedback.db"), 5
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_verdicts, args=(path, ids, f"proc-{k}", rounds)) for k in range(3)]
    threads = [threading.Thread(target=_write_verdicts, args=(path, ids, f"thread-{k}", rounds)) for k in range(3)]
    for w in procs + threads:
        w.start()
    for w in procs + threads:
        w.join()
    assert [p.exitcode for p in procs] == [0, 0, 0]
    verdicts = store.verdicts()
    per_writer = 2 * rounds * len(ids)
    assert len(verdicts) == 6 * per_writer
    for who in [f"proc-{k}" for k in range(3)] + [f"thread-{k}" for k in range(3)]:
        notes = sorted(v.value["note"] for v in verdicts if v.reviewer == who and v.kind == "note")
        assert notes == sorted(f"{who} {k}" for k in range(rounds) for _ in ids)
    # each confirm bumped its box's version exactly once
    confirms = sum(b.version - 1 for i in ids for b in store.image(i).boxes)
    assert confirms == 6 * rounds * len(ids)


def test_concurrent_edits_of_one_box_with_the_same_version_one_wins(tmp_path):
    store = _store(tmp_path)
    image_id = _image(store)
    box = store.image(image_id).boxes[0]
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def edit(k: int) -> None:
        barrier.wait()
        try:
            store.add_verdict(
                image_id=image_id,
                reviewer=f"rev-{k}",
                kind="move",
                box_id=box.id,
                box=Box(10 + k, 10, 40 + k, 50),
                expected_version=box.version,
            )
            outcomes.append("ok")
        except ConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=edit, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 3 + ["ok"]
    assert len(store.verdicts()) == 1 and store.image(image_id).boxes[0].version == 2


def test_worklist_order_and_filters(tmp_path):
    store = _store(tmp_path)
    low = _image(store, uid="2.25.1", p=0.2, body_part="HAND")
    high = _image(store, uid="2.25.2", p=0.95, body_part="WRIST")
    mid = _image(store, uid="2.25.3", p=0.6, body_part="WRIST")
    other = store.record_image(sop_uid="2.25.4", image_ref="/k/4.dcm", model_version="v4", probability=0.5, boxes=[])
    assert [r.id for r in store.worklist()] == [high, mid, other, low]
    assert [r.id for r in store.worklist(body_part="WRIST")] == [high, mid]
    assert [r.id for r in store.worklist(model_version="v4")] == [other]
    store.add_verdict(image_id=high, reviewer="r", kind="confirm", box_id=store.image(high).boxes[0].id)
    store.add_verdict(image_id=mid, reviewer="r", kind="reject", box_id=store.image(mid).boxes[0].id)
    store.add_verdict(image_id=low, reviewer="r", kind="no_fracture")
    assert [r.id for r in store.worklist(unreviewed=True)] == [other]
    assert [r.id for r in store.worklist(disagreements=True)] == [mid, low]
    assert store.facets() == {"model_version": ["v3", "v4"], "body_part": ["HAND", "WRIST"]}


def test_set_aside_is_kept(tmp_path):
    store = _store(tmp_path)
    store.set_aside(
        object_uid="2.25.77",
        reason="references an image fracfl never analysed",
        source="pacs-gsps",
        detail="referenced 2.25.5",
    )
    (item,) = store.set_aside_items()
    assert (item.object_uid, item.source, item.detail) == ("2.25.77", "pacs-gsps", "referenced 2.25.5")
    assert FeedbackStore(tmp_path / "feedback.db").set_aside_items() == [item]


def test_old_schema_migrates_and_a_newer_one_is_refused(tmp_path):
    path = tmp_path / "old.db"
    con = connect(path)
    assert migrate(con, path, upto=1) == 1
    con.execute(
        "INSERT INTO images (sop_uid, image_ref, model_version, probability, origin, recorded_at)"
        " VALUES ('2.25.8', '/k/8.dcm', 'v1', 0.7, 'listen', 'then')"
    )
    con.close()
    store = FeedbackStore(path)
    assert store.image_by_sop_uid("2.25.8").probability == 0.7
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert con.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 0
        con.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(FracflError, match="newer than this fracfl knows"):
        FeedbackStore(path)


def test_neighbours_follow_the_worklist_order(tmp_path):
    store = _store(tmp_path)
    ids = [_image(store, uid=f"2.25.{k}", p=p) for k, p in enumerate([0.5, 0.9, 0.5, 0.1])]
    a, b, c, d = ids  # order: b (0.9), a (0.5, lower id), c (0.5), d (0.1)
    assert store.neighbours(b) == (None, a)
    assert store.neighbours(a) == (b, c)
    assert store.neighbours(c) == (a, d)
    assert store.neighbours(d) == (c, None)
    store.add_verdict(image_id=c, reviewer="r", kind="note", note="seen")
    assert store.neighbours(a, unreviewed=True) == (b, d)  # c left the unreviewed list
    assert store.neighbours(c, unreviewed=True) == (a, d)  # the case just reviewed still has its next one
    assert store.count() == 4 and store.count(unreviewed=True) == 3
