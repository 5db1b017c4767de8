"""`fracfl schedule --dir DIR [--every 7d] [--check-every 1h] [--min-gap 1d] -- COMMAND ...`: start federated
runs periodically and when a site requests one (server/schedule.py; docs/continuous-learning.md)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def _run(a: argparse.Namespace) -> int:
    from server.schedule import Policy, duration, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        a.parser.error("give the run's command after --, e.g. -- fracfl simulate run_dir={run_dir} ...")
    policy = Policy(
        duration(a.every) if a.every else None,
        duration(a.check_every) if a.check_every else None,
        duration(a.min_gap),
    )
    started = serve(policy, command, Path(a.dir), max_runs=a.max_runs)
    print(f"{started} run(s) started; log: {Path(a.dir) / 'schedule.jsonl'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "schedule",
        help="start federated runs periodically and when a site requests one",
        description="Runs COMMAND (after --) as it falls due, with {run_id}, {run_dir} and {round_requests} filled "
        "in; logs every run in DIR/schedule.jsonl and goes on after a failed one. Example: fracfl schedule --dir "
        "sched --every 7d --check-every 1h -- fracfl simulate registry=/srv/registry federation.warm_start=latest "
        "run_dir={run_dir} run_id={run_id} federation.round_requests={round_requests}",
    )
    p.add_argument("--dir", required=True, help="the schedule's folder: its log and the runs' folders (runs/)")
    p.add_argument("--every", help="a run at this interval (90s, 15m, 6h, 7d)")
    p.add_argument("--check-every", help="ask the sites this often; a run trains only if one requests a round")
    p.add_argument("--min-gap", default="0s", help="no requested run sooner than this after a run that trained")
    p.add_argument("--max-runs", type=int, help="stop after starting this many runs (default: run forever)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the run's command line")
    p.set_defaults(func=_run, parser=p)
