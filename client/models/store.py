"""The site's model store, a folder M (node config `models-dir`, or site.toml [models] dir):

    M/versions/<V>/model.safetensors, card.json, card.md, exports/model_<variant>.tflite   as published
    M/versions/<V>/approval.json   the signed approval record, once the version is approved (client.models.approval)
    M/current.json                 the approval record of the site's clinical model (its `version`)
    M/decisions.jsonl              every gate decision, approval, promotion and rollback, with its figures (append-only)
    M/inbox/<V>/                   versions delivered over the federation, checked, waiting for `fracfl site fetch`
    M/requests.json                versions asked of the federation, not delivered yet (client.models.requested)
    M/received/                    the global model received in the last round (received.json says which)

A version is copied into `M/versions/.installing-*`, checked against its card's hashes, and renamed into place: a
reader sees a whole, checked version or none. Nothing here reaches the server but requested version names.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.errors import DataError
from common.inference.load import WEIGHTS_FILE
from common.utils.durable import fsync_dir, replace_atomic, write_durable

CARD, CARD_MD, APPROVAL, CURRENT, DECISIONS = "card.json", "card.md", "approval.json", "current.json", "decisions.jsonl"
_EXPORT = re.compile(r"^exports/[A-Za-z0-9_.-]+\.tflite$")  # as the registry's card allows them
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TEMP = ".installing-"
NODE_KEY = "models-dir"  # the SuperNode's node config key naming M


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def normalise(version: str | int) -> str:
    """`3`, `v3` and `v0003` name the registry's v0003; other safe names (a received round's model) stay as given."""
    text = str(version).strip()
    m = re.fullmatch(r"v?(\d+)", text)
    if m:
        return f"v{int(m.group(1)):04d}"
    if not _NAME.match(text) or text.startswith("."):
        raise DataError(text, "not a model version (expected v0001, v0002, ... or letters, digits, '.', '_', '-')")
    return text


def card_files(card: Mapping[str, Any]) -> list[str]:
    """The files a version consists of, from its card: hashed files, then the exports it lists as built."""
    names = [n for n in (card.get("hashes") or {}) if n in (WEIGHTS_FILE, CARD_MD) or _EXPORT.match(n)]
    names += [
        e["file"]
        for e in card.get("exports") or []
        if isinstance(e, dict) and e.get("status") == "ok" and _EXPORT.match(str(e.get("file")))
    ]
    return sorted(set(names))


def check_files(files: Mapping[str, bytes | Path], version: str) -> list[str]:
    """Problems of a version given as name -> content or file: its card, and every file against the card's hash."""
    if CARD not in files:
        return [f"{version}/{CARD}: missing"]
    raw = files[CARD]
    try:
        card = json.loads(raw if isinstance(raw, bytes) else Path(raw).read_bytes())
    except (OSError, ValueError) as e:
        return [f"{version}/{CARD}: unreadable ({e})"]
    if not isinstance(card, dict):
        return [f"{version}/{CARD}: not a JSON object"]
    problems = []
    if card.get("version") != version:
        problems.append(f"{version}/{CARD}: says it is version {card.get('version')!r}")
    hashes = card.get("hashes") if isinstance(card.get("hashes"), dict) else {}
    if WEIGHTS_FILE not in hashes:
        problems.append(f"{version}/{CARD}: no hash recorded for {WEIGHTS_FILE}")
    expected = dict(hashes)
    for e in card.get("exports") or []:
        if isinstance(e, dict) and e.get("status") == "ok" and _EXPORT.match(str(e.get("file"))):
            expected[e["file"]] = e.get("sha256")
    for name in card_files(card):
        content = files.get(name)
        if content is None or (isinstance(content, Path) and not content.is_file()):
            problems.append(f"{version}/{name}: missing")
            continue
        actual = sha256_bytes(content) if isinstance(content, bytes) else sha256_file(content)
        if actual != expected.get(name):
            problems.append(f"{version}/{name}: sha256 does not match the card's (file changed or damaged)")
    extra = set(files) - set(card_files(card)) - {CARD, CARD_MD}
    problems += [f"{version}/{name}: not a file of a version (not on its card)" for name in sorted(extra)]
    return problems


