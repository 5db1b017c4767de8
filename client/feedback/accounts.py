"""Local accounts of the review page, kept in the site's feedback database: argon2 password hashes, roles,
server-side sessions that expire, and login throttling.

A user's verdicts carry their `reviewer_id`, a random pseudonym made when the account is created, so the store and
anything derived from it (training labels, reports) never name a person. Session tokens are stored only as SHA-256
digests: a copy of the database does not let anyone sign in.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from client.feedback.store import FeedbackStore, audit_row, now
from common.errors import FracflError

ROLES = ("reviewer", "admin")
MIN_PASSWORD = 10


@dataclass(frozen=True)
class User:
    id: int
    username: str
    reviewer_id: str
    role: str
    disabled: bool
    created_at: str


@dataclass(frozen=True)
class Session:
    token: str  # the cookie's value; only its digest is stored
    csrf: str  # sent back with every write
    user: User
    expires_at: str


class Throttled(FracflError):
    """Too many failed sign-ins for this user name recently."""


class Accounts:
    """Users and sessions of one feedback database."""

    def __init__(
        self,
        store: FeedbackStore,
        *,
        session_minutes: float = 480,
        max_failures: int = 5,
        lockout_minutes: float = 15,
        hasher: PasswordHasher | None = None,
    ):
        self.store = store
        self.session_ttl = timedelta(minutes=session_minutes)
        self.max_failures = max_failures
        self.lockout = timedelta(minutes=lockout_minutes)
        self.hasher = hasher or PasswordHasher()

    # -- users -------------------------------------------------------------------------------------------------------

    def add_user(self, username: str, password: str, role: str = "reviewer", actor: str = "cli") -> User:
        username = username.strip()
        if not username or len(username) > 64 or not username.isprintable():
            raise FracflError(f"user name {username!r}: 1-64 printable characters")
        if role not in ROLES:
            raise FracflError(f"role {role!r} is not one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise FracflError(f"password for {username}: at least {MIN_PASSWORD} characters")
        digest = self.hasher.hash(password)
        with self.store.transaction() as con:
            if con.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
                raise FracflError(f"user {username!r} already exists")
            reviewer_id = f"rev-{secrets.token_hex(4)}"
            con.execute(
                "INSERT INTO users (username, reviewer_id, password_hash, role, created_at) VALUES (?, ?, ?, ?, ?)",
                (username, reviewer_id, digest, role, now()),
            )
            audit_row(con, actor, "user_add", reviewer_id, {"role": role})
        user = self.user(username)
        assert user is not None
        return user

    def set_disabled(self, username: str, disabled: bool = True, actor: str = "cli") -> User:
        with self.store.transaction() as con:
            row = con.execute("SELECT id, reviewer_id FROM users WHERE username = ?", (username,)).fetchone()
            if row is None:
                raise FracflError(f"no user {username!r}")
            con.execute("UPDATE users SET disabled = ? WHERE id = ?", (int(disabled), row["id"]))
            if disabled:  # a disabled account's open sessions end now, not when they expire
                con.execute("DELETE FROM sessions WHERE user_id = ?", (row["id"],))
            audit_row(con, actor, "user_disable" if disabled else "user_enable", row["reviewer_id"], None)
        user = self.user(username)
        assert user is not None
        return user

    def user(self, username: str) -> User | None:
        with self.store.reading() as con:
            row = con.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        return _user(row) if row else None

    def users(self) -> list[User]:
        with self.store.reading() as con:
            return [_user(r) for r in con.execute("SELECT * FROM users ORDER BY username")]

    # -- sessions ----------------------------------------------------------------------------------------------------

    def login(self, username: str, password: str) -> Session | None:
        """A new session, or None for a wrong name/password or a disabled account; Throttled after too many
        failures for this name within the lockout window (checked before the password, so guessing stops)."""
        since = (datetime.now(UTC) - self.lockout).isoformat(timespec="microseconds")
        with self.store.reading() as con:
            failures = con.execute(
                "SELECT COUNT(*) FROM login_attempts WHERE username = ? AND ok = 0 AND at > ? AND"
                " at > COALESCE((SELECT MAX(at) FROM login_attempts WHERE username = ? AND ok = 1),"
                " '')",
                (username, since, username),
            ).fetchone()[0]
            row = con.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        if failures >= self.max_failures:
            self.store.audit("anonymous", "login_throttled", None, None)
            raise Throttled(f"too many failed sign-ins; try again in {int(self.lockout.total_seconds() // 60)} min")
        ok = row is not None and not row["disabled"] and self._verify(row["password_hash"], password)
        with self.store.transaction() as con:
            con.execute("INSERT INTO login_attempts (username, at, ok) VALUES (?, ?, ?)", (username, now(), int(ok)))
            if not ok:
                audit_row(con, "anonymous", "login_failed", None, None)
                return None
            token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            expires = (datetime.now(UTC) + self.session_ttl).isoformat(timespec="microseconds")
            con.execute("DELETE FROM sessions WHERE expires_at <= ?", (now(),))
            con.execute(
                "INSERT INTO sessions (token_hash, user_id, csrf, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                (_digest(token), row["id"], csrf, now(), expires),
            )
            audit_row(con, row["reviewer_id"], "login", None, None)
        return Session(token, csrf, _user(row), expires)

    def session(self, token: str | None) -> Session | None:
        """The live session for a cookie value, or None (unknown, expired, or its user disabled)."""
        if not token:
            return None
        with self.store.reading() as con:
            row = con.execute(
                "SELECT s.csrf, s.expires_at, u.* FROM sessions s JOIN users u ON u.id = s.user_id"
                " WHERE s.token_hash = ?",
                (_digest(token),),
            ).fetchone()
        if row is None or row["disabled"] or row["expires_at"] <= now():
            return None
        return Session(token, row["csrf"], _user(row), row["expires_at"])

    def logout(self, session: Session) -> None:
        with self.store.transaction() as con:
            con.execute("DELETE FROM sessions WHERE token_hash = ?", (_digest(session.token),))
            audit_row(con, session.user.reviewer_id, "logout", None, None)

    def _verify(self, digest: str, password: str) -> bool:
        try:
            return self.hasher.verify(digest, password)
        except (VerificationError, InvalidHashError):
            return False


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _user(row) -> User:
    return User(
        id=row["id"],
        username=row["username"],
        reviewer_id=row["reviewer_id"],
        role=row["role"],
        disabled=bool(row["disabled"]),
        created_at=row["created_at"],
    )
