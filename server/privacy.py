"""The server's side of each privacy mode, as one object per mode, and the privacy sections of model cards.

`privacy.mode` is read once, in `server_privacy`; the run then asks the object what to do at each step (wrap the
strategy, weigh sites, replay what a resumed run had spent, record each round, describe the card, audit the run)
instead of comparing the mode's name wherever it matters.

- ``none``: nothing changes.
- ``dp_sgd``: sites are the authority on what their images cost (their own ledgers); the server copies what they
  report into a hash-chained summary ledger of its own (`privacy-ledger.jsonl`), so governance staff can audit a
  whole federation from one place and compare each site's ledger head with the one it reported.
- ``client_dp``: Flower's client-level DP wrapper clips each site's update and noises the aggregate; its
  accountant gives one figure for the federation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.serverapp.strategy import Strategy

from common.config import PrivacyConfig
from common.errors import ConfigError
from common.privacy.ledger import Ledger
from server.audit import write_audit_report
from server.history import RoundRecord

MECHANISM = (
    "DP-SGD at each site (Opacus): Poisson sampling of patients (or images), each patient's (or image's) "
    "gradient clipped, Gaussian noise; noise calibrated once for the whole planned run"
)
ACCOUNTING = "RDP and PRV accountants (Opacus), both upper bounds; budgets are checked against RDP"
UNIT = "per site (each site's `unit`): one patient where the site's data names patients, else one radiograph"


def latest_reports(
    records: list[RoundRecord], known: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Each site's most recent privacy report and status, updating `known`. A site that sent no report (refused
    before its ledger was read, e.g. a run asking for more than its own limits, or failed) is still listed, with
    its reason and the figures it last reported, so the card accounts for every site."""
    out = dict(known or {})
    for r in records:
        if r.phase == "train":
            figures = r.privacy or out.get(r.site, {})
            out[r.site] = dict(figures, status="trained" if r.ok else r.status[:120])
    return out


