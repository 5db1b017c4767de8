"""Which site a reply comes from: the name the server binds to the node that sent it, never the name a reply gives.

- **Deployment.** The coordinator names each site when it registers the site's public key
  (`flwr supernode register st_marys.pub hospitals --name st_marys`). The SuperLink keeps that name with the key and
  the node id it issued for it, and tells the ServerApp (`Grid.get_nodes`); a SuperNode can only act as the node
  whose private key it holds, so the name is bound to the key. A node registered without a usable name is recorded
  as ``node-<id>`` (with a warning saying how to fix it).
- **Simulation.** The coordinator runs every simulated site itself: a node is bound to the first name it answers
  with, which must be one of the sites manifest's names and not bound to another node.

A reply whose own name differs from its node's bound name is recorded under the bound name, logged, and rejected:
the site is misconfigured or claims to be another.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from pathlib import Path

from flwr.serverapp import Grid

from common.protocol import SAFE_NAME

log = logging.getLogger("fracfl.server")


class SiteNames:
    """The bound name of every node a run talks to."""

    def __init__(self, grid: Grid, manifest: str | None = None) -> None:
        self._grid = grid
        self._sites: Collection[str] | None = (
            {str(e["name"]) for e in json.loads(Path(manifest).read_text(encoding="utf-8"))} if manifest else None
        )
        self._bound: dict[int, str] = {}
        self._unnamed: set[int] = set()

    def of(self, node: int) -> str:
        """The bound name of `node`, or ``node-<id>`` where it has none (a simulated node that never answered, or a
        deployed node registered without a name)."""
        if node not in self._bound and node not in self._unnamed and self._sites is None:
            registered = self._registered()
            if node in registered:
                self._bound[node] = registered[node]
                log.info("SuperNode %d is site %s (its registered name)", node, registered[node])
            else:
                self._unnamed.add(node)
                log.warning(
                    "SuperNode %d has no registered site name (or shares it with another node): its records say "
                    "node-%d. Unregister it (`flwr supernode unregister %d`) and register the site's new key with "
                    "`--name SITE` (docs/deployment.md)",
                    node,
                    node,
                    node,
                )
        return self._bound.get(node, f"node-{node}")

    def check(self, node: int, claimed: str) -> str | None:
        """Why a reply from `node` that gives its name as `claimed` is rejected, or None. A simulated node is bound
        here, on its first answer."""
        if self._sites is not None and node not in self._bound:
            if claimed in self._sites and claimed not in self._bound.values():
                self._bound[node] = claimed
        bound = self.of(node)
        if claimed == bound:
            return None
        said = repr(claimed) if SAFE_NAME.match(claimed) else "no valid name"
        return f"the reply gives {said}, but the node is {bound}"

    def _registered(self) -> dict[int, str]:
        """The names the SuperLink holds for its nodes; a name given to two nodes names neither."""
        nodes = [(int(n.node_id), str(n.name)) for n in self._grid.get_nodes()]
        names = [name for _, name in nodes]
        return {node: name for node, name in nodes if SAFE_NAME.match(name) and names.count(name) == 1}
