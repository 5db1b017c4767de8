"""The published versions a site has asked the federation for (`fracfl site request`): M/requests.json.

Flower lets only the server start an exchange, so fetching over the federation is a request and an answer: the site
records what it wants here, the ServerApp asks for the list after a run (`query.version_request`) and delivers each
version it holds intact, and the ClientApp removes a request once its version is in the inbox, checked. The site's
people (through this module's CLI) and its SuperNode both change the file, so every change happens under a lock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from contextlib import AbstractContextManager
from datetime import UTC, datetime

from client.models.store import ModelStore, normalise
from common.errors import DataError
from common.protocol import MAX_REQUESTED, VERSION_NAME
from common.utils.durable import locked, replace_atomic

REQUESTS = "requests.json"


def _locked(store: ModelStore) -> AbstractContextManager[None]:
    return locked(store.root / f".{REQUESTS}.lock")


def pending(store: ModelStore) -> dict[str, str]:
    """Requested versions not yet delivered, each with when it was requested, oldest version first."""
    path = store.root / REQUESTS
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise DataError(path, f"unreadable ({e}); remove it and request the versions again") from e
    if not isinstance(raw, dict) or not all(isinstance(v, str) and VERSION_NAME.match(v) for v in raw):
        raise DataError(path, "not a map of version names (v0007) to times; remove it and request again")
    return {v: str(raw[v]) for v in sorted(raw, key=lambda v: int(v[1:]))}


def _write(store: ModelStore, wanted: dict[str, str]) -> None:
    replace_atomic(store.root / REQUESTS, json.dumps(wanted, indent=1) + "\n")


def request(store: ModelStore, versions: Iterable[str | int]) -> dict[str, str]:
    """Record requests for registry versions (`7`, `v7`, `v0007`); returns them all. One already installed or in the
    inbox is refused with where to find it; more than MAX_REQUESTED pending are refused (a run sends at most that)."""
    names = []
    for v in versions:
        name = normalise(v)
        if not VERSION_NAME.match(name):
            raise DataError(str(v), "only published registry versions (v0001, v0002, ...) can be requested")
        if (store.root / "versions" / name).is_dir():
            raise DataError(store.root / "versions" / name, "already installed; nothing to request")
        if (store.inbox / name).is_dir():
            raise DataError(store.inbox / name, f"already delivered; install it with `fracfl site fetch {name}`")
        names.append(name)
    with _locked(store):
        wanted = pending(store)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        wanted.update({n: wanted.get(n, now) for n in names})
        if len(wanted) > MAX_REQUESTED:
            raise DataError(
                store.root / REQUESTS,
                f"{len(wanted)} versions requested; a run delivers at most {MAX_REQUESTED} to a site (cancel some)",
            )
        _write(store, wanted)
    return pending(store)


def cancel(store: ModelStore, versions: Iterable[str | int]) -> dict[str, str]:
    """Withdraw requests (a version not requested is an error naming it); returns those left."""
    names = [normalise(v) for v in versions]
    with _locked(store):
        wanted = pending(store)
        missing = [n for n in names if n not in wanted]
        if missing:
            raise DataError(store.root / REQUESTS, f"not requested: {', '.join(missing)}")
        _write(store, {v: t for v, t in wanted.items() if v not in names})
    return pending(store)


def satisfied(store: ModelStore, version: str) -> bool:
    """Remove the request for `version` (now in the inbox, checked); False when it was not requested."""
    if not (store.root / REQUESTS).is_file():
        return False
    with _locked(store):
        wanted = pending(store)
        if wanted.pop(version, None) is None:
            return False
        _write(store, wanted)
    return True
