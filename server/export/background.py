"""Exports off the round's critical path: one worker process at a time, at low CPU priority, while rounds go on.

A round's commit only queues a version (`submit` returns at once). A thread runs `python -m server.export.worker`
for it (at low CPU priority) with a time limit; the worker writes the card. A worker that crashes, hangs or outlives its time limit is
stopped and the card says so, in the version's `exports` section; nothing of it reaches the round. At the end of a
run `close` waits (bounded) for what is still queued, so a finished run's last model carries its exports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from common.config import EvalConfig
from server.export.config import ExportConfig

if TYPE_CHECKING:
    from server.config import ServerJob

log = logging.getLogger("fracfl.export")
_POLL_S = 0.2


class BackgroundExports:
    """Queue of versions to export in a separate process; see the module docstring."""

    def __init__(
        self, registry: str | Path, cfg: ExportConfig, val_data: str | None, eval_cfg: EvalConfig, log_path: str | Path
    ):
        self.registry = Path(registry)
        self.cfg = cfg
        self.val_data = val_data
        self.eval_cfg = eval_cfg
        self.log_path = Path(log_path)
        self.outcomes: dict[str, str] = {}  # version -> "finished" | the failure recorded on its card
        self._published = 0
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="fracfl-exports", daemon=True)
        self._thread.start()

    def submit(self, version: str, final: bool = False) -> bool:
        """Queue `version` if it is due (every `export.every_k`-th publication, and a run's `final` one); returns
        immediately, saying whether it was queued."""
        self._published += 1
        due = final or self._published % self.cfg.every_k == 0
        if due:
            self._queue.put(version)
        return due

    def close(self, wait: float | None = None) -> dict[str, str]:
        """Wait up to `wait` seconds (default `export.wait_at_end`) for queued exports; stop the rest, record them."""
        self._queue.put(None)
        self._thread.join(self.cfg.wait_at_end if wait is None else wait)
        if self._thread.is_alive():
            self._stop.set()  # the worker in progress is stopped within a poll interval
            self._thread.join()
        return dict(self.outcomes)

    def _work(self) -> None:
        while (version := self._queue.get()) is not None:
            if self._stop.is_set():
                self._record(version, "skipped: the run ended before this export started")
                continue
            try:
                self._run(version)
            except Exception as e:
                log.exception("%s: export could not be run", version)
                self._record(version, f"failed: export could not be run ({type(e).__name__})")

    def _command(self, version: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "server.export.worker",
            "--registry",
            str(self.registry),
            "--version",
            version,
            "--config",
            json.dumps(asdict(self.cfg)),
            "--eval",
            json.dumps(asdict(self.eval_cfg)),
            *(["--val-data", str(self.val_data)] if self.val_data else []),
        ]

    def _run(self, version: str) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(self.log_path, "a", encoding="utf-8") as out:
            out.write(f"--- {version} ---\n")
            out.flush()
            proc = subprocess.Popen(
                self._command(version), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
            while (rc := proc.poll()) is None:
                if self._stop.is_set() or time.perf_counter() - t0 > self.cfg.timeout:
                    proc.kill()
                    proc.wait()
                    break
                time.sleep(_POLL_S)
        stopped = self._stop.is_set()
        seconds = time.perf_counter() - t0
        if rc == 0:
            self.outcomes[version] = "finished"
            log.info("%s: edge exports finished in %.0f s", version, seconds)
        elif stopped:
            self._record(version, f"timed out: the run ended before the export finished ({seconds:.0f} s)")
        elif rc is None:
            self._record(version, f"timed out: no result within export.timeout = {self.cfg.timeout:g} s")
        else:
            self._record(version, f"failed: the export worker exited with code {rc} (see {self.log_path.name})")

    def _record(self, version: str, status: str) -> None:
        """The card says what happened; files of an unfinished export are removed so none looks valid."""
        from common.inference import export_file
        from server.export.version import failed_entries
        from server.registry import Registry

        self.outcomes[version] = status
        log.warning("%s: edge export %s", version, status)
        try:
            registry = Registry(self.registry)
            folder = registry.get(version).path
            for v in self.cfg.variants:
                (folder / export_file(v)).unlink(missing_ok=True)
            registry.update_card(version, "exports", failed_entries(list(self.cfg.variants), status))
        except Exception:
            log.exception("%s: could not record the export outcome on the card", version)


class _Off:
    """Exports disabled: publishing goes on as before."""

    def submit(self, version: str, final: bool = False) -> bool:
        return False


@contextlib.contextmanager
def background_exports(job: ServerJob, run_dir: Path) -> Iterator[BackgroundExports | _Off]:
    """The run's exporter: waits (bounded) for outstanding exports when the run ends; when the run fails, stops
    them at once (their cards say so)."""
    if not job.export.enabled:
        yield _Off()
        return
    exports = BackgroundExports(job.registry, job.export, job.val_data, job.eval, Path(run_dir) / "exports.log")
    try:
        yield exports
    except BaseException:
        exports.close(wait=0)
        raise
    exports.close()
