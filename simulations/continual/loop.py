"""`fracfl simulate +continual=default`: T periods of continuous learning on simulated sites.

Period 0 trains on the sites' original data and every site adopts the result. Then, each period: new radiographs
arrive at each site (`arrivals`), the site's clinical model reads them and the simulated radiologist reviews its
findings into the site's feedback store (`radiologist`), the verdicts join the site's pool, a federated round
warm-starts from the registry's latest version, and each site's gate decides; a site that keeps its clinical model
re-checks it against the one it replaced and rolls back when the gate now refuses it (`steps`). The clinical model
is then scored against the ground truth on the site's held-out arrivals and its original validation split
(`scoring`), and one `PeriodRecord` per site goes into the report.

Run folder: data/ and sites.json (period-0 sites, as `fracfl simulate` makes them), registry/, periods/pNNN/ (each
round's run), sites/SITE/ (feedback.db, models/, arrivals/), truth/SITE/pNNN.jsonl (what only the reader sees),
report/.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from client.continual.pool import PoolVersion
from client.feedback.store import FeedbackStore
from common.errors import ConfigError
from common.synth import SiteProfile
from server.audit import read_all
from simulations.continual import steps
from simulations.continual.arrivals import Arrival, TruthBox, arrive, read_truth
from simulations.continual.config import ContinualJob, check_continual, profile_at
from simulations.continual.radiologist import reader_rng, record_review
from simulations.continual.report import PeriodRecord, write_report
from simulations.continual.scoring import predict_findings, score
from simulations.partition import synthetic_profiles
from simulations.runner import prepare_sites

log = logging.getLogger("fracfl.simulate")


@dataclass
class SiteState:
    """What the loop keeps for one site between periods."""

    profile: SiteProfile  # its own acquisition profile (drift replaces it per period)
    data_dir: Path  # its original data; the pool goes under data_dir/pool
    home: Path  # feedback.db, models/, arrivals/
    store: FeedbackStore  # the site's findings and verdicts, home/feedback.db
    held_out: list[tuple[Arrival, list[TruthBox]]] = field(default_factory=list)

    @property
    def models_dir(self) -> Path:
        return self.home / "models"


def original_val_truth(data_dir: Path) -> list[tuple[Path, list[TruthBox]]]:
    """The site's original validation images with their true fractures, from the synthetic dataset's
    ground_truth.jsonl."""
    out = []
    for line in (data_dir / "ground_truth.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec["split"] == "val":
            truth = [TruthBox(tuple(f["box_xyxy"]), f["type"]) for f in rec["fractures"]]
            out.append((data_dir / rec["image"], truth))
    return out


def salt(job: ContinualJob, site: str) -> bytes:
    """The held-out split's salt for a simulated site (a real site's comes from its own keys)."""
    return f"fracfl-sim/{job.seed}/{site}".encode()


def run_continual(job: ContinualJob, run_dir: Path) -> dict[str, Path]:
    """Run every period and write the report; returns the report's files."""
    if job.partition.kind != "synthetic":
        raise ConfigError(f"partition.kind must be synthetic for a continual simulation, got {job.partition.kind!r}")
    cfg = job.continual
    profiles = synthetic_profiles(job.partition)
    check_continual(cfg, [p.name for p in profiles])
    run_dir.mkdir(parents=True, exist_ok=True)
    job.registry = str(Path(job.registry).resolve())
    manifest, pooled_val = prepare_sites(job, run_dir)
    data = {s["name"]: Path(s["data"]).parent for s in json.loads(manifest.read_text())}
    names = [str(job.model.names[k]) for k in sorted(job.model.names)]  # class-index order
    sites = {
        p.name: SiteState(p, data[p.name], home, FeedbackStore(home / "feedback.db", class_names=names))
        for p in profiles
        for home in [run_dir / "sites" / p.name]
    }
    records: list[PeriodRecord] = []
    for period in range(cfg.periods + 1):
        log.info("continual: period %d of %d", period, cfg.periods)
        reviewed = {name: _review_period(job, run_dir, name, s, period) for name, s in sites.items()} if period else {}
        pools = {name: steps.build_pool(s.store, s.data_dir, cfg, salt(job, name)) for name, s in sites.items()}
        target = None if cfg.epsilon_per_period is None else (period + 1) * cfg.epsilon_per_period
        challenger = steps.federated_round(
            job, run_dir / "periods" / f"p{period:03d}", manifest, pooled_val, warm=period > 0, target_epsilon=target
        )
        for name, s in sites.items():
            decision = _decide(job, name, s, challenger, pools[name], period)
            records.append(_record(job, run_dir, name, s, period, decision, reviewed.get(name, {}), pools[name]))
    return write_report(records, run_dir / "report", f"Continuous learning: {len(sites)} sites, {cfg.periods} periods")


