"""The registry folder: versions published atomically, a pointer to the newest, and integrity checks.

    ROOT/latest.json                {"version": "v0007", "run_id": ..., "round": ...}
    ROOT/v0007/model.safetensors    weights (common.nn.weights format)
    ROOT/v0007/card.json            the card (source of truth)
    ROOT/v0007/card.md              the card for people

A version is written into `ROOT/.publishing-*` and renamed into place once complete: that rename is the commit
point, so readers (sites, governance staff, a resuming server) see a whole version or none. Publishers serialise on
an advisory lock (`ROOT/.lock`), so several runs can share one registry and version numbers never collide.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from common.errors import DataError
from common.nn.model import ModelSpec
from common.nn.weights import load_model, numpy_state, write_state
from common.utils.durable import fsync_dir, locked, replace_atomic, write_durable
from server.registry.card import EXPORT_FILE, UPDATABLE, CardError, clean_card
from server.registry.render import render_markdown
from server.updates import is_buffer

WEIGHTS, CARD_JSON, CARD_MD, LATEST = "model.safetensors", "card.json", "card.md", "latest.json"
TEMP_PREFIX = ".publishing-"
_VERSION = re.compile(r"^v(\d{4,})$")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _card_json(card: dict[str, Any]) -> str:
    return json.dumps(card, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


@dataclass(frozen=True)
class Published:
    """One version in the registry: its name, its folder and its card."""

    version: str
    path: Path
    card: dict[str, Any]

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    @property
    def weights_sha256(self) -> str:
        return (self.card.get("hashes") or {}).get(WEIGHTS, "")

    @property
    def run_id(self) -> str:
        return self.card.get("run_id", "")

    @property
    def round(self) -> int:
        return self.card.get("round", -1)


class Registry:
    """A folder of published global models; see the module docstring for the layout and guarantees."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # -- names ---------------------------------------------------------------------------------------------
    @staticmethod
    def normalise(version: str | int) -> str:
        """`3`, `"3"`, `"v3"` and `"v0003"` all name v0003."""
        m = re.fullmatch(r"v?(\d+)", str(version).strip())
        if not m:
            raise DataError(str(version), "not a registry version (expected v0001, v0002, ... or 'latest')")
        return f"v{int(m.group(1)):04d}"

    def versions(self) -> list[str]:
        """Names of the visible versions, oldest first (temp folders of unfinished publishes are not versions)."""
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if _VERSION.match(p.name) and p.is_dir()]
        return sorted(found, key=lambda v: int(v[1:]))

    # -- reading -------------------------------------------------------------------------------------------
    def _read_card(self, version: str) -> dict[str, Any]:
        path = self.root / version / CARD_JSON
        try:
            card = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(path, "card missing") from None
        except (OSError, ValueError) as e:
            raise DataError(path, f"card unreadable: {e}") from e
        if not isinstance(card, dict):
            raise DataError(path, "card is not a JSON object")
        return card

    def _try_card(self, version: str) -> dict[str, Any] | None:
        try:
            return self._read_card(version)
        except DataError:
            return None

    def _missing(self, version: str) -> DataError:
        have = self.versions()
        if not have:
            listing = "the registry is empty"
        elif len(have) <= 8:
            listing = "available: " + ", ".join(have)
        else:
            listing = f"available: {', '.join(have[:3])}, ..., {', '.join(have[-3:])} ({len(have)} versions)"
        return DataError(self.root, f"no version {version} in this registry; {listing}")

    def get(self, version: str | int) -> Published:
        """The version named (`latest` allowed); DataError naming it and listing what exists if it is absent."""
        if str(version).strip().lower() == "latest":
            found = self.latest()
            if found is None:
                raise DataError(self.root, "no versions in this registry yet")
            return found
        version = self.normalise(version)
        if not (self.root / version).is_dir():
            raise self._missing(version)
        return Published(version, self.root / version, self._read_card(version))

    def list(self) -> list[Published]:
        """Every visible version, oldest first."""
        return [Published(v, self.root / v, self._read_card(v)) for v in self.versions()]

    def read_pointer(self) -> dict[str, Any] | None:
        """latest.json's content, or None when there is none (or it is unreadable)."""
        try:
            data = json.loads((self.root / LATEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def latest(self, run_id: str | None = None) -> Published | None:
        """The newest version overall, or the newest of `run_id`; None when there is none.

        The newest version folder is what latest.json points to, except in one window: a publisher stopped after
        committing a version and before moving the pointer. The folder is the commit point, so it wins (and the
        next publish rewrites the pointer); `check_pointer` reports the stale pointer meanwhile.
        """
        have = self.versions()
        if run_id is None:
            return self.get(have[-1]) if have else None
        for v in reversed(have):
            card = self._try_card(v)
            if card is not None and card.get("run_id") == run_id:
                return Published(v, self.root / v, card)
        return None

    def check_pointer(self) -> list[str]:
        """Problems with latest.json: missing, unreadable, or not naming the newest version."""
        have = self.versions()
        if not have:
            return []
        pointer = self.read_pointer()
        if pointer is None:
            return [f"{LATEST}: missing or unreadable (newest version is {have[-1]})"]
        if pointer.get("version") != have[-1]:
            return [f"{LATEST}: points to {pointer.get('version')!r}, but the newest version is {have[-1]}"]
        return []

    def verify(self, version: str | int) -> list[str]:
        """Problems with a version: missing files, unreadable card, hash mismatches. An empty list means intact."""
        if str(version).strip().lower() == "latest":
            version = self.get("latest").version
        version = self.normalise(version)
        folder = self.root / version
        if not folder.is_dir():
            raise self._missing(version)
        problems = [
            f"{version}/{name}: missing" for name in (WEIGHTS, CARD_JSON, CARD_MD) if not (folder / name).is_file()
        ]
        card = self._try_card(version)
        if card is None:
            if (folder / CARD_JSON).is_file():
                problems.append(f"{version}/{CARD_JSON}: unreadable (not a JSON object)")
            return problems
        if card.get("version") != version:
            problems.append(f"{version}/{CARD_JSON}: says it is version {card.get('version')!r}")
        hashes = card.get("hashes") or {}
        if not isinstance(hashes, dict) or WEIGHTS not in hashes:
            problems.append(f"{version}/{CARD_JSON}: no hash recorded for {WEIGHTS}")
            hashes = hashes if isinstance(hashes, dict) else {}
        for name, expected in sorted(hashes.items()):
            path = folder / name
            if not path.is_file():
                if name not in (WEIGHTS, CARD_JSON, CARD_MD):
                    problems.append(f"{version}/{name}: missing")
                continue
            actual = sha256_file(path)
            if actual != expected:
                problems.append(
                    f"{version}/{name}: sha256 {actual[:12]}... does not match the card's "
                    f"{str(expected)[:12]}... (file changed or damaged)"
                )
        for e in card.get("exports") or []:  # edge builds: a file the card calls ok must be there, unchanged
            if not isinstance(e, dict) or e.get("status") != "ok" or not EXPORT_FILE.match(str(e.get("file"))):
                continue
            path = folder / e["file"]
            if not path.is_file():
                problems.append(f"{version}/{e['file']}: missing (the card lists it as exported)")
            elif sha256_file(path) != e.get("sha256"):
                problems.append(
                    f"{version}/{e['file']}: sha256 does not match the card's exports entry (file changed or damaged)"
                )
        return problems

    def load(self, version: str | int) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
        """Model, spec and card of a version, after checking the weights against the card's hash."""
        p = self.get(version)
        expected = (p.card.get("hashes") or {}).get(WEIGHTS)
        if not p.weights.is_file():
            raise DataError(p.weights, "weights missing")
        if expected is not None and sha256_file(p.weights) != expected:
            raise DataError(
                p.weights,
                f"sha256 does not match the hash on {p.version}'s card; refusing to load "
                "(run `fracfl registry verify`)",
            )
        model, spec, _ = load_model(p.weights)
        return model, spec, p.card

    # -- writing -------------------------------------------------------------------------------------------
    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return locked(self.root / ".lock")

    def _clean_temp(self) -> None:
        """Remove what interrupted publishes left (only called under the lock, so none is still being written)."""
        for p in self.root.iterdir():
            if p.name.startswith(TEMP_PREFIX) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)

    def publish(
        self,
        weights: nn.Module | Mapping[str, np.ndarray],
        spec: ModelSpec,
        card: dict[str, Any],
        weights_meta: dict[str, Any] | None = None,
    ) -> Published:
        """Write `weights` (a model or its flat numpy state) and its card as the next version, then point
        latest.json at it.

        `card["parent"]` defaults to the newest version of the same run_id; `version`, `created` and `hashes` are
        set here. `weights_meta` goes into the weights file's header (e.g. `imgsz`, which `fracfl evaluate` reads).
        """
        state = numpy_state(weights) if isinstance(weights, nn.Module) else weights
        parameters = sum(v.size for k, v in state.items() if not is_buffer(k))
        card = clean_card(
            {k: v for k, v in card.items() if k not in ("version", "created", "updated", "hashes")}, spec, parameters
        )
        with self._locked():
            self._clean_temp()
            have = self.versions()
            version = f"v{int(have[-1][1:]) + 1 if have else 1:04d}"
            if card["parent"] is None:
                previous = self.latest(card["run_id"])
                card["parent"] = previous.version if previous else None
            else:
                card["parent"] = self.normalise(card["parent"])
                if card["parent"] not in have:
                    raise self._missing(card["parent"])
            card.update(version=version, created=_now(), updated=None)
            tmp = self.root / f"{TEMP_PREFIX}{version}-{os.getpid()}"
            final = self.root / version
            try:
                tmp.mkdir()
                meta = {"registry_version": version, "run_id": card["run_id"], "round": card["round"]}
                meta.update(weights_meta or {})
                card["hashes"] = {WEIGHTS: write_state(tmp / WEIGHTS, state, spec, meta)}
                write_durable(tmp / CARD_JSON, _card_json(card))
                write_durable(tmp / CARD_MD, render_markdown(card))
                fsync_dir(tmp)
                os.rename(tmp, final)  # the commit point
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_dir(self.root)
            replace_atomic(
                self.root / LATEST,
                json.dumps({"version": version, "run_id": card["run_id"], "round": card["round"]}, indent=2) + "\n",
            )
        return Published(version, final, card)

    def update_card(self, version: str | int, section: str, value: Any) -> Published:
        """Replace one section of a published card (privacy figures, export results); the weights stay as they are.

        card.json is rewritten first (temp file + rename), then card.md from it; `updated` records when.
        """
        if section not in UPDATABLE:
            raise CardError(
                f"card.{section}: cannot be changed after publication; updatable sections: {sorted(UPDATABLE)}"
            )
        with self._locked():
            p = self.get(version)
            card = dict(p.card)
            card[section] = value
            card = clean_card(card)
            card["updated"] = _now()
            replace_atomic(p.path / CARD_JSON, _card_json(card))
            replace_atomic(p.path / CARD_MD, render_markdown(card))
        return Published(p.version, p.path, card)
