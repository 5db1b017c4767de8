"""Durable on-disk queue of received objects and of the results waiting to be sent.

Every state is a folder and every transition one atomic `rename` of an item folder, so a crash at any instant
leaves each item in exactly one state:

    tmp/         being written (receive not yet acknowledged, or results being staged): discarded on start-up
    incoming/    acknowledged to the sender (written and fsynced before C-STORE success), waiting for inference
    processing/  claimed by a worker; on start-up put back in incoming/ (counted as an attempt, so an object that
                 crashes the process cannot loop forever) unless its results already reached outbox/
    outbox/      results of one item, waiting for (or between) C-STORE attempts to the destination PACS
    failed/      gave up after `max_attempts` or quarantined: object.dcm, meta.json, reason.txt
    done/        processed originals, only with keep_done (they hold patient data)

An item folder holds `object.dcm` (as received, with file meta) and `meta.json` (no patient data: ids, times,
SOP class, attempt counters, and `ref`, a hash of the SOP Instance UID usable to correlate logs).
`journal.jsonl` records every transition (one JSON line each) for monitoring and benchmarks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.utils.durable import fsync_dir, write_durable

STATES = ("tmp", "incoming", "processing", "outbox", "failed", "done")
OBJECT = "object.dcm"
META = "meta.json"
REASON = "reason.txt"


def pseudonym(uid: str) -> str:
    """A short stable stand-in for a UID in logs: correlates events without printing the UID itself."""
    return hashlib.sha256(uid.encode()).hexdigest()[:12]


@dataclass
class Item:
    """One queued object (or its results, in outbox/): its folder and metadata."""

    path: Path
    meta: dict[str, Any]

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def object(self) -> Path:
        return self.path / OBJECT

    def save_meta(self) -> None:
        tmp = self.path / (META + ".tmp")
        write_durable(tmp, json.dumps(self.meta).encode())
        os.replace(tmp, self.path / META)


def _load(path: Path) -> Item:
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError):
        meta = {}  # torn metadata cannot happen through save_meta; an item is never dropped for lack of it
    return Item(path, meta)


class DurableQueue:
    """The folders above plus the moves between them; safe for several worker threads in one process."""

    def __init__(
        self,
        root: str | Path,
        max_attempts: int = 3,
        retry_delay: float = 5.0,
        max_retry_delay: float = 300.0,
        keep_done: bool = False,
    ):
        self.root = Path(root)
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.keep_done = keep_done
        self._journal_lock = threading.Lock()
        for state in STATES:
            (self.root / state).mkdir(parents=True, exist_ok=True)
        self.journal_path = self.root / "journal.jsonl"

    def dir(self, state: str) -> Path:
        return self.root / state

    def count(self, state: str) -> int:
        return sum(1 for _ in self.dir(state).iterdir())

    def journal(self, event: str, item: Item, **fields: Any) -> None:
        """Append one event line; only ids, hashes, times and reasons that name no patient."""
        row = {"t": time.time(), "event": event, "item": item.id, "ref": item.meta.get("ref"), **fields}
        with self._journal_lock, open(self.journal_path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # -- receiving -------------------------------------------------------------------------------------------
    def put(self, data: bytes, sop_instance_uid: str, sop_class_uid: str, calling_ae: str) -> Item:
        """Store a received object durably in incoming/; only after this returns may the receipt be acknowledged."""
        received = time.time()
        item_id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        staging = self.dir("tmp") / item_id
        staging.mkdir()
        write_durable(staging / OBJECT, data)
        item = Item(
            staging,
            {
                "received": received,
                "ref": pseudonym(sop_instance_uid),
                "sop_class": sop_class_uid,
                "calling_ae": calling_ae,
                "attempts": 0,
                "not_before": 0.0,
            },
        )
        item.save_meta()
        fsync_dir(staging)
        item = self._move(item, "incoming")
        self.journal("received", item, sop_class=sop_class_uid, calling_ae=calling_ae, size=len(data))
        return item

    # -- processing ------------------------------------------------------------------------------------------
    def claim(self) -> Item | None:
        """The oldest incoming item that is due, moved to processing/; None when there is nothing to do."""
        now = time.time()
        for path in sorted(self.dir("incoming").iterdir()):
            item = _load(path)
            if item.meta.get("not_before", 0.0) > now:
                continue
            try:
                return self._move(item, "processing")
            except FileNotFoundError:  # another worker took it
                continue
        return None

    def complete(self, item: Item, outputs: Iterable[Path]) -> Item | None:
        """Results of `item` go to outbox/ in one rename, then the original leaves processing/ (exactly once).
        An item without results (an annotation applied to the feedback store) is simply finished: None."""
        outputs = list(outputs)
        if not outputs:
            self.journal("processed", item, outputs=0, seconds=round(time.time() - item.meta.get("received", 0), 3))
            self._finish(item)
            return None
        staging = self.dir("tmp") / f"{item.id}.out"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        names = []
        for i, src in enumerate(outputs):
            dst = staging / f"{i:02d}-{Path(src).name}"
            shutil.move(src, dst)
            with open(dst, "rb+") as f:
                os.fsync(f.fileno())
            names.append(dst.name)
        out = Item(staging, {**item.meta, "attempts": 0, "not_before": 0.0, "processed": time.time(), "files": names})
        out.save_meta()
        fsync_dir(staging)
        self._rename(staging, self.dir("outbox") / item.id)
        self.journal(
            "processed",
            item,
            outputs=len(names),
            seconds=round(out.meta["processed"] - item.meta.get("received", 0), 3),
        )
        self._finish(item)
        return Item(self.dir("outbox") / item.id, out.meta)

    def retry(self, item: Item, reason: str, detail: str = "") -> None:
        """A processing attempt failed: back to incoming/ after a backoff, or to failed/ after `max_attempts`."""
        item.meta["attempts"] = item.meta.get("attempts", 0) + 1
        if item.meta["attempts"] >= self.max_attempts:
            self.fail(item, f"gave up after {item.meta['attempts']} attempts: {reason}", detail)
            return
        item.meta["not_before"] = time.time() + self.backoff(item.meta["attempts"])
        item.save_meta()
        self._move(item, "incoming")
        self.journal("retry", item, reason=reason, attempts=item.meta["attempts"])

    def fail(self, item: Item, reason: str, detail: str = "") -> None:
        """Park an item in failed/ with a reason a person can act on (`detail` may quote the file: kept beside it)."""
        write_durable(item.path / REASON, (reason + ("\n" + detail if detail else "") + "\n").encode())
        item.meta["failed"] = time.time()
        item.save_meta()
        self._move(item, "failed")
        self.journal("failed", item, reason=reason)

    def backoff(self, attempts: int) -> float:
        return min(self.max_retry_delay, self.retry_delay * 2 ** max(0, attempts - 1))

    # -- sending ---------------------------------------------------------------------------------------------
    def outbox(self) -> list[Item]:
        """Result sets that are due for sending, oldest first; never one whose original is still in processing/."""
        now = time.time()
        items = []
        for path in sorted(self.dir("outbox").iterdir()):
            if (self.dir("processing") / path.name).exists():
                continue  # complete() has not finished: recover() would otherwise see a half-done transition
            item = _load(path)
            if item.meta.get("not_before", 0.0) <= now:
                items.append(item)
        return items

    def result_files(self, item: Item) -> list[Path]:
        return [item.path / name for name in item.meta.get("files", []) if (item.path / name).exists()]

    def sent(self, item: Item, path: Path) -> None:
        """One result file was stored by the destination: remove it, and the item when it was the last."""
        path.unlink(missing_ok=True)
        if not self.result_files(item):
            self.journal("sent", item, seconds=round(time.time() - item.meta.get("received", 0), 3))
            shutil.rmtree(item.path, ignore_errors=True)

    def send_failed(self, item: Item, reason: str) -> float:
        """Results stay in outbox/ (a PACS may be down for hours); returns the delay before the next attempt."""
        item.meta["attempts"] = item.meta.get("attempts", 0) + 1
        delay = self.backoff(item.meta["attempts"])
        item.meta["not_before"] = time.time() + delay
        item.save_meta()
        self.journal("send_retry", item, reason=reason, attempts=item.meta["attempts"])
        return delay

    # -- start-up --------------------------------------------------------------------------------------------
    def recover(self) -> dict[str, int]:
        """Repair what a crash left: drop unacknowledged staging, finish or requeue interrupted items."""
        dropped = 0
        for path in self.dir("tmp").iterdir():
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
            dropped += 1
        finished = requeued = 0
        for path in sorted(self.dir("processing").iterdir()):
            item = _load(path)
            if (self.dir("outbox") / item.id).exists():
                self._finish(item)  # results were staged: processing happened, do not run it again
                finished += 1
            else:
                self.retry(item, "interrupted (service stopped or crashed while processing)")
                requeued += 1
        return {"dropped_unacknowledged": dropped, "finished": finished, "requeued": requeued}

    # -- internals -------------------------------------------------------------------------------------------
    def _finish(self, item: Item) -> None:
        if self.keep_done:
            self._move(item, "done")
        else:
            shutil.rmtree(item.path)
            fsync_dir(item.path.parent)

    def _move(self, item: Item, state: str) -> Item:
        target = self.dir(state) / item.id
        self._rename(item.path, target)
        item.path = target
        return item

    def _rename(self, src: Path, dst: Path) -> None:
        os.rename(src, dst)
        fsync_dir(dst.parent)
        if src.parent != dst.parent:
            fsync_dir(src.parent)