def _review_period(job: ContinualJob, run_dir: Path, name: str, s: SiteState, period: int) -> dict[str, object]:
    """This period's arrivals at one site, read by its clinical model and reviewed; returns the tally."""
    cfg = job.continual
    profile = profile_at(cfg, s.profile, period)
    truth_file = run_dir / "truth" / name / f"p{period:03d}.jsonl"
    arrivals = arrive(name, profile, period, cfg.arrivals_per_period, job.partition.size, job.seed,
                      cfg.patients_per_site, s.home / "arrivals" / f"p{period:03d}", truth_file)  # fmt: skip
    truth = read_truth(truth_file)
    current = steps.clinical_model(s.models_dir, job.eval)
    if current is None:
        raise ConfigError(f"site {name} has no clinical model at period {period}: period 0 should have promoted one")
    version, model, eval_cfg = current
    findings = predict_findings(model, [a.image for a in arrivals], eval_cfg)
    rng, kinds = reader_rng(job.seed, name, period), Counter[str]()
    errors = misses = 0
    for a, (boxes, probability) in zip(arrivals, findings):
        r = record_review(s.store, a, boxes, probability, truth[a.image_id], version, rng, cfg.radiologist)
        kinds.update(d.kind for d in r.decisions)
        errors, misses = errors + r.errors, misses + r.misses
        if steps.held_out(a.patient, cfg, salt(job, name)):
            s.held_out.append((a, truth[a.image_id]))
    d = steps.disagreement(s.store)
    return {"profile": profile.name, "arrived": len(arrivals), "verdicts": dict(kinds), "errors": errors,
            "misses": misses, "disagreement": d.rate, "disagreement_reviewed": d.reviewed}  # fmt: skip


def _decide(job: ContinualJob, name: str, s: SiteState, challenger: Path | None, pool: PoolVersion, period: int) -> str:
    """Period 0 adopts the first model; later the site's gate promotes the challenger or keeps the champion. A kept
    champion is then re-checked against the version it replaced on the grown held-out split and rolled back when
    the gate now refuses it (a promoted challenger was just judged on that split)."""
    seed = steps.gate_seed(job.seed, name, period)
    if challenger is not None:
        version = steps.install(s.models_dir, challenger)
        if period == 0:
            steps.adopt(s.models_dir, version, job.continual.radiologist.reviewer)
            return "initial"
        if steps.gate_and_promote(s.models_dir, version, pool, job.continual, seed):
            return "promoted"
    if period > 0 and steps.recheck_or_roll_back(s.models_dir, pool, job.continual, seed):
        return "rolled back"
    return "no round" if challenger is None else "refused"


def _record(
    job: ContinualJob,
    run_dir: Path,
    name: str,
    s: SiteState,
    period: int,
    decision: str,
    tally: dict,
    pool: PoolVersion,
) -> PeriodRecord:
    current = steps.clinical_model(s.models_dir, job.eval)
    assert current is not None
    version, model, eval_cfg = current
    found_by = job.continual.gate.found
    held = score([b for b, _ in predict_findings(model, [a.image for a, _ in s.held_out], eval_cfg)],
                 [t for _, t in s.held_out], eval_cfg.iou, found_by)  # fmt: skip
    val = original_val_truth(s.data_dir)
    original = score([b for b, _ in predict_findings(model, [p for p, _ in val], eval_cfg)],
                     [t for _, t in val], eval_cfg.iou, found_by)  # fmt: skip
    budgets = read_all([job.privacy.ledger_dir])[1] if Path(job.privacy.ledger_dir).exists() else {}
    return PeriodRecord(
        period=period,
        site=name,
        profile=str(tally.get("profile", s.profile.name)),
        decision=decision,
        model_version=version,
        holdout_images=held.images,
        sensitivity=held.sensitivity,
        fp_per_image=held.fp_per_image,
        original_sensitivity=original.sensitivity,
        epsilon=budgets[name].spent if name in budgets else 0.0,
        arrived=int(tally.get("arrived", 0)),
        verdicts=dict(tally.get("verdicts", {})),
        reader_errors=int(tally.get("errors", 0)),
        reader_misses=int(tally.get("misses", 0)),
        pool_version=pool.version,
        disagreement=math.nan if tally.get("disagreement") is None else float(tally["disagreement"]),
        disagreement_reviewed=int(tally.get("disagreement_reviewed", 0)),
        operating_point=eval_cfg.conf,
    )
