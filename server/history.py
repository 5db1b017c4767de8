"""A run's round history: the typed round record, and the JSON Lines file (`records.jsonl`) that resume depends on.

Written by the server loop after every round and read back by resume, the model cards, the privacy ledger, the
report and the run's outcome: this module is the only one that turns records into JSON or JSON into records.

A record is one site, phase and round::

    {"version": 1, "round": 3, "site": "trauma_center", "phase": "evaluate", "examples": 40, "status": "ok",
     "metrics": {"map50": 0.41, "map50_95": 0.2, "sensitivity": 0.7, "specificity": 0.8, "roc_auc": 0.77}}

Files written before records carried a `version` (version 0) have the same fields and load as they are. A record
from a newer fracfl (a higher version) is refused with the line named, never half-read.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import DataError
from common.protocol import NUM_EXAMPLES, decode_metrics

log = logging.getLogger("fracfl.report")

VERSION = 1  # 0: no `version` field (fracfl before round records were typed); same fields
PHASES = ("train", "evaluate", "server")
POOLED = "pooled"  # the `site` of the server's own evaluation


@dataclass
class RoundRecord:
    """What one site (or the server, `site` = POOLED) did in one round.

    - `phase`: ``train`` (a site's local update), ``evaluate`` (a site scoring the global model on its own
      validation data) or ``server`` (the pooled evaluation of the global model). Round 0 is the initial model.
    - `status`: ``ok``, or why not (``rejected: non-finite values``, ``refused: privacy budget exhausted ...``);
      `metrics` may then be empty. A metric that is undefined (or was not finite) is None.
    - `privacy`: the site's DP-SGD report for a training round, else None.
    """

    round: int
    site: str
    phase: str
    examples: int | None = None
    status: str = "ok"
    metrics: dict[str, float | None] = field(default_factory=dict)
    privacy: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def pooled(cls, rnd: int, metrics: Mapping[str, float]) -> RoundRecord:
        """The server's evaluation of round `rnd`'s global model, from its metrics as `encode_metrics` made them."""
        numbers = decode_metrics(metrics)
        examples = int(numbers.pop(NUM_EXAMPLES, 0) or 0)
        return cls(rnd, POOLED, "server", examples, "ok", numbers)

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object (this version), NaN and infinities as null."""
        out: dict[str, Any] = {
            "version": VERSION,
            "round": self.round,
            "site": self.site,
            "phase": self.phase,
            "examples": self.examples,
            "status": self.status,
            "metrics": {str(k): _finite(v) for k, v in self.metrics.items()},
        }
        if self.privacy is not None:
            out["privacy"] = _jsonable(self.privacy)
        return out

    @classmethod
    def from_json(cls, d: object) -> RoundRecord:
        """A record from its JSON object, any version up to this one; ValueError or TypeError says what is wrong."""
        if not isinstance(d, Mapping):
            raise TypeError(f"expected a JSON object, got {type(d).__name__}")
        version = d.get("version", 0)
        if not isinstance(version, int) or not 0 <= version <= VERSION:
            raise ValueError(
                f"record version {version!r}: this fracfl reads versions 0 to {VERSION} (a newer fracfl wrote it?)"
            )
        missing = [k for k in ("round", "site", "phase") if k not in d]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        if d["phase"] not in PHASES:
            raise ValueError(f"phase {d['phase']!r} is not one of {', '.join(PHASES)}")
        metrics = d.get("metrics") or {}
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics must be a mapping, got {type(metrics).__name__}")
        privacy = d.get("privacy")
        if privacy is not None and not isinstance(privacy, Mapping):
            raise TypeError(f"privacy must be a mapping, got {type(privacy).__name__}")
        examples = d.get("examples")
        return cls(
            int(d["round"]),
            str(d["site"]),
            str(d["phase"]),
            None if examples is None else int(examples),
            str(d.get("status") or "ok"),
            {str(k): _number(v) for k, v in metrics.items()},
            None if privacy is None else dict(privacy),
        )


def _number(value: object) -> float | None:
    """A metric value as a finite float; None (how JSON stores NaN/inf) and non-numbers become None."""
    if value is None or isinstance(value, (str, bool)):
        return None
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _finite(value: object) -> float | None:
    return None if value is None else _number(value)


def _jsonable(o: object) -> object:
    """Plain JSON values: NaN and infinities as null, numpy scalars as Python numbers, paths as strings."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, Mapping):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_jsonable(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item") and not isinstance(o, str | bytes):
        return _jsonable(o.item())
    return o


def _repair_tail(path: Path) -> None:
    """Make the file end with a newline: a crash mid-write leaves a partial last line, dropped here before appending.

    A last line that is complete JSON but lost only its newline is kept.
    """
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        chunk = 1 << 16
        start = size
        tail = b""
        while start > 0 and b"\n" not in tail:
            start = max(0, start - chunk)
            f.seek(start)
            tail = f.read(size - start)
        cut = start + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
        f.seek(cut)
        line = f.read(size - cut)
        try:
            json.loads(line)
            f.seek(size)
            f.write(b"\n")
        except ValueError:
            log.warning(
                "%s: dropping an incomplete last line (%d bytes) left by an interrupted write", path, size - cut
            )
            f.truncate(cut)


def append_records(path: Path, records: Iterable[RoundRecord]) -> None:
    """Append `records` as JSON Lines in one write, flushed to disk (the server calls this after every round)."""
    path = Path(path)
    lines = "".join(json.dumps(r.to_json(), allow_nan=False) + "\n" for r in records)
    if not lines:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        _repair_tail(path)
    with path.open("a", encoding="utf-8") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())


def read_records(path: Path, missing_ok: bool = False) -> list[RoundRecord]:
    """Every record in a JSON Lines history, in file order.

    An unreadable *last* line is what a crash mid-write leaves: it is ignored with a warning. An unreadable line
    anywhere else, or a line that is not a round record, is real damage and raises `DataError` naming the line. A
    missing file raises `FileNotFoundError`, or gives ``[]`` with `missing_ok`.
    """
    path = Path(path)
    if missing_ok and not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except ValueError as e:
            if n == len(lines):
                log.warning("%s:%d: ignoring an incomplete last line (interrupted write?): %s", path, n, e)
                break
            raise DataError(path, f"not a JSON round record ({e})", line=n) from e
        try:
            out.append(RoundRecord.from_json(d))
        except (TypeError, ValueError) as e:
            raise DataError(path, f"not a round record ({e})", line=n) from e
    return out


def truncate_after(path: Path, rnd: int) -> list[RoundRecord]:
    """Keep only the records of rounds up to `rnd` (a resumed run drops those of a round that never completed),
    rewritten and swapped in atomically; returns them."""
    kept = [r for r in read_records(path, missing_ok=True) if r.round <= rnd]
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    append_records(tmp, kept)
    if kept:
        tmp.replace(path)
    else:
        path.unlink(missing_ok=True)
    return kept
