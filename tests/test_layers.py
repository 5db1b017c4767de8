"""Imports only point down: common <- client, server <- simulations (bench on top), and the parts of common/ form
no circle. Every import is read from the source with ast, including those inside functions, so a lazy import cannot
hide an upward dependency."""

from __future__ import annotations

import ast
from itertools import pairwise
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "common": {"client", "server", "simulations", "bench"},
    "client": {"server", "simulations", "bench"},
    "server": {"client", "simulations", "bench"},
    "simulations": {"bench"},
}


def _imports(path: Path) -> set[tuple[int, str]]:
    """(line, dotted module) of every absolute import in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {(node.lineno, a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add((node.lineno, node.module))
    return out


def test_no_import_points_up_or_sideways():
    bad = [
        f"{f.relative_to(REPO)}:{line} imports {name}"
        for layer, banned in FORBIDDEN.items()
        for f in sorted((REPO / layer).rglob("*.py"))
        for line, name in sorted(_imports(f))
        if name.split(".")[0] in banned
    ]
    assert not bad, "\n".join(bad)


def _part(module: str) -> str:
    """The part of common/ a module belongs to: its subpackage (common.dicom) or top-level module (common.config)."""
    return ".".join(module.split(".")[:2])


def common_graph() -> dict[str, dict[str, str]]:
    """part -> {imported part: where (file:line)}, for imports between different parts of common/."""
    graph: dict[str, dict[str, str]] = {}
    for f in sorted((REPO / "common").rglob("*.py")):
        rel = f.relative_to(REPO)
        part = _part(".".join(rel.with_suffix("").parts))
        for line, name in sorted(_imports(f)):
            if name.startswith("common.") and _part(name) != part:
                graph.setdefault(part, {}).setdefault(_part(name), f"{rel}:{line}")
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One circle of the graph as [a, b, ..., a], or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for nxt in graph.get(node, {}):
            found = visit(nxt, path + [node])
            if found:
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start, [])
        if found:
            return found
    return None


def test_find_cycle_sees_a_circle_and_only_one():
    assert find_cycle({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": "", "c": ""}, "b": {"c": ""}}) is None


def test_parts_of_common_form_no_circle():
    graph = common_graph()
    assert "common.data" in graph.get("common.engine", {})  # the graph is really read (engine trains on datasets)
    cycle = find_cycle(graph)
    where = [graph[a][b] for a, b in pairwise(cycle)] if cycle else []
    assert cycle is None, " -> ".join(cycle) + " (" + ", ".join(where) + ")"
