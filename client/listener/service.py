"""`fracfl listen` as a long-running service: the SCP, inference workers and the sender around one durable queue.

Threads: pynetdicom's server (one thread per association) only writes to the queue; `workers` threads run the
processor; one sender thread empties the outbox. Nothing a peer sends can stop these loops: a failing object is
retried, then parked in failed/ with a reason. SIGTERM/SIGINT stop accepting, let the current items finish (or
leave them for the next start) and exit 0.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import traceback
from pathlib import Path

from client.listener.access import check_rules
from client.listener.config import ListenConfig
from client.listener.processor import Processor, Quarantine
from client.listener.queue import DurableQueue, Item
from client.listener.scp import build_ae, handlers, quiet_pynetdicom
from client.listener.sender import SendError, send_files

log = logging.getLogger("fracfl.listener")


class ListenerService:
    def __init__(self, cfg: ListenConfig, processor: Processor):
        cfg.check()
        check_rules(cfg.allowed_peers)
        quiet_pynetdicom()
        self.cfg = cfg
        self.processor = processor
        self.queue = DurableQueue(cfg.queue_dir, cfg.max_attempts, cfg.retry_delay, cfg.max_retry_delay, cfg.keep_done)
        self._stop = threading.Event()
        self._work = threading.Condition()
        self._send_wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = None
        self.started = time.time()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self._server.server_address[1]

    def start(self) -> None:
        recovered = self.queue.recover()
        if any(recovered.values()):
            log.info("recovered queue after restart: %s", recovered)
        ae = build_ae(self.cfg)
        self._server = ae.start_server(
            (self.cfg.host, self.cfg.port), block=False, evt_handlers=handlers(self.cfg, self.queue, self._notify_work)
        )
        names = [f"worker-{i}" for i in range(self.cfg.workers)] + ["sender", "status"]
        targets = [self._worker_loop] * self.cfg.workers + [self._sender_loop, self._status_loop]
        self._threads = [threading.Thread(target=t, name=n, daemon=True) for t, n in zip(targets, names)]
        for t in self._threads:
            t.start()
        dest = self.cfg.destination
        log.info(
            "listening as %s on %s:%d; results to %s; queue %s",
            self.cfg.ae_title,
            self.cfg.host,
            self.port,
            f"{dest.ae_title}@{dest.host}:{dest.port}" if dest else "nowhere (kept in outbox/)",
            self.queue.root,
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, then let workers finish their current item; unfinished ones resume at the next start."""
        if self._server is not None:
            self._server.shutdown()
        self._stop.set()
        self._notify_work()
        self._send_wake.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._write_status()
        log.info("stopped")

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT."""

        def on_signal(signum, _frame):
            log.info("%s received: shutting down", signal.Signals(signum).name)
            self._stop.set()

        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, on_signal)
        self.start()
        while not self._stop.wait(1.0):
            pass
        self.stop()

    # -- loops -----------------------------------------------------------------------------------------------
    def _notify_work(self) -> None:
        with self._work:
            self._work.notify_all()

    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            item = self.queue.claim()
            if item is None:
                with self._work:
                    self._work.wait(0.5)  # also wakes retry items whose backoff has passed
                continue
            self._process(item)

    def _process(self, item: Item) -> None:
        t0 = time.perf_counter()
        try:
            outputs = list(self.processor(item.object))
        except Quarantine as e:
            log.warning(
                "quarantined %s ref %s: %s (%s)",
                item.id,
                item.meta.get("ref"),
                e.reason,
                e.transfer_syntax or "transfer syntax unknown",
            )
            self.queue.fail(item, f"quarantined: {e.reason}", e.detail)
            return
        except Exception as e:  # noqa: BLE001 - a service survives whatever one object does
            # Log only the exception type: messages from decoders can quote header values. The full traceback is
            # kept in the item's reason.txt, beside the object it concerns.
            log.error("processing %s ref %s failed (%s): will retry", item.id, item.meta.get("ref"), type(e).__name__)
            self.queue.retry(item, f"processing error {type(e).__name__}", traceback.format_exc())
            return
        out = self.queue.complete(item, outputs)
        log.info(
            "processed %s ref %s in %.2f s: %d result object(s)",
            item.id,
            item.meta.get("ref"),
            time.perf_counter() - t0,
            len(out.meta["files"]) if out else 0,
        )
        if out is not None:
            self._send_wake.set()

    def _sender_loop(self) -> None:
        dest = self.cfg.destination
        if dest is None:
            return
        while not self._stop.is_set():
            self._send_wake.clear()
            wait = 1.0
            for item in self.queue.outbox():
                if self._stop.is_set():
                    return
                try:
                    files = self.queue.result_files(item)
                    send_files(
                        files,
                        dest,
                        self.cfg.ae_title,
                        self.cfg.send_timeout,
                        on_stored=lambda f, it=item: self.queue.sent(it, f),
                    )
                    log.info("sent results of %s ref %s to %s", item.id, item.meta.get("ref"), dest.ae_title)
                except (SendError, OSError) as e:
                    wait = self.queue.send_failed(item, str(e))
                    log.warning("sending results of %s failed: %s; retry in %.0f s", item.id, e, wait)
                    break  # the destination is probably down: do not hammer it with every item
                except Exception as e:  # noqa: BLE001 - e.g. an unreadable result file: keep it, keep going
                    wait = self.queue.send_failed(item, type(e).__name__)
                    log.error("sending results of %s failed (%s)", item.id, type(e).__name__)
            self._send_wake.wait(min(wait, 1.0))

    def _status_loop(self) -> None:
        while not self._stop.wait(self.cfg.status_every):
            status = self._write_status()
            log.info("status: %s", " ".join(f"{k}={v}" for k, v in status["queue"].items()))

    def _write_status(self) -> dict:
        """status.json for monitoring: counts per folder and uptime (rewritten atomically)."""
        status = {
            "ae_title": self.cfg.ae_title,
            "time": time.time(),
            "uptime_s": round(time.time() - self.started),
            "queue": {s: self.queue.count(s) for s in ("incoming", "processing", "outbox", "failed")},
            "running": not self._stop.is_set(),
            "model": getattr(self.processor, "version", None),  # the model store's version in use (hot reload)
        }
        tmp = Path(self.queue.root) / "status.json.tmp"
        tmp.write_text(json.dumps(status))
        os.replace(tmp, Path(self.queue.root) / "status.json")
        return status
