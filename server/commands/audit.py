"""`fracfl audit show|verify|report`: privacy budgets and ledger integrity, for governance staff.

PATH is a site's ledger folder (or its ledger.jsonl), a run folder (its privacy-ledger.jsonl), or any folder holding
ledgers, searched recursively.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from server.commands.audit_mia import add_mia


def _show(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from server.audit import read_all

    verdicts, sites = read_all(a.paths)
    table = Table(title="Privacy budgets (epsilon, RDP)", title_justify="left")
    for col in ("site", "spent", "ceiling", "remaining", "projected", "unit", "trained", "refused", "last entry"):
        table.add_column(col, justify="left" if col in ("site", "unit", "last entry") else "right")
    fmt = lambda x: "-" if x is None else f"{x:.2f}"
    for b in sites.values():
        table.add_row(
            b.site,
            fmt(b.spent),
            fmt(b.ceiling),
            fmt(b.remaining),
            fmt(b.projected),
            b.unit,
            str(b.rounds_trained),
            str(b.refused),
            b.last,
        )
    Console(width=140, highlight=False).print(table)
    broken = [p for p, v in verdicts.items() if not v.ok]
    for p in broken:
        print(f"WARNING: {p}: {verdicts[p]} (figures above use the intact part only)")
    over = [b.site for b in sites.values() if b.over_ceiling]
    if over:
        print(f"ABOVE CEILING: {', '.join(over)}")
    for b in sites.values():
        if b.seeded_rounds:
            print(
                f"RESEARCH MODE: {b.site}: {len(b.seeded_rounds)} round(s) with noise seeded from the run's seed "
                f"({', '.join(b.seeded_rounds[:3])}{', ...' if len(b.seeded_rounds) > 3 else ''}); the server "
                "could remove that noise: no protection against the server"
            )
    return 1 if (a.ceiling_check and (over or broken)) else 0


def _verify(a: argparse.Namespace) -> int:
    from server.audit import find_ledgers, verify_all

    verdicts, _ = verify_all(find_ledgers([*a.paths, *a.against]))
    for f, verdict in verdicts.items():
        print(f"{f}: {verdict}")
    return 1 if any(not v.ok for v in verdicts.values()) else 0


def _report(a: argparse.Namespace) -> int:
    from server.audit import write_audit_report

    print(f"wrote {write_audit_report(a.paths, Path(a.out))}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="privacy budgets and ledgers: show, verify, report",
        description="Audit the privacy ledgers of sites and runs (see docs/privacy.md).",
    )
    asub = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    paths_help = "ledger files or folders holding them (searched recursively)"

    q = asub.add_parser("show", help="per site: spent, ceiling, remaining, projected spend")
    q.add_argument("paths", nargs="+", help=paths_help)
    q.add_argument(
        "--ceiling-check",
        action="store_true",
        help="exit 1 if any round trained above its ceiling or any ledger is broken",
    )
    q.set_defaults(func=_show)

    q = asub.add_parser(
        "verify",
        help="check each ledger's hash chain; report exactly where it breaks",
        description="Check each ledger's chain and head. Site ledgers are also checked against the "
        "ledger heads the server recorded, from any server ledger (privacy-ledger.jsonl) "
        "among PATHS or given with --against.",
    )
    q.add_argument("paths", nargs="+", help=paths_help)
    q.add_argument(
        "--against",
        nargs="+",
        default=[],
        metavar="SERVER_LEDGER",
        help="server summary ledgers (RUN/privacy-ledger.jsonl, or run folders) holding the heads the sites reported",
    )
    q.set_defaults(func=_verify)

    add_mia(asub)

    q = asub.add_parser("report", help="an HTML report with a burn-down chart per site")
    q.add_argument("paths", nargs="+", help=paths_help)
    q.add_argument("--out", default="privacy-audit.html", help="HTML file to write (default: %(default)s)")
    q.set_defaults(func=_report)
