"""Periodic federated runs, and runs the sites ask for: what is due when (`due`, pure), and the loop that starts them.

Two clocks, both optional:
- `every`: a run at this interval, whatever the sites say (its sites' answers are recorded: `round_requests=ask`);
- `check_every`: this often, a run that first asks the sites and trains only if one of them requests a round
  (`round_requests=require`; client/continual/disagreement.py decides at the site). `min_gap` keeps such runs
  apart: a site's rate stays high until it promotes a newer model, and would otherwise ask again at every check.

The schedule's state is its log (`schedule.jsonl`, one line per run started), so a restarted scheduler carries on
where it stopped. A run that fails is logged with its exit code and the loop goes on; it is tried again at its next
due time, not at once. The run itself is any command line (`fracfl simulate ...`, `flwr run ... --stream`) with
placeholders that the loop fills in: {run_id}, {run_dir}, {round_requests}.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.errors import ConfigError

log = logging.getLogger("fracfl.schedule")

LOG = "schedule.jsonl"
OUTCOME = "outcome.json"  # what a run writes in its run folder (server/run.py)
PERIODIC, CHECK = "periodic", "check"
MODE = {PERIODIC: "ask", CHECK: "require"}  # federation.round_requests of each kind of run
PLACEHOLDERS = ("{run_id}", "{run_dir}", "{round_requests}")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """`90s`, `15m`, `6h`, `7d` (a bare number is seconds) in seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if m is None:
        raise ConfigError(f"duration {text!r}: expected a number with s, m, h or d (e.g. 90s, 15m, 6h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


@dataclass(frozen=True)
class Policy:
    every: float | None = None  # seconds between periodic runs
    check_every: float | None = None  # seconds between runs that train only when a site requests one
    min_gap: float = 0.0  # seconds after a run that trained before a requested one may start

    def __post_init__(self) -> None:
        if self.every is None and self.check_every is None:
            raise ConfigError("schedule: set --every, --check-every or both")


@dataclass(frozen=True)
class History:
    """What `due` needs from the log: start times (seconds since the epoch) of the last periodic run (trained or
    not), of the last run of any kind, and of the last run that trained."""

    last_periodic: float | None = None
    last_started: float | None = None
    last_trained: float | None = None

    @classmethod
    def from_log(cls, entries: Sequence[dict[str, Any]]) -> History:
        def last(keep: Callable[[dict[str, Any]], bool]) -> float | None:
            times = [float(e["t"]) for e in entries if keep(e)]
            return max(times) if times else None

        return cls(
            last(lambda e: e.get("kind") == PERIODIC),
            last(lambda e: True),
            last(lambda e: bool(e.get("trained"))),
        )


def _times(policy: Policy, h: History) -> dict[str, float]:
    """When each kind of run is next due (seconds since the epoch; -inf: never ran, due now)."""
    out = {}
    if policy.every is not None:
        out[PERIODIC] = -float("inf") if h.last_periodic is None else h.last_periodic + policy.every
    if policy.check_every is not None:
        asked = -float("inf") if h.last_started is None else h.last_started + policy.check_every
        gap = -float("inf") if h.last_trained is None else h.last_trained + policy.min_gap
        out[CHECK] = max(asked, gap)
    return out


def due(now: float, policy: Policy, history: History) -> str | None:
    """The run due at `now`: PERIODIC before CHECK (a periodic run asks the sites too), or None."""
    times = _times(policy, history)
    return next((kind for kind in (PERIODIC, CHECK) if kind in times and times[kind] <= now), None)


def wait(now: float, policy: Policy, history: History) -> float:
    """Seconds from `now` until a run is due (0 when one is due now)."""
    return max(0.0, min(_times(policy, history).values()) - now)


def read_log(folder: Path) -> list[dict[str, Any]]:
    """The schedule's log; a line that is not a JSON object (a write cut short) is skipped with a warning."""
    path = folder / LOG
    if not path.is_file():
        return []
    entries = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if isinstance(entry, dict) and isinstance(entry.get("t"), (int, float)):
            entries.append(entry)
        elif line.strip():
            log.warning("%s:%d: not a schedule entry, skipped", path, i)
    return entries


def fill(command: Sequence[str], run_id: str, run_dir: Path, kind: str) -> list[str]:
    values = dict(zip(PLACEHOLDERS, (run_id, str(run_dir), MODE[kind])))
    out = []
    for arg in command:
        for key, value in values.items():
            arg = arg.replace(key, value)
        out.append(arg)
    return out


def launch(command: Sequence[str], folder: Path, kind: str, now: float, seq: int) -> dict[str, Any]:
    """Run one job (the schedule's `seq`-th) to its end and return its log entry; never raises for a failed run
    (the entry says why)."""
    run_id = f"sched-{seq:04d}-" + datetime.fromtimestamp(now, UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = (folder / "runs" / run_id).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    argv = fill(command, run_id, run_dir, kind)
    entry: dict[str, Any] = {
        "t": now,
        "at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        "kind": kind,
        "run_id": run_id,
        "run_dir": str(run_dir),
    }
    log.info("%s run %s: %s", kind, run_id, " ".join(argv))
    try:
        with open(run_dir / "schedule-run.log", "wb") as out:
            code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    except OSError as e:  # the command itself cannot start (not found, not executable)
        return {**entry, "exit_code": None, "trained": False, "error": f"cannot start {argv[0]!r}: {e}"}
    entry["exit_code"] = code
    try:
        outcome = json.loads((run_dir / OUTCOME).read_text())
    except (OSError, ValueError):
        outcome = None
    if code != 0 or not isinstance(outcome, dict):
        why = f"exit code {code}" if code != 0 else f"no {OUTCOME} written"
        return {**entry, "trained": False, "error": f"{why}; see {run_dir / 'schedule-run.log'}"}
    entry.update(
        trained=not outcome.get("skipped"),
        latest=outcome.get("latest"),
        warm_start=outcome.get("warm_start"),
        skipped=outcome.get("skipped"),
        round_requests=outcome.get("round_requests"),  # per-site rates as numbers only (server/requests.py)
    )
    return entry


def append_log(folder: Path, entry: dict[str, Any]) -> None:
    with open(folder / LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def serve(
    policy: Policy,
    command: Sequence[str],
    folder: Path,
    *,
    max_runs: int | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Start runs as they fall due, forever or until `max_runs` have started; returns how many started."""
    if not any("{run_dir}" in arg for arg in command):
        raise ConfigError(
            "schedule: the command must pass {run_dir} to the run (e.g. run_dir={run_dir}): the run's outcome is read "
            "from there"
        )
    folder.mkdir(parents=True, exist_ok=True)
    started = 0
    while max_runs is None or started < max_runs:
        entries = read_log(folder)
        history = History.from_log(entries)
        kind = due(clock(), policy, history)
        if kind is None:
            sleep(wait(clock(), policy, history))
            continue
        entry = launch(command, folder, kind, clock(), len(entries) + 1)
        append_log(folder, entry)
        started += 1
        if entry.get("error"):
            log.error("%s run %s failed: %s", kind, entry["run_id"], entry["error"])
        else:
            log.info("%s run %s: %s", kind, entry["run_id"], entry.get("skipped") or f"published {entry.get('latest')}")
    return started
