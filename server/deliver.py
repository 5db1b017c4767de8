"""Deliver published versions to the sites over the federation's own authenticated channel (Flower messages through
the SuperLink, TLS and SuperNode authentication as deployed): weights, card and TFLite builds, as the registry holds
them. After a run, the run's last published version goes to every site (`federation.deliver`) and each site gets the
versions it requested (`federation.answer_requests`, server/version_requests.py). A site checks every file against
the card's hashes before keeping it (client/models/fetch.py) and keeps it in its inbox; installing and promoting it
stay the site's own decisions.
"""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common.protocol import (
    CONFIG,
    DELIVER,
    DELIVERED_FILES,
    DELIVERED_NAMES,
    DELIVERED_VERSION,
    DELIVERY,
    SITE,
    SITES_MANIFEST,
    SiteReply,
)
from server.config import FederationConfig
from server.identity import SiteNames
from server.registry import Registry
from server.registry.card import EXPORT_FILE
from server.registry.store import CARD_JSON, CARD_MD, WEIGHTS
from server.version_requests import ask_version_requests

log = logging.getLogger("fracfl.server")

UNKNOWN = "not sent: no such version in the registry"
DAMAGED = "not sent: damaged in the registry (see `fracfl registry verify`)"


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


def delivery(version: str, files: dict[str, bytes], node: int, sites_manifest: str | None = None) -> Message:
    """The message that carries one version to one node (`query.deliver`)."""
    record = ConfigRecord(
        {DELIVERED_VERSION: version, DELIVERED_NAMES: list(files), DELIVERED_FILES: list(files.values())}
    )
    config = ConfigRecord({SITES_MANIFEST: sites_manifest} if sites_manifest else {})  # simulated sites' stores
    content = RecordDict({DELIVERY: record, CONFIG: config})
    return Message(content, dst_node_id=node, message_type=f"{MessageType.QUERY}.{DELIVER}")


def deliver(
    grid: Grid,
    version: str,
    files: dict[str, bytes],
    nodes: list[int],
    timeout: float,
    names: SiteNames,
    sites_manifest: str | None = None,
) -> dict[str, str]:
    """Send one version's files to `nodes`; returns each site's status (`stored`, or why not), under the name the
    server bound to its node (server/identity.py)."""
    messages = [delivery(version, files, n, sites_manifest) for n in nodes]
    out, answered = {}, set()
    for reply in grid.send_and_receive(messages, timeout=timeout) if messages else []:
        node = reply.metadata.src_node_id
        answered.add(node)
        if reply.has_error() or SITE not in reply.content:
            out[names.of(node)] = "no answer (a ClientApp without deliveries?)"
            continue
        site = SiteReply.from_record(reply.content[SITE])
        wrong = names.check(node, site.name)
        out[names.of(node)] = f"rejected: {wrong}" if wrong else site.status
    out.update({names.of(n): f"no answer within {timeout:g} s" for n in nodes if n not in answered})
    log.info("delivered %s to %d node(s): %s", version, len(nodes), out)
    return out


def deliver_after_run(
    grid: Grid,
    registry: Registry,
    fed: FederationConfig,
    latest: str | None,
    names: SiteNames,
    sites_manifest: str | None = None,
) -> dict[str, dict[str, str]] | None:
    """What each site gets after a run, as {site: {version: status}}: the run's last published version with
    `federation.deliver`, the versions it asked for with `federation.answer_requests`. A version the registry does
    not hold, or holds damaged, is not sent and says so. None when the run delivers nothing (both off)."""
    if not (fed.deliver or fed.answer_requests):
        return None
    nodes = sorted(grid.get_node_ids())
    wanted: dict[int, set[str]] = {n: {latest} if fed.deliver and latest else set() for n in nodes}
    if fed.answer_requests:
        asked = ask_version_requests(grid, nodes, min(float(fed.round_timeout), 300.0), names, sites_manifest)
        for node, versions in asked.items():
            wanted[node].update(versions)
    held = set(registry.versions())
    out: dict[str, dict[str, str]] = {}
    for version in sorted(set().union(*wanted.values()), key=lambda v: int(v[1:])):
        to = [n for n in nodes if version in wanted[n]]
        if version not in held:
            statuses = {names.of(n): UNKNOWN for n in to}
        else:
            try:
                files = version_files(registry, version)
            except ValueError as e:
                log.error("%s", e)
                statuses = {names.of(n): DAMAGED for n in to}
            else:
                statuses = deliver(grid, version, files, to, fed.round_timeout, names, sites_manifest)
        for site, status in statuses.items():
            out.setdefault(site, {})[version] = status
    return out
