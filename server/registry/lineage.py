"""A version's lineage: the chain of parents its weights descend from, as far as this registry can show it.

Each card's `parent` is the version its run trained from: the run's previous published version, or, for a run's
first version, the version the run warm-started from (null for a run from the initial weights). Following `parent`
from any version therefore walks back through every earlier run to the first model trained from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.registry.store import Registry


@dataclass(frozen=True)
class Lineage:
    """`chain[0]` is the version asked about, each next one its parent. `missing`: a parent named by the last card
    of the chain that this registry does not hold (e.g. a registry restored without its older versions)."""

    chain: list[str]
    missing: str | None = None
    loops_to: str | None = None  # a hand-edited card whose parent is already in the chain (never written so)

    def text(self) -> str:
        """`v0005 <- v0004 <- v0001`, saying where the chain leaves this registry."""
        line = " <- ".join(self.chain)
        if self.missing is not None:
            line += f" <- {self.missing} (not in this registry; the chain cannot be followed further)"
        if self.loops_to is not None:
            line += f" <- {self.loops_to} again (the cards' parents form a loop: a card was edited by hand)"
        return line


def lineage(registry: Registry, version: str | int) -> Lineage:
    """Walk `parent` from `version` (`latest` allowed) back to a version without one."""
    chain = [registry.get(version).version]
    have = set(registry.versions())
    while True:
        parent = registry.get(chain[-1]).card.get("parent")
        if not parent:
            return Lineage(chain)
        parent = Registry.normalise(parent)
        if parent not in have:
            return Lineage(chain, missing=parent)
        if parent in chain:
            return Lineage(chain, loops_to=parent)
        chain.append(parent)