def dp_sgd_section(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The card's privacy section under DP-SGD: every site asked to train, its epsilon spent up to this version
    and its status."""
    keys = (
        "epsilon",
        "epsilon_rdp",
        "epsilon_prv",
        "delta",
        "target_epsilon",
        "ceiling_epsilon",
        "noise_multiplier",
        "sample_rate",
        "steps_per_round",
        "max_grad_norm",
        "round",
        "status",
        "noise",
        "unit",
        "patients",
        "ledger_seq",
        "ledger_head",
    )
    return {
        "mode": "dp_sgd",
        "unit": UNIT,
        "mechanism": MECHANISM,
        "accounting": ACCOUNTING,
        "sites": {s: {k: rep[k] for k in keys if k in rep} for s, rep in sorted(reports.items())},
    }


def append_site_reports(path: Path, run_id: str, records: list[RoundRecord]) -> int:
    """Append the round's site reports to the server's summary ledger (once each: a resumed round is not
    recorded twice). Returns the number of entries added."""
    ledger = Ledger(path)
    seen = {(e.get("run_id"), e.get("round"), e.get("site"), e.get("ledger_head")) for e in ledger.entries()}
    added = 0
    for r in records:
        rep = r.privacy
        if r.phase != "train" or not rep:
            continue
        key = (run_id, rep.get("round", r.round), r.site, rep.get("ledger_head"))
        if key in seen:
            continue
        ledger.append("site-report", {**rep, "site": r.site, "run_id": run_id, "status": r.status[:200]})
        seen.add(key)
        added += 1
    return added


def client_dp_strategy(strategy: Any, cfg: PrivacyConfig, sites: int, fraction_train: float) -> Any:
    """Flower's client-level DP: sites clip their whole update (fixedclipping_mod), the server adds Gaussian noise
    to the FedAvg aggregate and Flower's RDP accountant composes one release per round. It protects whole sites,
    not patients; equal site weights and no sampling amplification, as that accountant requires."""
    from flwr.serverapp import PrivacyConfig as FlowerPrivacy
    from flwr.serverapp import RdpAccountant
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping
    from flwr.supercore.privacy_accounting import NeighboringRelation, SamplingMethod

    sampled = max(1, round(sites * fraction_train))
    accountant = RdpAccountant(
        FlowerPrivacy(
            target_delta=cfg.delta if cfg.delta is not None else min(1e-5, 0.1 / max(sites, 1)),
            population_size=sites,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=cfg.ceiling_epsilon,
        )
    )
    try:
        return DifferentialPrivacyClientSideFixedClipping(
            strategy, cfg.noise_multiplier, cfg.max_grad_norm, sampled, accountant=accountant
        )
    except ValueError as e:
        raise ConfigError(f"privacy=client_dp: {e}") from e


def client_dp_section(strategy: Any, cfg: PrivacyConfig) -> dict[str, Any]:
    """The card's privacy section under client-level DP: one figure for the federation, per site."""
    spent = strategy.privacy_spent()
    return {
        "mode": "client_dp",
        "unit": "one site (all of a site's data); not a per-patient guarantee",
        "mechanism": "Flower client-side fixed clipping of each site's update, Gaussian noise on the FedAvg "
        "aggregate (equal site weights)",
        "accounting": "Flower RDP accountant, no sampling amplification",
        "epsilon": spent.epsilon,
        "delta": spent.delta,
        "releases": spent.num_releases,
        "noise_multiplier": cfg.noise_multiplier,
        "clipping_norm": cfg.max_grad_norm,
        "ceiling_epsilon": cfg.ceiling_epsilon,
    }


def replay_releases(strategy: Any, rounds: int) -> None:
    """After a resume, compose the releases of the rounds already run (the accountant is not checkpointed)."""
    from flwr.serverapp import GaussianPrivacyEvent

    acc = strategy.accountant
    if rounds > 0:
        acc.compose(
            GaussianPrivacyEvent(
                noise_multiplier=strategy.noise_multiplier,
                sample_size=strategy.num_sampled_clients,
                population_size=acc.config.population_size,
            ),
            count=rounds,
        )


class ServerPrivacy:
    """Privacy mode ``none``, and what every mode can change (the subclasses override their part)."""

    name = "none"
    equal_weights = False  # average sites equally instead of by their images (client-level DP's noise assumes it)

    def wrap(self, strategy: Strategy) -> Strategy:
        """The strategy the rounds run through (the inner one keeps the state that is checkpointed)."""
        return strategy

    def resumed(self, rounds_done: int) -> None:
        """A resumed run: account for the rounds it had run before it stopped."""

    def recorded(self, records: list[RoundRecord]) -> None:
        """A round's records are on disk."""

    def card_section(self, reports: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        """The privacy section of the card of the version published now (`reports`: `latest_reports`)."""
        return None

    def audit(self, report_dir: Path) -> Path | None:
        """The run's privacy audit page, when the mode has one and something was recorded."""
        return None


class SiteDpSgd(ServerPrivacy):
    """Sample-level DP-SGD at every site; the server keeps a summary ledger of what they report."""

    name = "dp_sgd"

    def __init__(self, ledger: Path, run_id: str):
        self.ledger, self.run_id = ledger, run_id

    def recorded(self, records: list[RoundRecord]) -> None:
        append_site_reports(self.ledger, self.run_id, records)

    def card_section(self, reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return dp_sgd_section(reports)

    def audit(self, report_dir: Path) -> Path | None:
        if not self.ledger.exists():  # no site reported anything
            return None
        return write_audit_report([self.ledger], report_dir / "privacy-audit.html")


class ClientLevelDp(ServerPrivacy):
    """Flower's client-level DP: the strategy is wrapped, sites weigh equally, the wrapper's accountant is the
    card's figure."""

    name = "client_dp"
    equal_weights = True

    def __init__(self, cfg: PrivacyConfig, sites: int, fraction_train: float):
        self.cfg, self.sites, self.fraction_train = cfg, sites, fraction_train
        self.wrapper: Any = None

    def wrap(self, strategy: Strategy) -> Strategy:
        self.wrapper = client_dp_strategy(strategy, self.cfg, self.sites, self.fraction_train)
        return self.wrapper

    def resumed(self, rounds_done: int) -> None:
        replay_releases(self.wrapper, rounds_done)

    def card_section(self, reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return client_dp_section(self.wrapper, self.cfg)


def server_privacy(cfg: PrivacyConfig, run_dir: Path, run_id: str, sites: int, fraction_train: float) -> ServerPrivacy:
    """The object for `privacy.mode`; an unknown mode is refused rather than run without privacy."""
    if cfg.mode == "none":
        return ServerPrivacy()
    if cfg.mode == "dp_sgd":
        return SiteDpSgd(run_dir / "privacy-ledger.jsonl", run_id)
    if cfg.mode == "client_dp":
        return ClientLevelDp(cfg, sites, fraction_train)
    raise ConfigError(f"privacy.mode: unknown mode {cfg.mode!r}; choose one of none, dp_sgd, client_dp")
