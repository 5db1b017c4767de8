"""After a run: which published versions each site asked for (`fracfl site request`, client/models/requested.py).

A site cannot start an exchange over Flower, so the server asks every node (`query.version_request`) and each
answers with version names only. Names that are not registry version names are dropped here, whatever a site sends:
nothing else from the answer reaches the registry, the logs or the run's outcome.
"""

from __future__ import annotations

import logging
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common.protocol import (
    ASK_VERSIONS,
    CONFIG,
    MAX_REQUESTED,
    NAME,
    REQUESTED,
    SITE,
    SITES_MANIFEST,
    requested_versions,
)
from server.identity import SiteNames

log = logging.getLogger("fracfl.server")


def ask_version_requests(
    grid: Grid, nodes: list[int], timeout: float, names: SiteNames, sites_manifest: str | None = None
) -> dict[int, list[str]]:
    """Each answering node's requested versions (only nodes that ask for one). A node that does not answer, or
    answers with an error (a ClientApp without the query), asks for nothing; so does one that gives another site's
    name (logged)."""
    config: dict[str, Any] = {SITES_MANIFEST: sites_manifest} if sites_manifest else {}  # simulated sites' stores
    kind = f"{MessageType.QUERY}.{ASK_VERSIONS}"
    ask = [Message(RecordDict({CONFIG: ConfigRecord(config)}), dst_node_id=n, message_type=kind) for n in nodes]
    out: dict[int, list[str]] = {}
    for m in grid.send_and_receive(ask, timeout=timeout) if ask else []:
        node = m.metadata.src_node_id
        if m.has_error() or SITE not in m.content:
            log.info("version requests: no answer from %s (a ClientApp without the query?)", names.of(node))
            continue
        info = m.content[SITE]
        wrong = names.check(node, str(info.get(NAME, "")))
        if wrong:
            log.warning("version requests from %s rejected: %s", names.of(node), wrong)
            continue
        sent = info.get(REQUESTED)
        wanted = requested_versions(sent)
        if isinstance(sent, list) and len(sent) != len(wanted):
            log.warning(
                "version requests from %s: %d of %d name(s) dropped (not a registry version name, repeated, or "
                "beyond %d)",
                names.of(node),
                len(sent) - len(wanted),
                len(sent),
                MAX_REQUESTED,
            )
        if wanted:
            out[node] = wanted
    log.info("version requests: %s", {names.of(n): v for n, v in out.items()} or "none")
    return out
