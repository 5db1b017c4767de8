"""A site's privacy budget for sample-level DP-SGD: plan the run's noise once, refuse any round that would cross
the site's ceiling, and record every round in the site's hash-chained ledger before its weights leave.

The site decides: the server proposes a target and a ceiling; at a real site its own `site.toml` (client.site_config)
sets the limits and the ledger, and a run asking for more is refused.
Spending is keyed to the images (by content), so a new run on the same or a grown set continues from what was
already spent; failing to read or write the ledger means no training (fail closed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.site_config import NODE_KEY, SitePrivacy, load_site_privacy
from common.config import PrivacyConfig
from common.errors import ConfigError, FracflError
from common.privacy.accounting import (
    Mechanism,
    calibrate,
    default_delta,
    epsilon_rdp,
    epsilons,
    sample_rate,
    steps_per_round,
)
from common.privacy.dp_sgd import DPSGD
from common.privacy.fingerprint import fingerprint, image_hashes
from common.privacy.ledger import SECURE, SEEDED, Ledger, LedgerError
from common.privacy.patients import IMAGE_UNIT, PATIENT_UNIT, PATIENTS_FILE, patient_groups, read_patients
from common.privacy.signing import KEY_NAME, load_or_create

log = logging.getLogger("fracfl.client.privacy")


class PrivacyRefused(FracflError):
    """The site will not train this round. The message is sent to the server: numbers only, no paths or names."""

    def __init__(self, reason: str, report: dict[str, Any] | None = None):
        super().__init__(reason)
        self.report = report


@dataclass(frozen=True)
class Budget:
    target: float
    ceiling: float
    delta: float | None
    ledger_dir: Path
    seeded_noise: bool = False  # research mode: noise from the job seed (see PrivacyConfig.reproducible_noise)
    real: bool = False  # a hospital's own data (its site.toml), not a simulated site


def site_budget(site: str, node_config: Mapping[str, Any], cfg: PrivacyConfig) -> Budget:
    """The budget this round may use. A real site (its node config names `data-dir`) takes its limits and ledger
    from its own `site-config` file and refuses a run that asks for more; a simulated site (the coordinator's own
    data) takes the run's values with its per-site overrides."""
    if "data-dir" in node_config:
        return _real_site_budget(site, node_config, cfg)
    over = cfg.sites.get(site, {})
    target = float(over.get("target_epsilon", cfg.target_epsilon))
    ceiling = float(over.get("ceiling_epsilon", cfg.ceiling_epsilon))
    delta = over.get("delta", cfg.delta)
    return Budget(
        min(target, ceiling),
        ceiling,
        None if delta is None else float(delta),
        Path(cfg.ledger_dir) / site,
        cfg.reproducible_noise,
    )


def _own_limits(site: str, node_config: Mapping[str, Any]) -> SitePrivacy:
    """The real site's own `site.toml`; without a usable one it trains under no mode at all (fail closed)."""
    where = node_config.get(NODE_KEY)
    if not where:
        log.error(
            "site %s: no privacy configuration. Run `fracfl site init DIR` and start the SuperNode with "
            "--node-config \"... %s='DIR/site.toml'\"",
            site,
            NODE_KEY,
        )
        raise PrivacyRefused(
            f"this site has no privacy configuration (node config {NODE_KEY}); it does not train "
            "until its governance sets one"
        )
    try:
        return load_site_privacy(str(where))
    except ConfigError as e:
        log.error("site %s: %s", site, e)
        raise PrivacyRefused("this site's privacy configuration is unusable (see the site's log)") from e


def check_mode(site: str, node_config: Mapping[str, Any], cfg: PrivacyConfig) -> None:
    """A real site trains only under a privacy mode its own file lists (by default DP-SGD alone): the server
    cannot switch a hospital's noise off by sending `privacy=none`, nor move it to the server with `client_dp`."""
    if "data-dir" not in node_config:
        return
    own = _own_limits(site, node_config)
    if cfg.mode not in own.modes:
        raise PrivacyRefused(
            f"the run asks for privacy mode {cfg.mode!r}; this site trains only under {', '.join(own.modes)}"
        )


def _real_site_budget(site: str, node_config: Mapping[str, Any], cfg: PrivacyConfig) -> Budget:
    """Server values may only tighten the site's file: a higher target or ceiling, another ledger folder, or seeded
    noise the site did not allow, are refused. Details (paths) go to the site's log, numbers to the server."""
    own = _own_limits(site, node_config)
    over = cfg.sites.get(site, {})
    asked = {
        "target_epsilon": float(over.get("target_epsilon", cfg.target_epsilon)),
        "ceiling_epsilon": float(over.get("ceiling_epsilon", cfg.ceiling_epsilon)),
    }
    mine = {"target_epsilon": own.target_epsilon, "ceiling_epsilon": own.ceiling_epsilon}
    problems = [f"{k} {asked[k]:.2f} above this site's {mine[k]:.2f}" for k in asked if asked[k] > mine[k] + 1e-12]
    if cfg.ledger_dir != PrivacyConfig.ledger_dir:
        problems.append("another ledger folder (privacy.ledger_dir): a site's ledger is fixed by the site")
    if cfg.reproducible_noise and not own.research_mode:
        problems.append("seeded noise (privacy.reproducible_noise): this site does not allow research mode")
    if problems:
        raise PrivacyRefused("the run asks for " + "; ".join(problems) + ". Only lower limits may be requested")
    deltas = [float(d) for d in (own.delta, over.get("delta", cfg.delta)) if d is not None]
    return Budget(
        min(asked.values()),
        asked["ceiling_epsilon"],
        min(deltas) if deltas else None,
        own.ledger_dir,
        cfg.reproducible_noise,
        real=True,
    )


