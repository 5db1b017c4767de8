"""Deliver a published version to the sites over the federation's own authenticated channel (Flower messages
through the SuperLink, TLS and SuperNode authentication as deployed): weights, card and TFLite builds, as the
registry holds them. A site checks every file against the card's hashes before keeping it (client/models/fetch.py)
and keeps it in its inbox; installing and promoting it stay the site's own decisions.
"""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common.protocol import DELIVER, DELIVERED_FILES, DELIVERED_NAMES, DELIVERED_VERSION, DELIVERY, SITE, SiteReply
from server.identity import SiteNames
from server.registry import Registry
from server.registry.card import EXPORT_FILE
from server.registry.store import CARD_JSON, CARD_MD, WEIGHTS

log = logging.getLogger("fracfl.server")


def version_files(registry: Registry, version: str) -> dict[str, bytes]:
    """The files of an intact version: card, weights and the exports its card lists as built."""
    problems = registry.verify(version)
    if problems:
        raise ValueError(f"{version} is damaged, not delivered: {'; '.join(problems)}")
    p = registry.get(version)
    names = [CARD_JSON, CARD_MD, WEIGHTS] + [
        e["file"] for e in p.card.get("exports") or [] if e.get("status") == "ok" and EXPORT_FILE.match(e["file"])
    ]
    return {name: (p.path / name).read_bytes() for name in names}


def deliver(grid: Grid, registry: Registry, version: str, timeout: float, names: SiteNames) -> dict[str, str]:
    """Send `version` to every connected node; returns each answering site's status (`stored`, or why not), under
    the name the server bound to its node (server/identity.py)."""
    files = version_files(registry, version)
    record = ConfigRecord(
        {DELIVERED_VERSION: version, DELIVERED_NAMES: list(files), DELIVERED_FILES: list(files.values())}
    )
    nodes = sorted(grid.get_node_ids())
    messages = [
        Message(RecordDict({DELIVERY: record}), dst_node_id=n, message_type=f"{MessageType.QUERY}.{DELIVER}")
        for n in nodes
    ]
    out = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error() or SITE not in reply.content:
            out[names.of(node)] = "no answer (a ClientApp without deliveries?)"
            continue
        site = SiteReply.from_record(reply.content[SITE])
        wrong = names.check(node, site.name)
        out[names.of(node)] = f"rejected: {wrong}" if wrong else site.status
    log.info("delivered %s to %d of %d node(s): %s", version, len(out), len(nodes), out)
    return out
