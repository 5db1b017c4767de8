"""Imports only point down: common <- client, server <- simulations (bench on top). Every import is read from the
source with ast, including those inside functions, so a lazy import cannot hide an upward dependency."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"common": {"client", "server", "simulations", "bench"}, "client": {"server", "simulations", "bench"},
             "server": {"client", "simulations", "bench"}, "simulations": {"bench"}}


def _imported(path: Path) -> set[tuple[int, str]]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {(node.lineno, a.name.split(".")[0]) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add((node.lineno, node.module.split(".")[0]))
    return out


def test_no_import_points_up_or_sideways():
    bad = [f"{f.relative_to(REPO)}:{line} imports {top}"
           for layer, banned in FORBIDDEN.items() for f in sorted((REPO / layer).rglob("*.py"))
           for line, top in sorted(_imported(f)) if top in banned]
    assert not bad, "\n".join(bad)
