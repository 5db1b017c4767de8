"""Before a new run: which sites request a round, and how often their reviewers disagree with the model.

A site decides on its own whether to request a round (its reviewers' disagreement rate passed its own threshold,
client/continual/disagreement.py) and answers a query with that flag and its rate, coarsened to 0.05 and left out
below its own minimum of reviewed images. The server keeps those per-site rates as numbers only (no counts, no
cases), with their mean and maximum, in the run's outcome and the schedule's log.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common.errors import ConfigError
from common.protocol import ASK_ROUND, CONFIG, DISAGREEMENT, NAME, ROUND_REQUEST, SITE, SITES_MANIFEST
from server.config import FederationConfig
from server.identity import SiteNames

log = logging.getLogger("fracfl.server")

MODES = ("off", "ask", "require")
STEP = 0.05  # the coarsest a site's rate may arrive (sites round to it; the server rounds again, never finer)


@dataclass(frozen=True)
class SiteAnswer:
    name: str
    requests: bool
    disagreement: float | None  # None: not reported (too few reviewed images at the site, or no feedback store)


@dataclass(frozen=True)
class RoundRequests:
    """The sites' answers to one query; `asked`: the nodes the query went to."""

    asked: int
    answers: list[SiteAnswer] = field(default_factory=list)

    @property
    def requesting(self) -> list[str]:
        return sorted(a.name for a in self.answers if a.requests)

    def summary(self) -> dict[str, Any]:
        """What outcome.json and the schedule log keep: counts, requesting sites, per-site rates, mean and max."""
        rates = {a.name: a.disagreement for a in sorted(self.answers, key=lambda a: a.name)}
        known = [r for r in rates.values() if r is not None]
        return {
            "asked": self.asked,
            "answered": len(self.answers),
            "requesting": self.requesting,
            "disagreement": rates,
            "disagreement_mean": round(sum(known) / len(known), 4) if known else None,
            "disagreement_max": max(known) if known else None,
        }

    def describe(self) -> str:
        """One line for the ServerApp's log (what `flwr log` shows the coordinator): the requesting sites and each
        site's disagreement rate as it arrived, coarsened (n/a: not reported), with their mean and maximum."""
        s = self.summary()
        rates = ", ".join(f"{name} {_rate(rate)}" for name, rate in s["disagreement"].items()) or "none"
        return (
            f"round requests: {s['answered']} of {s['asked']} sites answered, requesting: "
            f"{', '.join(s['requesting']) or 'none'}; disagreement rates: {rates} "
            f"(mean {_rate(s['disagreement_mean'])}, max {_rate(s['disagreement_max'])})"
        )


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def coarse_rate(value: object) -> float | None:
    """A reported rate as a number in [0, 1] on the 0.05 grid; anything else counts as not reported."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if not 0.0 <= value <= 1.0:
        return None
    return round(round(value / STEP) * STEP, 2)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"federation.round_requests={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def ask_round_requests(
    grid: Grid, timeout: float, names: SiteNames, sites_manifest: str | None = None
) -> RoundRequests:
    """Query every connected node; a node that does not answer, or answers with an error (a ClientApp without
    round requests), does not request. Answers go under the name the server bound to the node (server/identity.py);
    one that gives another site's name is dropped."""
    nodes = sorted(grid.get_node_ids())
    config: dict[str, Any] = {SITES_MANIFEST: sites_manifest} if sites_manifest else {}  # simulated sites' settings
    kind = f"{MessageType.QUERY}.{ASK_ROUND}"
    ask = [Message(RecordDict({CONFIG: ConfigRecord(config)}), dst_node_id=n, message_type=kind) for n in nodes]
    answers = []
    for m in grid.send_and_receive(ask, timeout=timeout) if ask else []:
        if m.has_error() or SITE not in m.content:
            continue
        info, node = m.content[SITE], m.metadata.src_node_id
        wrong = names.check(node, str(info.get(NAME, "")))
        if wrong:
            log.warning("round request from %s rejected: %s", names.of(node), wrong)
            continue
        answers.append(
            SiteAnswer(
                names.of(node),
                info.get(ROUND_REQUEST) is True,
                coarse_rate(info.get(DISAGREEMENT)),
            )
        )
    return RoundRequests(len(nodes), answers)


def ask_if_configured(
    grid: Grid, fed: FederationConfig, names: SiteNames, sites_manifest: str | None = None
) -> RoundRequests | None:
    """The sites' answers when `federation.round_requests` asks for them, else None (no query is sent)."""
    if check_mode(fed.round_requests) == "off":
        return None
    asked = ask_round_requests(grid, min(float(fed.round_timeout), 300.0), names, sites_manifest)
    log.info("%s", asked.describe())
    return asked
