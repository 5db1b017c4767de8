"""Which peers may open an association: calling AE title and/or source address (a single IP or a network)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from client.listener.config import PeerConfig
from common.errors import ConfigError


def _host_matches(rule: str, host: str) -> bool:
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(rule, strict=False)
    except ValueError:
        return rule == host


def check_rules(peers: Sequence[PeerConfig]) -> None:
    """Fail at start-up on a host rule that is neither an IP address nor a network."""
    for i, peer in enumerate(peers):
        if peer.host is not None:
            try:
                ipaddress.ip_network(peer.host, strict=False)
            except ValueError:
                raise ConfigError(
                    f"config key allowed_peers[{i}].host: {peer.host!r} is not an IP address or "
                    "network (e.g. 10.1.2.3 or 10.1.2.0/24)"
                ) from None


def peer_allowed(peers: Sequence[PeerConfig], ae_title: str, host: str) -> bool:
    """True when `peers` is empty (open) or one rule matches both the AE title and the address it names."""
    if not peers:
        return True
    ae_title = ae_title.strip()
    return any(
        (p.ae_title is None or p.ae_title.strip() == ae_title) and (p.host is None or _host_matches(p.host, host))
        for p in peers
    )