def folder_files(folder: Path) -> dict[str, Path]:
    """A version folder's files as `check_files` takes them (card.json and what its card names)."""
    files = {CARD: folder / CARD}
    try:
        card = json.loads((folder / CARD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return files
    for name in card_files(card if isinstance(card, dict) else {}):
        files[name] = folder / name
    if (folder / CARD_MD).is_file():
        files[CARD_MD] = folder / CARD_MD
    return files


def write_version(dest: Path, version: str, files: Mapping[str, bytes | Path]) -> Path:
    """Check `files` against their card, then write them to `dest` atomically (a temp folder renamed into place).
    An intact copy already there is kept; a different one is an error (a version never changes)."""
    problems = check_files(files, version)
    if problems:
        raise DataError(dest, "refusing this version: " + "; ".join(problems))
    if dest.is_dir():
        have = check_files(folder_files(dest), version)
        weights = files[WEIGHTS_FILE]
        new = sha256_bytes(weights) if isinstance(weights, bytes) else sha256_file(weights)
        if have or sha256_file(dest / WEIGHTS_FILE) != new:
            raise DataError(dest, f"a different or damaged copy of {version} is already here; remove it first")
        return dest
    tmp = dest.parent / f"{_TEMP}{version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for name, content in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            write_durable(tmp / name, content if isinstance(content, bytes) else Path(content).read_bytes())
        fsync_dir(tmp)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(dest.parent)
    return dest


class ModelStore:
    """The folder M; see the module docstring for its layout."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def received(self) -> Path:
        return self.root / "received"

    def versions(self) -> list[str]:
        """Installed versions, in name order."""
        d = self.root / "versions"
        return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")) if d.is_dir() else []

    def delivered(self) -> list[str]:
        """Versions in the inbox (delivered, checked, not necessarily installed), in name order."""
        d = self.inbox
        return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")) if d.is_dir() else []

    def folder(self, version: str | int) -> Path:
        """The installed version's folder; DataError listing what is installed when it is not."""
        version = normalise(version)
        path = self.root / "versions" / version
        if not path.is_dir():
            have = ", ".join(self.versions()) or "none"
            raise DataError(self.root, f"version {version} is not installed (installed: {have}; `fracfl site fetch`)")
        return path

    def install(self, version: str | int, files: Mapping[str, bytes | Path]) -> Path:
        """Check and install a version (see `write_version`)."""
        version = normalise(version)
        (self.root / "versions").mkdir(parents=True, exist_ok=True)
        return write_version(self.root / "versions" / version, version, files)

    def check(self, version: str | int) -> list[str]:
        """Problems of an installed version against its card's hashes; empty when intact."""
        version = normalise(version)
        return check_files(folder_files(self.folder(version)), version)

    def card(self, version: str | int) -> dict[str, Any]:
        return json.loads((self.folder(version) / CARD).read_text(encoding="utf-8"))

    # -- approvals and the current model ---------------------------------------------------------------------
    def approval(self, version: str | int) -> dict[str, Any] | None:
        """The version's approval record, or None when it was never approved."""
        return _read_json(self.folder(version) / APPROVAL)

    def save_approval(self, record: Mapping[str, Any]) -> None:
        replace_atomic(self.folder(record["version"]) / APPROVAL, json.dumps(record, indent=1) + "\n")

    def current(self) -> dict[str, Any] | None:
        """current.json: the approval record of the clinical model; None when the site has none yet."""
        return _read_json(self.root / CURRENT)

    def set_current(self, record: Mapping[str, Any]) -> None:
        replace_atomic(self.root / CURRENT, json.dumps(record, indent=1) + "\n")

    # -- the decision log ------------------------------------------------------------------------------------
    def log(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Append one decision (with its time) to decisions.jsonl, fsynced; returns it as written."""
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / DECISIONS, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return row

    def decisions(self) -> list[dict[str, Any]]:
        path = self.root / DECISIONS
        if not path.is_file():
            return []
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise DataError(path, f"unreadable decision ({e})", line=i) from e
        return rows


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise DataError(path, f"unreadable ({e})") from e
    if not isinstance(data, dict):
        raise DataError(path, "not a JSON object")
    return data
