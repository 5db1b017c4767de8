"""`fracfl site supernode -- ARGS`: Flower's `flower-supernode ARGS`, restarted while the SuperLink refuses it after a
crash, and never leaving a process behind (docs/deployment.md, "Services").

Why, from Flower 1.42's source:
- The SuperLink counts a SuperNode online until HEARTBEAT_PATIENCE x its heartbeat interval (2 x 30 s) after its last
  heartbeat or activation. A stopped SuperNode ends that at once (it deactivates itself); a crashed one does not, and
  until then the SuperLink refuses to activate the same key (HTTP 412, "Failed to activate SuperNode"). A 412 is not
  retried (`--max-retries`/`--max-wait-time` cover lost connections and HTTP 502-504 only): flower-supernode exits
  with status 1. This wrapper starts it again, with backoff, for up to `retry_for` seconds.
- The SuperNode's SuperExec and ClientApp processes end by themselves only once their parent's PID is gone; a dead
  parent that nobody reaps keeps its PID (a zombie) and them running. The wrapper reaps everything below it (it is their
  child subreaper) and ends the SuperNode's whole process group whenever the SuperNode ends.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_PATIENCE

from common.errors import ConfigError

REFUSED = b"Failed to activate SuperNode"  # Flower's message for an activation refused with HTTP 412
STALE_S = HEARTBEAT_PATIENCE * HEARTBEAT_DEFAULT_INTERVAL  # how long the SuperLink keeps a crashed node's session
FIRST_WAIT_S, MAX_WAIT_S = 5.0, 15.0  # the refusal lasts at most 60 s: overshoot it by 15 s at most
GRACE_S = 10.0  # SIGTERM to SIGKILL, for what the SuperNode started
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def _say(message: str) -> None:
    print(f"fracfl site supernode: {message}", file=sys.stderr, flush=True)


def _become_subreaper() -> None:
    """Orphans below us are re-parented to us, not to PID 1, so we can reap them and know when they are gone."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: orphans go to init, which reaps them; the group kill still works
        pass


def _left(group: int) -> bool:
    """Whether anything of `group` (or any child of ours) still runs; reaps what has ended."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            return True
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


class _Node:
    """One flower-supernode in its own process group; its output (and its children's) copied to ours."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.refused = False
        self._copier = threading.Thread(target=self._copy, args=(self.proc.stdout,), daemon=True)
        self._copier.start()

    def _copy(self, pipe: IO[bytes]) -> None:
        for line in iter(pipe.readline, b""):
            self.refused |= REFUSED in line
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self) -> int:
        """flower-supernode's exit status, once it and everything it started have ended."""
        while True:  # also reaps orphans re-parented to us while the SuperNode runs
            pid, raw = os.waitpid(-1, 0)
            if pid == self.proc.pid:
                self.proc.returncode = status = os.waitstatus_to_exitcode(raw)
                break
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while _left(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _left(self.proc.pid):
            self.signal(signal.SIGKILL)
            deadline = time.monotonic() + GRACE_S
            while _left(self.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        self._copier.join(timeout=GRACE_S)
        return status if status >= 0 else 128 - status  # killed by signal N: 128 + N, as a shell reports it


def _gated_env(site_dir: Path) -> dict[str, str]:
    """The SuperNode's environment with the site's gate first on PATH, where it looks for `flwr-clientapp`
    (only the SuperNode's: this process's own PATH is left as it was)."""
    from client.fab_gate import LAUNCHER

    launcher = site_dir.resolve() / "bin" / LAUNCHER
    if not os.access(launcher, os.X_OK):
        raise ConfigError(f"--app-gate {site_dir}: no {launcher}; run `fracfl site app-gate {site_dir}` first")
    return {**os.environ, "PATH": f"{launcher.parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_supernode(args: list[str], retry_for: float, app_gate: Path | None = None) -> int:
    """Run `flower-supernode args` until it ends; start it again while the SuperLink refuses its activation.
    `app_gate`: the site folder whose bin/flwr-clientapp (`fracfl site app-gate`) the SuperNode must start, so that
    only approved app bundles run; a missing gate stops here instead of running every bundle unchecked."""
    env = _gated_env(app_gate) if app_gate is not None else dict(os.environ)
    if not args:
        raise ConfigError("give flower-supernode's arguments after --, e.g. fracfl site supernode -- --superlink ...")
    if retry_for < 0:
        raise ConfigError(f"--retry-for {retry_for}: must be 0 or more seconds")
    exe = shutil.which("flower-supernode")
    if exe is None:
        raise ConfigError("flower-supernode is not on PATH: activate the fracfl environment (.venv/bin)")
    stop = threading.Event()
    node: _Node | None = None

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        if node is not None:
            node.signal(signal.SIGTERM)  # the SuperNode deactivates itself: a restart is accepted at once

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    _become_subreaper()
    first_refusal, wait = 0.0, FIRST_WAIT_S
    while True:
        node = _Node([exe, *args], env)
        if stop.is_set():
            node.signal(signal.SIGTERM)
        status = node.wait()
        if stop.is_set():
            return 0
        if not (node.refused and status != 0):
            if status == 0:
                _say(
                    "flower-supernode ended by itself with status 0: usually the SuperLink no longer knows this "
                    "node (its key was unregistered, or the SuperLink restarted without --database); ask the coordinator"
                )
            return status
        now = time.monotonic()
        first_refusal = first_refusal or now
        if now + wait - first_refusal > retry_for:
            _say(
                f"the SuperLink still refuses this node after {now - first_refusal:.0f} s: is its public key "
                "registered (flwr supernode ls), or was it unregistered (a revoked key needs a new key pair)?"
            )
            return status
        _say(
            f"the SuperLink refused to activate this node; it keeps a crashed SuperNode's session for up to {STALE_S} s "
            f"after its last heartbeat. Retrying in {wait:.0f} s (for up to {retry_for:.0f} s)"
        )
        if stop.wait(wait):
            return 0
        wait = min(2 * wait, MAX_WAIT_S)
