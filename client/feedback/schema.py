"""The feedback database's schema as numbered migrations, so an older site database upgrades in place.

`PRAGMA user_version` holds the number of migrations applied. A database written by a newer fracfl is refused
rather than guessed at: writing to a schema this code does not know could corrupt a site's only copy of its verdicts.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from common.errors import FracflError

MIGRATIONS: tuple[str, ...] = (
    # 1: findings, verdicts, annotations set aside, audit log
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE images (
        id INTEGER PRIMARY KEY,
        sop_uid TEXT NOT NULL,
        image_ref TEXT NOT NULL,
        model_version TEXT NOT NULL,
        probability REAL NOT NULL,
        heatmap_ref TEXT,
        body_part TEXT,
        patient TEXT,
        origin TEXT NOT NULL,
        recorded_at TEXT NOT NULL,
        no_fracture INTEGER NOT NULL DEFAULT 0,
        version INTEGER NOT NULL DEFAULT 1,
        UNIQUE (sop_uid, model_version)
    );
    CREATE INDEX images_probability ON images (probability DESC);
    CREATE TABLE boxes (
        id INTEGER PRIMARY KEY,
        image_id INTEGER NOT NULL REFERENCES images (id),
        x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
        cls INTEGER NOT NULL,
        model_cls INTEGER,
        score REAL,
        origin TEXT NOT NULL,
        status TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX boxes_image ON boxes (image_id);
    CREATE TABLE verdicts (
        id INTEGER PRIMARY KEY,
        image_id INTEGER NOT NULL REFERENCES images (id),
        box_id INTEGER REFERENCES boxes (id),
        reviewer TEXT NOT NULL,
        kind TEXT NOT NULL,
        value TEXT,
        previous TEXT,
        source TEXT NOT NULL,
        source_ref TEXT,
        created_at TEXT NOT NULL
    );
    CREATE INDEX verdicts_image ON verdicts (image_id);
    CREATE TABLE set_aside (
        id INTEGER PRIMARY KEY,
        object_uid TEXT NOT NULL,
        reason TEXT NOT NULL,
        source TEXT NOT NULL,
        detail TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT,
        detail TEXT
    );
    """,
    # 2: local accounts of the review page, their sessions and login attempts (for throttling)
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        reviewer_id TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('reviewer', 'admin')),
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL
    );
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users (id),
        csrf TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    );
    CREATE TABLE login_attempts (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL,
        at TEXT NOT NULL,
        ok INTEGER NOT NULL
    );
    CREATE INDEX login_attempts_user ON login_attempts (username, at);
    """,
    # 3: instances the PACS withdrew (KOS rejection notes) that fracfl never analysed, e.g. originals a site ingested
    """
    CREATE TABLE withdrawals (
        id INTEGER PRIMARY KEY,
        sop_uid TEXT NOT NULL,
        note TEXT NOT NULL,
        reviewer TEXT NOT NULL,
        source TEXT NOT NULL,
        source_ref TEXT NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (sop_uid, source_ref)
    );
    """,
)


def connect(path: Path, timeout: float = 30.0) -> sqlite3.Connection:
    """A connection in WAL mode that waits (rather than fails) while another writer holds the lock."""
    con = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA foreign_keys = ON")
    con.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    return con


def migrate(con: sqlite3.Connection, path: Path, upto: int = len(MIGRATIONS)) -> int:
    """Apply the missing migrations in one transaction each; returns the schema version now in the file."""
    if con.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
        raise FracflError(f"{path}: cannot switch the feedback database to WAL mode (a read-only or network file?)")
    con.execute("BEGIN IMMEDIATE")
    try:
        have = con.execute("PRAGMA user_version").fetchone()[0]
        if have > len(MIGRATIONS):
            raise FracflError(
                f"{path}: feedback database schema version {have} is newer than this fracfl knows "
                f"({len(MIGRATIONS)}); upgrade fracfl rather than risk the site's verdicts"
            )
        for version in range(have, upto):
            _run_script(con, MIGRATIONS[version])
            con.execute(f"PRAGMA user_version = {version + 1}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return max(have, upto)


def _run_script(con: sqlite3.Connection, script: str) -> None:
    """Run each statement inside the open transaction (executescript would commit it first)."""
    for statement in script.split(";"):
        if statement.strip():
            con.execute(statement)
