"""One SQLite database per site: the findings fracfl showed and every verdict given on them.

Nothing is ever overwritten silently: each verdict row keeps the reviewer's pseudonymous id, the time, the new value
and the previous one, and every write also lands in the audit table in the same transaction. Writers take SQLite's
write lock up front (BEGIN IMMEDIATE) and wait for each other, so concurrent reviewers never lose a verdict; an edit
made against a stale version of a box or image raises ConflictError instead of winning by being last.

The store holds only pseudonymous identifiers (the kept copy's SOP Instance UID, the pseudonymous patient id, the
reviewer's pseudonym) and paths to de-identified images kept at the site.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client.feedback.schema import connect, migrate
from common.errors import FracflError

KINDS = ("confirm", "reject", "move", "add", "set_class", "no_fracture", "note")
BOX_KINDS = frozenset({"confirm", "reject", "move", "set_class"})  # act on one existing box, versioned by the box
KOS = "pacs-kos"  # a `note` from this source withdraws its image: the PACS rejected it (annotations/kos.py)
SOURCES = ("review", "pacs-gsps", "pacs-sr", KOS)
# what a box-level verdict leaves as the box's status; set_class keeps the status it had
_STATUS_AFTER = {"confirm": "confirmed", "reject": "rejected", "move": "corrected", "add": "added"}
DISAGREEING = ("rejected", "corrected", "added")


@dataclass(frozen=True)
class Box:
    """A rectangle in pixel coordinates of the kept (de-identified) image, x1 < x2, y1 < y2."""

    x1: float
    y1: float
    x2: float
    y2: float
    cls: int = 0  # class index into the configured class names
    score: float | None = None  # model score; None for a box drawn by a person

    def __post_init__(self) -> None:
        if not (self.x1 < self.x2 and self.y1 < self.y2):
            raise FracflError(f"box ({self.x1}, {self.y1}, {self.x2}, {self.y2}): needs x1 < x2 and y1 < y2")
        if self.cls < 0:
            raise FracflError(f"box class index {self.cls} is negative")

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]


class ConflictError(FracflError):
    """An edit based on a stale version of a box or image: someone else changed it first."""

    def __init__(self, message: str, current_version: int | None = None):
        super().__init__(message)
        self.current_version = current_version


@dataclass(frozen=True)
class BoxRow:
    id: int
    image_id: int
    box: Box
    version: int  # bumped on every change
    status: str  # proposed (model, no verdict yet) | confirmed | rejected | corrected | added (drawn by a person)
    origin: str  # "model" or "reviewer"
    model_cls: int | None  # the class the model gave; None for a drawn box


@dataclass(frozen=True)
class ImageRow:
    id: int
    sop_uid: str
    image_ref: str
    model_version: str
    probability: float
    heatmap_ref: str | None
    body_part: str | None
    patient: str | None
    origin: str
    recorded_at: str
    no_fracture: bool
    version: int  # bumped by image-level changes (a drawn box, "no fracture")
    n_verdicts: int
    boxes: list[BoxRow] = field(default_factory=list)

    @property
    def reviewed(self) -> bool:
        return self.n_verdicts > 0


@dataclass(frozen=True)
class VerdictRow:
    id: int
    image_id: int
    box_id: int | None
    reviewer: str
    kind: str
    value: dict[str, Any] | None  # the new box / class name / note
    previous: dict[str, Any] | None  # what the target was before this verdict
    source: str
    source_ref: str | None
    created_at: str


@dataclass(frozen=True)
class SetAsideRow:
    id: int
    object_uid: str
    reason: str
    source: str
    detail: str
    created_at: str


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class FeedbackStore:
    """The site's feedback database; safe to share between threads and processes (one connection per call)."""

    def __init__(self, path: str | Path, class_names: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise FracflError(f"{self.path}: feedback_db must be a file path, not a folder")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as con:
            migrate(con, self.path)
        if class_names is not None:
            self.set_class_names(class_names)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        con = connect(self.path)
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding SQLite's write lock from the start (other writers wait for it)."""
        with self._connection() as con, _write(con):
            yield con

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several reads."""
        with self._connection() as con:
            con.execute("BEGIN")
            try:
                yield con
            finally:
                con.execute("ROLLBACK")

    # -- class names -------------------------------------------------------------------------------------------------

    def set_class_names(self, class_names: Sequence[str]) -> None:
        """The fracture types a reviewer may choose (the model's class names, in class-index order)."""
        names = [str(n) for n in class_names]
        if not names or len(set(names)) != len(names):
            raise FracflError(f"{self.path}: class names must be non-empty and unique, got {names}")
        with self.transaction() as con:
            con.execute(
                "INSERT INTO meta (key, value) VALUES ('class_names', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (json.dumps(names),),
            )
            audit_row(con, "system", "set_class_names", None, {"class_names": names})

    def class_names(self) -> list[str]:
        with self._connection() as con:
            row = con.execute("SELECT value FROM meta WHERE key = 'class_names'").fetchone()
        return json.loads(row[0]) if row else []

    # -- findings ----------------------------------------------------------------------------------------------------

    def record_image(
        self,
        *,
        sop_uid: str,
        image_ref: str,
        model_version: str,
        probability: float,
        boxes: Sequence[Box],
        heatmap_ref: str | None = None,
        body_part: str | None = None,
        patient: str | None = None,
        origin: str = "listen",
    ) -> int:
        """One analysed image and the boxes the model showed; returns its id.

        Recording the same (sop_uid, model_version) again returns the first id unchanged: a listener that
        re-processes a job after a crash must not duplicate findings or detach their verdicts.
        """
        if not sop_uid or not image_ref or not model_version:
            raise FracflError("record_image: sop_uid, image_ref and model_version are required")
        if not 0.0 <= probability <= 1.0:
            raise FracflError(f"record_image: probability {probability} is outside [0, 1]")
        with self.transaction() as con:
            row = con.execute(
                "SELECT id FROM images WHERE sop_uid = ? AND model_version = ?", (sop_uid, model_version)
            ).fetchone()
            if row:
                return int(row[0])
            image_id = con.execute(
                "INSERT INTO images (sop_uid, image_ref, model_version, probability, heatmap_ref, body_part, patient,"
                " origin, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sop_uid,
                    str(image_ref),
                    model_version,
                    float(probability),
                    heatmap_ref,
                    body_part,
                    patient,
                    origin,
                    now(),
                ),
            ).lastrowid
            assert image_id is not None
            for b in boxes:
                con.execute(
                    "INSERT INTO boxes (image_id, x1, y1, x2, y2, cls, model_cls, score, origin, status)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'model', 'proposed')",
                    (image_id, b.x1, b.y1, b.x2, b.y2, b.cls, b.cls, b.score),
                )
            audit_row(
                con, origin, "record_image", f"image:{image_id}", {"model_version": model_version, "boxes": len(boxes)}
            )
            return int(image_id)

    def image(self, image_id: int) -> ImageRow | None:
        with self.reading() as con:
            row = con.execute(f"{_IMAGE_SELECT} WHERE i.id = ?", (image_id,)).fetchone()
            return _image_row(con, row) if row else None

    def image_by_sop_uid(self, sop_uid: str) -> ImageRow | None:
        """The latest analysis of that (pseudonymous) SOP Instance UID, or None when fracfl never analysed it."""
        with self.reading() as con:
            row = con.execute(f"{_IMAGE_SELECT} WHERE i.sop_uid = ? ORDER BY i.id DESC LIMIT 1", (sop_uid,)).fetchone()
            return _image_row(con, row) if row else None

    def worklist(
        self,
        *,
        unreviewed: bool = False,
        disagreements: bool = False,
        model_version: str | None = None,
        body_part: str | None = None,
        limit: int | None = None,
    ) -> list[ImageRow]:
        """Images ordered by suspicion (highest fracture probability first), optionally filtered; boxes included."""
        where, args = _where(unreviewed, disagreements, model_version, body_part)
        sql = f"{_IMAGE_SELECT} WHERE {where} ORDER BY i.probability DESC, i.id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self.reading() as con:
            return [_image_row(con, r) for r in con.execute(sql, args).fetchall()]

    def count(
        self,
        *,
        unreviewed: bool = False,
        disagreements: bool = False,
        model_version: str | None = None,
        body_part: str | None = None,
    ) -> int:
        where, args = _where(unreviewed, disagreements, model_version, body_part)
        with self._connection() as con:
            return int(con.execute(f"SELECT COUNT(*) FROM images i WHERE {where}", args).fetchone()[0])

    def neighbours(
        self,
        image_id: int,
        *,
        unreviewed: bool = False,
        disagreements: bool = False,
        model_version: str | None = None,
        body_part: str | None = None,
    ) -> tuple[int | None, int | None]:
        """The cases just before and just after `image_id` in the worklist's order under these filters (the image
        itself need not match them: a case just reviewed has left the unreviewed list, its next case has not)."""
        where, args = _where(unreviewed, disagreements, model_version, body_part)
        with self.reading() as con:
            row = con.execute("SELECT probability FROM images WHERE id = ?", (image_id,)).fetchone()
            if row is None:
                return None, None
            p = row[0]
            before = con.execute(
                f"SELECT i.id FROM images i WHERE {where} AND (i.probability > ? OR"
                " (i.probability = ? AND i.id < ?)) ORDER BY i.probability, i.id DESC LIMIT 1",
                [*args, p, p, image_id],
            ).fetchone()
            after = con.execute(
                f"SELECT i.id FROM images i WHERE {where} AND (i.probability < ? OR"
                " (i.probability = ? AND i.id > ?)) ORDER BY i.probability DESC, i.id LIMIT 1",
                [*args, p, p, image_id],
            ).fetchone()
        return (before[0] if before else None), (after[0] if after else None)

    def facets(self) -> dict[str, list[str]]:
        """The model versions and body parts present, for the worklist's filters."""
        with self.reading() as con:
            return {
                "model_version": [r[0] for r in con.execute("SELECT DISTINCT model_version FROM images ORDER BY 1")],
                "body_part": [
                    r[0]
                    for r in con.execute("SELECT DISTINCT body_part FROM images WHERE body_part IS NOT NULL ORDER BY 1")
                ],
            }

    def latest_model_version(self) -> str | None:
        """The model version of the most recently recorded finding (what the site's listener runs now), or None."""
        with self._connection() as con:
            row = con.execute("SELECT model_version FROM images ORDER BY id DESC LIMIT 1").fetchone()
        return str(row[0]) if row else None

    # -- verdicts ----------------------------------------------------------------------------------------------------

    def add_verdict(
        self,
        *,
        image_id: int,
        reviewer: str,
        kind: str,
        box_id: int | None = None,
        box: Box | None = None,
        class_name: str | None = None,
        note: str | None = None,
        source: str = "review",
        source_ref: str | None = None,
        expected_version: int | None = None,
    ) -> int:
        """Record one verdict and apply it to its box or image; returns the verdict's id.

        expected_version is the version of the target the reviewer saw: the box's for confirm/reject/move/set_class,
        the image's for add/no_fracture/note. When it differs from the stored one, ConflictError is raised and
        nothing is written.
        """
        if kind not in KINDS:
            raise FracflError(f"verdict kind {kind!r} is not one of {', '.join(KINDS)}")
        if source not in SOURCES:
            raise FracflError(f"verdict source {source!r} is not one of {', '.join(SOURCES)}")
        if not reviewer:
            raise FracflError("a verdict needs the reviewer's pseudonymous id")
        if kind in BOX_KINDS and box_id is None:
            raise FracflError(f"a {kind!r} verdict needs box_id")
        if kind in ("move", "add") and box is None:
            raise FracflError(f"a {kind!r} verdict needs the box")
        if kind == "set_class" and not class_name:
            raise FracflError("a 'set_class' verdict needs class_name")
        if kind == "note" and not (note and note.strip()):
            raise FracflError("a 'note' verdict needs the note's text")
        names = self.class_names() if kind == "set_class" else []
        if kind == "set_class" and class_name not in names:
            raise FracflError(f"class {class_name!r} is not one of the configured class names {names}")
        with self.transaction() as con:
            img = con.execute("SELECT id, version, no_fracture FROM images WHERE id = ?", (image_id,)).fetchone()
            if img is None:
                raise FracflError(f"no image {image_id} in the feedback store")
            value: dict[str, Any] | None = None
            if kind in BOX_KINDS:
                value, previous, new_box_id = _apply_box(
                    con, image_id, box_id, kind, box, class_name, names, expected_version
                )
            else:
                if expected_version is not None and expected_version != img["version"]:
                    raise ConflictError(
                        f"image {image_id} changed since version {expected_version} (now {img['version']})",
                        img["version"],
                    )
                previous = {"version": img["version"], "no_fracture": bool(img["no_fracture"])}
                new_box_id = box_id
                if kind == "add":
                    assert box is not None
                    new_box_id = con.execute(
                        "INSERT INTO boxes (image_id, x1, y1, x2, y2, cls, score, origin, status)"
                        " VALUES (?, ?, ?, ?, ?, ?, NULL, 'reviewer', 'added')",
                        (image_id, box.x1, box.y1, box.x2, box.y2, box.cls),
                    ).lastrowid
                    value = {"box": box.as_list(), "cls": box.cls}
                elif kind == "no_fracture":
                    con.execute("UPDATE images SET no_fracture = 1 WHERE id = ?", (image_id,))
                    value = {"no_fracture": True}
                else:
                    value = {"note": note}
                if kind != "note":
                    con.execute("UPDATE images SET version = version + 1 WHERE id = ?", (image_id,))
            if note and kind != "note":
                value = {**(value or {}), "note": note}
            verdict_id = con.execute(
                "INSERT INTO verdicts (image_id, box_id, reviewer, kind, value, previous, source, source_ref,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (image_id, new_box_id, reviewer, kind, _json(value), _json(previous), source, source_ref, now()),
            ).lastrowid
            assert verdict_id is not None
            audit_row(
                con,
                reviewer,
                f"verdict:{kind}",
                f"image:{image_id}" + (f"/box:{new_box_id}" if new_box_id else ""),
                {"verdict": verdict_id, "source": source},
            )
            return int(verdict_id)

    def verdicts(self, image_id: int | None = None) -> list[VerdictRow]:
        sql = "SELECT * FROM verdicts" + (" WHERE image_id = ?" if image_id is not None else "") + " ORDER BY id"
        with self._connection() as con:
            rows = con.execute(sql, () if image_id is None else (image_id,)).fetchall()
        return [
            VerdictRow(
                id=r["id"],
                image_id=r["image_id"],
                box_id=r["box_id"],
                reviewer=r["reviewer"],
                kind=r["kind"],
                value=_unjson(r["value"]),
                previous=_unjson(r["previous"]),
                source=r["source"],
                source_ref=r["source_ref"],
                created_at=r["created_at"],
            )
            for r in rows
        ]

    # -- instances the PACS withdrew ---------------------------------------------------------------------------------

    def withdraw(self, *, sop_uid: str, note: str, reviewer: str, source_ref: str) -> bool:
        """Record that a KOS rejection note (`source_ref`: its pseudonymous UID; `reviewer`: its author's pseudonym)
        withdrew an instance fracfl never analysed, such as an original image the site ingested for training; False
        when that object already did. An analysed image gets a `note` verdict instead (the review page shows it)."""
        if not sop_uid or not note or not reviewer or not source_ref:
            raise FracflError("withdraw: sop_uid, note, reviewer and source_ref are required")
        with self.transaction() as con:
            cur = con.execute(
                "INSERT OR IGNORE INTO withdrawals (sop_uid, note, reviewer, source, source_ref, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (sop_uid, note, reviewer, KOS, source_ref, now()),
            )
            if cur.rowcount:
                audit_row(con, reviewer, "withdraw", f"instance:{sop_uid}", {"source": KOS, "source_ref": source_ref})
            return bool(cur.rowcount)

    def withdrawn(self) -> frozenset[str]:
        """Pseudonymous SOP Instance UIDs the PACS withdrew, which must never be trained on: analysed images with a
        KOS note on any of their analyses, and the instances `withdraw` recorded."""
        with self._connection() as con:
            rows = con.execute(
                "SELECT i.sop_uid FROM verdicts v JOIN images i ON i.id = v.image_id"
                " WHERE v.kind = 'note' AND v.source = ? UNION SELECT sop_uid FROM withdrawals",
                (KOS,),
            ).fetchall()
        return frozenset(str(r[0]) for r in rows)

    # -- annotations that could not be applied -----------------------------------------------------------------------

    def set_aside(self, *, object_uid: str, reason: str, source: str, detail: str = "") -> int:
        """Keep an annotation that could not be applied (e.g. its image was never analysed), with the reason."""
        if not object_uid or not reason:
            raise FracflError("set_aside: object_uid and reason are required")
        with self.transaction() as con:
            row_id = con.execute(
                "INSERT INTO set_aside (object_uid, reason, source, detail, created_at) VALUES (?, ?, ?, ?, ?)",
                (object_uid, reason, source, detail, now()),
            ).lastrowid
            assert row_id is not None
            audit_row(con, source, "set_aside", f"object:{object_uid}", {"reason": reason})
            return int(row_id)

    def set_aside_items(self) -> list[SetAsideRow]:
        with self._connection() as con:
            rows = con.execute("SELECT * FROM set_aside ORDER BY id").fetchall()
        return [SetAsideRow(**dict(r)) for r in rows]

    # -- audit -------------------------------------------------------------------------------------------------------

    def audit(self, actor: str, action: str, target: str | None = None, detail: dict | None = None) -> None:
        """Log a write made outside the store's own methods (accounts, sign-in) in the same audit table."""
        with self.transaction() as con:
            audit_row(con, actor, action, target, detail)

    def audit_log(self) -> list[dict[str, Any]]:
        with self._connection() as con:
            return [dict(r) for r in con.execute("SELECT * FROM audit ORDER BY id").fetchall()]


@contextmanager
def _write(con: sqlite3.Connection) -> Iterator[None]:
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def _apply_box(
    con: sqlite3.Connection,
    image_id: int,
    box_id: int | None,
    kind: str,
    box: Box | None,
    class_name: str | None,
    names: list[str],
    expected_version: int | None,
) -> tuple[dict[str, Any] | None, dict[str, Any], int | None]:
    """Change one box for a confirm/reject/move/set_class verdict; returns (new value, previous value, box id)."""
    row = con.execute("SELECT * FROM boxes WHERE id = ? AND image_id = ?", (box_id, image_id)).fetchone()
    if row is None:
        raise FracflError(f"image {image_id} has no box {box_id}")
    if expected_version is not None and expected_version != row["version"]:
        raise ConflictError(
            f"box {box_id} changed since version {expected_version} (now {row['version']})", row["version"]
        )
    coords = [row["x1"], row["y1"], row["x2"], row["y2"]]
    previous = {"box": coords, "cls": row["cls"], "status": row["status"], "version": row["version"]}
    cls, status = row["cls"], _STATUS_AFTER.get(kind, row["status"])
    value: dict[str, Any] | None = None
    if kind == "move":
        assert box is not None
        coords, value = box.as_list(), {"box": box.as_list()}
    elif kind == "set_class":
        cls = names.index(str(class_name))
        value = {"class_name": class_name, "cls": cls}
    con.execute(
        "UPDATE boxes SET x1 = ?, y1 = ?, x2 = ?, y2 = ?, cls = ?, status = ?, version = version + 1 WHERE id = ?",
        (*coords, cls, status, box_id),
    )
    return value, previous, box_id


def audit_row(con: sqlite3.Connection, actor: str, action: str, target: str | None, detail: dict | None) -> None:
    """One audit line, written inside the caller's transaction so the write and its record commit together."""
    con.execute(
        "INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
        (now(), actor, action, target, _json(detail)),
    )


def _where(
    unreviewed: bool, disagreements: bool, model_version: str | None, body_part: str | None
) -> tuple[str, list[Any]]:
    """The worklist filters as an SQL condition on `images i` and its arguments."""
    where, args = ["1"], []  # type: list[str], list[Any]
    if unreviewed:
        where.append("NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.image_id = i.id)")
    if disagreements:
        where.append(f"""(EXISTS (SELECT 1 FROM boxes b WHERE b.image_id = i.id AND (b.status IN
                          ({",".join("?" * len(DISAGREEING))}) OR b.cls != b.model_cls))
                          OR (i.no_fracture = 1 AND EXISTS (SELECT 1 FROM boxes b WHERE b.image_id = i.id
                                                            AND b.origin = 'model')))""")
        args.extend(DISAGREEING)
    if model_version:
        where.append("i.model_version = ?")
        args.append(model_version)
    if body_part:
        where.append("i.body_part = ?")
        args.append(body_part)
    return " AND ".join(where), args


_IMAGE_SELECT = "SELECT i.*, (SELECT COUNT(*) FROM verdicts v WHERE v.image_id = i.id) AS n_verdicts FROM images i"


def _image_row(con: sqlite3.Connection, r: sqlite3.Row) -> ImageRow:
    boxes = [
        BoxRow(
            id=b["id"],
            image_id=b["image_id"],
            box=Box(b["x1"], b["y1"], b["x2"], b["y2"], cls=b["cls"], score=b["score"]),
            version=b["version"],
            status=b["status"],
            origin=b["origin"],
            model_cls=b["model_cls"],
        )
        for b in con.execute("SELECT * FROM boxes WHERE image_id = ? ORDER BY id", (r["id"],))
    ]
    return ImageRow(
        id=r["id"],
        sop_uid=r["sop_uid"],
        image_ref=r["image_ref"],
        model_version=r["model_version"],
        probability=r["probability"],
        heatmap_ref=r["heatmap_ref"],
        body_part=r["body_part"],
        patient=r["patient"],
        origin=r["origin"],
        recorded_at=r["recorded_at"],
        no_fracture=bool(r["no_fracture"]),
        version=r["version"],
        n_verdicts=r["n_verdicts"],
        boxes=boxes,
    )


def _json(obj: Any) -> str | None:
    return None if obj is None else json.dumps(obj, sort_keys=True)


def _unjson(text: str | None) -> Any:
    return None if text is None else json.loads(text)
