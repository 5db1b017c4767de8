"""`fracfl registry list|show|verify`: browse and check the published global models.

The registry folder is `--registry`, else $FRACFL_REGISTRY, else `registry` in the current directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from common.commands.options import add_registry


def default_root() -> Path:
    return Path(os.environ.get("FRACFL_REGISTRY") or "registry")


def _open(a: argparse.Namespace):
    from common.errors import DataError
    from server.registry import Registry

    root = Path(a.registry) if a.registry else default_root()
    if not root.is_dir():
        raise DataError(root, "no registry here (use --registry DIR or set FRACFL_REGISTRY)")
    return Registry(root)


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 140, highlight=False)


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _list(a: argparse.Namespace) -> int:
    from rich.table import Table

    reg = _open(a)
    published = reg.list()
    console = _console()
    if not published:
        console.print(f"no versions in {reg.root} yet")
        return 0
    latest = published[-1].version
    table = Table(title=f"Model registry {reg.root}", title_justify="left")
    for col in ("version", "run", "round", "parent", "created (UTC)", "mAP50", "sensitivity", "sites"):
        table.add_column(
            col,
            no_wrap=col in ("version", "created (UTC)"),
            justify="right" if col in ("round", "mAP50", "sensitivity") else "left",
        )
    for p in published:
        card = p.card
        pooled = (card.get("metrics") or {}).get("pooled") or {}
        sites = card.get("sites") or []
        trained = sum(s.get("status") == "trained" for s in sites)
        created = str(card.get("created") or "").replace("T", " ").removesuffix("Z")
        table.add_row(
            p.version + (" *" if p.version == latest else ""),
            str(card.get("run_id")),
            str(card.get("round")),
            card.get("parent") or "-",
            created,
            _num(pooled.get("map50")),
            _num(pooled.get("sensitivity")),
            f"{trained}/{len(sites)} trained",
        )
    console.print(table)
    console.print("* latest")
    return 0


def _show(a: argparse.Namespace) -> int:
    from server.registry.lineage import lineage
    from server.registry.store import CARD_JSON, CARD_MD

    reg = _open(a)
    p = reg.get(a.version)
    if a.json:
        print(json.dumps(p.card, indent=2, ensure_ascii=False))
    else:
        md = p.path / CARD_MD
        if md.is_file():
            print(md.read_text(encoding="utf-8"), end="")
        else:
            from server.registry import render_markdown

            print(f"({p.version}/{CARD_MD} is missing; rendered from {CARD_JSON})", file=sys.stderr)
            print(render_markdown(p.card), end="")
        print(f"\nLineage (each version was trained from the next): {lineage(reg, p.version).text()}")
    return 0


def _verify(a: argparse.Namespace) -> int:
    reg = _open(a)
    if a.version.strip().lower() == "all":
        versions = reg.versions()
        problems = reg.check_pointer()
    else:
        versions = [reg.get(a.version).version]
        problems = []
    bad = 0
    for v in versions:
        found = reg.verify(v)
        bad += bool(found)
        print(f"{v}  {'ok' if not found else 'DAMAGED'}")
        for problem in found:
            print(f"  {problem}")
    for problem in problems:
        print(problem)
    if not versions:
        print(f"no versions in {reg.root}")
    print(
        f"{len(versions) - bad} of {len(versions)} version(s) intact"
        + (f"; {len(problems)} registry problem(s)" if problems else "")
    )
    return 1 if bad or problems else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "registry",
        help="list, show and verify published global models",
        description="The model registry: every global model the server published, with its card. "
        "Folder: --registry, else $FRACFL_REGISTRY, else ./registry.",
    )
    rsub = p.add_subparsers(dest="registry_command", metavar="ACTION", required=True)

    q = rsub.add_parser("list", help="one row per version: run, round, parent, pooled metrics, sites")
    add_registry(q)
    q.set_defaults(func=_list)

    q = rsub.add_parser(
        "show", help="print a version's card (card.md, or card.json with --json) and its lineage back to the first"
    )
    q.add_argument("version", help="version (v0003, 3) or 'latest'")
    add_registry(q)
    q.add_argument("--json", action="store_true", help="print card.json instead of card.md")
    q.set_defaults(func=_show)

    q = rsub.add_parser("verify", help="recompute content hashes; exit 1 if anything is missing or changed")
    q.add_argument("version", help="version, 'latest', or 'all'")
    add_registry(q)
    q.set_defaults(func=_verify)