UNITS = ("auto", "patient", "image")


def privacy_groups(
    site: str, budget: Budget, cfg: PrivacyConfig, data_root: Path | Sequence[Path], images: list[Path]
) -> np.ndarray | None:
    """A patient number per training image when the unit is the patient, None for the image unit. The patient is
    the default wherever the data names patients; a real site refuses a run asking it to protect images only.
    `data_root` is the folder (or folders: the site's data and its feedback pool) whose patients.csv name them."""
    if cfg.unit not in UNITS:
        raise ConfigError(f"privacy.unit: expected one of {UNITS}, got {cfg.unit!r}")
    roots = [data_root] if isinstance(data_root, Path) else list(data_root)
    patients = {image: patient for root in roots for image, patient in read_patients(root).items()}
    named = sum(Path(p).stem in patients for p in images)
    if cfg.unit == "image":
        if named and budget.real:
            raise PrivacyRefused(
                "the run asks for the image as privacy unit (privacy.unit=image); this site's data "
                "names patients, and only a stronger unit may be requested"
            )
        return None
    if cfg.unit == "auto" and not named:
        return None
    if named < len(images):
        log.warning(
            "site %s: %d of %d training images have no patient pseudonym (%s); each counts as a patient of its own",
            site,
            len(images) - named,
            len(images),
            PATIENTS_FILE,
        )
    return patient_groups(images, patients)


@dataclass
class RoundGuard:
    """What one round may spend, decided before training; `commit` records what it did spend."""

    site: str
    ledger: Ledger
    hook: DPSGD
    history: list[Mechanism]
    plan: dict[str, Any]
    delta: float
    fields: dict[str, Any]

    def commit(self, steps: int) -> dict[str, Any]:
        """Append this round's entry (before the weights leave) and return the report sent to the server."""
        mech = Mechanism(self.hook.noise_multiplier, self.hook.sample_rate, steps)
        spent = epsilons([*self.history, mech], self.delta)
        entry = self.ledger.append(
            "round",
            {
                **self.fields,
                "noise_multiplier": mech.noise_multiplier,
                "sample_rate": mech.sample_rate,
                "steps": steps,
                "epsilon": spent["epsilon"],
                "epsilon_rdp": spent["rdp"],
                "epsilon_prv": spent["prv"],
            },
        )
        return report(entry, self.plan)


def report(entry: dict[str, Any], plan: dict[str, Any] | None) -> dict[str, Any]:
    """The privacy figures a site shares: mechanism and epsilon, never paths or image hashes; the entry's hash and
    number let the server anchor the site's ledger (`check_heads`)."""
    keys = (
        "run_id",
        "round",
        "model_version",
        "epsilon",
        "epsilon_rdp",
        "epsilon_prv",
        "delta",
        "target_epsilon",
        "ceiling_epsilon",
        "noise_multiplier",
        "sample_rate",
        "steps",
        "max_grad_norm",
        "images",
        "patients",
        "reason",
        "unit",
        "noise",
    )
    out = {k: entry[k] for k in keys if k in entry}
    out["entry"], out["ledger_head"], out["ledger_seq"] = entry["kind"], entry["hash"], entry["seq"]
    if plan is not None:
        out.update(
            planned_rounds=plan["planned_rounds"],
            first_round=plan["first_round"],
            steps_per_round=plan["steps_per_round"],
            projected_epsilon=plan["projected_epsilon"],
        )
    return out


def _members(ledger_dir: Path, fp: str) -> set[str] | None:
    p = ledger_dir / "datasets" / f"{fp}.txt"
    return set(p.read_text().split()) if p.exists() else None


def spent_history(ledger_dir: Path, entries: list[dict[str, Any]], hashes: set[str]) -> list[Mechanism]:
    """Rounds whose training set shared any image with `hashes` (a set whose members are unknown counts too)."""
    history, overlap = [], {}
    for e in entries:
        if e.get("kind") != "round":
            continue
        fp = e["fingerprint"]
        if fp not in overlap:
            members = _members(ledger_dir, fp)
            overlap[fp] = members is None or not members.isdisjoint(hashes)
        if overlap[fp]:
            history.append(Mechanism(e["noise_multiplier"], e["sample_rate"], e["steps"]))
    return history


def _sampled(site: str, hashes: list[str]) -> int:
    """The number of images the Poisson sampler draws from: every file, so a byte-identical copy counts (and is
    drawn) once per copy, and the sample rate matches the sampling. Such an image is protected at group level k
    (its k copies), like a patient with k images."""
    copies = len(hashes) - len(set(hashes))
    if copies:
        log.warning(
            "site %s: %d training image(s) are byte-identical copies of others; each copy is sampled, so "
            "such an image is protected at group level (its number of copies)",
            site,
            copies,
        )
    return len(hashes)


def guard_round(
    site: str,
    budget: Budget,
    cfg: PrivacyConfig,
    *,
    run_id: str,
    rnd: int,
    planned_rounds: int,
    images: list[Path],
    batch_size: int,
    local_epochs: int,
    max_steps: int | None,
    model_version: str,
    seed: int,
    groups: np.ndarray | None = None,
) -> RoundGuard:
    """Plan (once per run and training set) and check this round; raises PrivacyRefused when it must not train.

    With `groups` (a patient number per image) the unit is the patient: the sample rate is `batch_size` patients
    over the patient count, and the accountant runs on patients."""
    try:
        ledger = Ledger(budget.ledger_dir / "ledger.jsonl", load_or_create(budget.ledger_dir / KEY_NAME))
        entries = ledger.entries()
        hashes = image_hashes(images)
        fp = fingerprint(hashes)
        members = budget.ledger_dir / "datasets" / f"{fp}.txt"
        if not members.exists():
            members.parent.mkdir(parents=True, exist_ok=True)
            members.write_text("\n".join(sorted(set(hashes))) + "\n")
    except (LedgerError, OSError, ValueError) as e:  # ValueError: an unreadable key
        log.error("site %s: %s", site, e)
        raise PrivacyRefused("privacy ledger cannot be read or written (see the site's log)") from e
    n = _sampled(site, hashes) if groups is None else int(groups.max()) + 1
    delta = budget.delta if budget.delta is not None else default_delta(n)
    q = sample_rate(batch_size, n)
    steps = steps_per_round(local_epochs, max_steps, q)
    history = spent_history(budget.ledger_dir, entries, set(hashes))
    fields = {
        "site": site,
        "run_id": run_id,
        "round": rnd,
        "model_version": model_version,
        "fingerprint": fp,
        "images": len(hashes),
        "delta": delta,
        "max_grad_norm": cfg.max_grad_norm,
        "target_epsilon": budget.target,
        "ceiling_epsilon": budget.ceiling,
        "unit": IMAGE_UNIT if groups is None else PATIENT_UNIT,
        "noise": SEEDED if budget.seeded_noise else SECURE,
    }
    if groups is not None:
        fields["patients"] = n

    def refuse(reason: str, spent: float) -> PrivacyRefused:
        try:
            return PrivacyRefused(
                reason, report(ledger.append("refused", {**fields, "reason": reason, "epsilon": spent}), plan)
            )
        except LedgerError as e:
            log.error("site %s: %s", site, e)
            return PrivacyRefused(reason)

    plan = next(
        (e for e in reversed(entries) if e.get("kind") == "plan" and e["run_id"] == run_id and e["fingerprint"] == fp),
        None,
    )
    spent = epsilon_rdp(history, delta)
    if plan is None:  # noise calibrated once for every round still to come, from what is already spent
        rounds_left = max(1, planned_rounds - rnd + 1)
        sigma = calibrate(history, q, steps * rounds_left, budget.target, delta)
        if sigma is None:
            raise refuse(
                f"privacy budget exhausted: epsilon {spent:.2f} already spent of target {budget.target:.2f}", spent
            )
        projected = epsilon_rdp([*history, Mechanism(sigma, q, steps * rounds_left)], delta)
        try:
            plan = ledger.append(
                "plan",
                {
                    **fields,
                    "noise_multiplier": sigma,
                    "sample_rate": q,
                    "steps_per_round": steps,
                    "planned_rounds": planned_rounds,
                    "first_round": rnd,
                    "projected_epsilon": projected,
                    "epsilon": spent,
                },
            )
        except LedgerError as e:
            log.error("site %s: %s", site, e)
            raise PrivacyRefused("privacy ledger cannot be read or written (see the site's log)") from e
    sigma = float(plan["noise_multiplier"])
    after = epsilon_rdp([*history, Mechanism(sigma, q, steps)], delta)
    if after > budget.ceiling:
        raise refuse(
            f"privacy budget exhausted: this round would reach epsilon {after:.2f} > ceiling "
            f"{budget.ceiling:.2f} (spent {spent:.2f})",
            spent,
        )
    if budget.seeded_noise:
        log.warning(
            "RESEARCH MODE at site %s: DP noise and sampling are seeded from the run's seed, which the server "
            "knows; it can regenerate and remove this round's noise. Never use with real patients' images.",
            site,
        )
    hook = DPSGD(
        sigma,
        cfg.max_grad_norm,
        q,
        cfg.max_physical_batch,
        cfg.grad_sample_mode,
        seed if budget.seeded_noise else None,
        groups,
    )
    return RoundGuard(site, ledger, hook, history, plan, delta, fields)
