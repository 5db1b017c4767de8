"""A whole federated run on the server side: prepare it, resume it (or start it), run its rounds, write its outcome,
deliver published versions to the sites.

`run_federation` is what the ServerApp calls, in a simulation and in a deployment alike, and reads as those five
steps. A run folder holds the job, the round records (`records.jsonl`, server/history.py), the checkpoint, the
tracking files, the report (`report/`) and the run's outcome (`outcome.json`); published models go to the
registry. One round: server/loop.py; its card and commit: server/publish.py; the privacy mode: server/privacy.py.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.serverapp import Grid
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import Strategy

from common.data.dataset import DetectionDataset
from common.engine.device import select_device
from common.engine.evaluate import evaluate_model
from common.nn.model import ModelSpec, reusable_model
from common.nn.weights import model_from_config
from common.protocol import FAULT_PLAN, JOB, MODEL_VERSION, SITES_MANIFEST, SiteJob, encode_metrics
from common.records import State, as_tensors
from common.utils.durable import replace_atomic, write_durable
from server.checkpoint import load_checkpoint, restore_strategy, strategy_snapshot
from server.commit import Committer
from server.config import ServerJob
from server.deliver import deliver_after_run
from server.export.background import background_exports
from server.forgetting import forgetting
from server.forgetting import summary as forgetting_summary
from server.history import RoundRecord, append_records, read_records, truncate_after
from server.identity import SiteNames
from server.loop import RoundResult, run_round
from server.privacy import ServerPrivacy, latest_reports, server_privacy
from server.publish import adopt_published, commit_round, model_version, round_card
from server.registry import Registry
from server.report import write_report
from server.requests import RoundRequests, ask_if_configured
from server.strategies import build_strategy
from server.tracking import make_tracker
from server.warm_start import warm_start

log = logging.getLogger("fracfl.server")

RECORDS = "records.jsonl"
OUTCOME = "outcome.json"  # what the run produced: last published version, best round, where the report is
STARTED = "start.json"  # how a new run started: its warm-start version, the sites' round requests, or why it skipped


@dataclass
class Run:
    """What every step of a run reads: the job and what was built from it."""

    job: ServerJob
    spec: ModelSpec
    dir: Path
    config_hash: str
    registry: Registry
    strategy: Strategy  # the federated-learning strategy; its state is what checkpoints keep
    rounds_via: Strategy  # `strategy` as the rounds use it: wrapped where the privacy mode needs it
    privacy: ServerPrivacy
    evaluate: Callable[[State], dict[str, float]] | None  # the server's own evaluation (simulations)
    started: dict[str, Any] = field(default_factory=dict)  # STARTED's content, once `begin` or `resume` has run

    @property
    def records(self) -> Path:
        return self.dir / RECORDS

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoint"


@dataclass
class Start:
    """Where the rounds start: the global state, the first round to run, each site's latest privacy report."""

    state: State
    round: int
    reports: dict[str, dict[str, Any]]


def run_federation(grid: Grid, job: ServerJob, sites_manifest: str | None = None) -> dict[str, Any]:
    """Run (or resume) the job's rounds, then deliver (server/deliver.py); returns the run's outcome (also written
    to `outcome.json`, before the deliveries and again with them)."""
    run, initial = prepare(job)
    names = SiteNames(grid, sites_manifest)  # the name each node's records and answers go under
    start = resume(run) or begin(run, initial, ask_if_configured(grid, job.federation, names, sites_manifest))
    if start.round <= job.federation.rounds:
        run_rounds(grid, run, start, round_config(run, sites_manifest), names)
    outcome = finish(run)
    delivered = deliver_after_run(grid, run.registry, job.federation, outcome["latest"], names, sites_manifest)
    if delivered is not None:  # the sites' copies of published versions: the last one, and those they requested
        outcome["delivered"] = delivered
        _write_outcome(run, outcome)
    return outcome


def prepare(job: ServerJob) -> tuple[Run, State]:
    """The run's folder, model, strategy, privacy mode and registry; and the initial model's state."""
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    m = job.model
    model, spec, _ = model_from_config(m.arch, m.names, m.width, m.depth, m.norm, m.init)
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    strategy = build_strategy(job.strategy, job.federation)
    privacy = server_privacy(job.privacy, run_dir, job.run_id, job.federation.sites, job.federation.fraction_train)
    run = Run(
        job,
        spec,
        run_dir,
        config_hash(job),
        Registry(Path(job.registry)),
        strategy,
        privacy.wrap(strategy),
        privacy,
        _pooled_evaluator(job, spec),
    )
    return run, state


def resume(run: Run) -> Start | None:
    """Continue after the last completed round, when there is one: its state and strategy state, the privacy
    spent before, and the records up to it (those of a round that never completed are dropped)."""
    folder = run.checkpoint
    ckpt = load_checkpoint(folder, run.config_hash)
    if folder.is_dir() and adopt_published(
        run.registry, run.job.run_id, folder, ckpt.round if ckpt else 0, run.config_hash
    ):
        ckpt = load_checkpoint(folder, run.config_hash)
    if ckpt is None:
        return None
    started = run.dir / STARTED
    run.started = json.loads(started.read_text()) if started.is_file() else {}  # never warm-started again
    restore_strategy(run.strategy, ckpt.strategy_state)
    run.privacy.resumed(ckpt.round)
    kept = truncate_after(run.records, ckpt.round)
    log.info("resuming run %s after round %d", run.job.run_id, ckpt.round)
    return Start(ckpt.state, ckpt.round + 1, latest_reports(kept))


def begin(run: Run, state: State, requests: RoundRequests | None = None) -> Start:
    """A new run: a clean history (a run killed before its first checkpoint starts over), from the warm-start
    version where `federation.warm_start` names one, opened with the server's score of that model where it
    evaluates. With `round_requests: require` and no site requesting a round (`requests`), nothing is trained."""
    fed = run.job.federation
    run.records.unlink(missing_ok=True)
    warm = warm_start(run.registry, fed.warm_start, run.spec, run.job.model.init)
    skipped = fed.round_requests == "require" and requests is not None and not requests.requesting
    run.started = {
        "warm_start": warm.version if warm else None,
        "round_requests": requests.summary() if requests is not None else None,
        "skipped": "no site requested a round (federation.round_requests=require)" if skipped else None,
    }
    write_durable(run.dir / STARTED, json.dumps(run.started, indent=1))
    if skipped:
        log.info("run %s: %s; nothing trained", run.job.run_id, run.started["skipped"])
        return Start(state, fed.rounds + 1, {})
    state = warm.state if warm else state
    if run.evaluate is not None:
        append_records(run.records, [RoundRecord.pooled(0, run.evaluate(state))])
    return Start(state, 1, {})


def round_config(run: Run, sites_manifest: str | None) -> dict[str, Any]:
    """The configuration every round sends to the sites (`run_rounds` adds the model version each trains from)."""
    job = run.job
    site_job = SiteJob(
        model=run.spec.to_dict(),
        train=job.train,
        eval=job.eval,
        privacy=job.privacy,
        seed=job.seed,
        run_id=job.run_id,
        rounds=job.federation.rounds,
        min_val_images=job.federation.min_site_val_images,
    )
    config: dict[str, Any] = {JOB: site_job.to_json()}
    if sites_manifest:
        config[SITES_MANIFEST] = sites_manifest
        config[FAULT_PLAN] = json.dumps(dict(job.federation.faults or {}))
    return config


def run_rounds(grid: Grid, run: Run, start: Start, config: dict[str, Any], names: SiteNames) -> None:
    """Rounds `start.round`..N: each one run, recorded, tracked, then committed in the background."""
    job, fed = run.job, run.job.federation
    state, reports = start.state, start.reports
    record = None  # the global state serialised for sending, carried from round to round
    with (
        make_tracker(job.tracking.mode, run.dir, job.tracking.project, job.run_id, asdict(job)) as tracker,
        background_exports(job, run.dir) as exports,
        Committer() as committer,
    ):
        for rnd in range(start.round, fed.rounds + 1):
            t0 = time.perf_counter()
            config[MODEL_VERSION] = model_version(job.run_id, rnd - 1)  # what the sites train from (ledgers)
            try:
                result = run_round(
                    grid,
                    run.rounds_via,
                    rnd,
                    state,
                    config,
                    names,
                    max_update_norm=fed.max_update_norm,
                    timeout=fed.round_timeout,
                    server_eval=run.evaluate,
                    equal_weights=run.privacy.equal_weights,
                    record=record,
                )
            except PrivacyBudgetExhausted as e:  # client-level DP: the next release would cross the ceiling
                log.warning("round %d not run: %s; the run stops here", rnd, e)
                break
            state, record = result.state, result.record
            log.info("round %d/%d: %.2f s for sites and aggregation", rnd, fed.rounds, time.perf_counter() - t0)
            committer.wait()  # round rnd-1 is on disk before round rnd's records are
            reports = _record_round(run, result, reports)
            tracker.log(rnd, _flat_metrics(result.records))
            card = round_card(job, run.spec, result, run.config_hash, run.privacy.card_section(reports))
            card["parent"] = _parent(run)
            committer.submit(
                functools.partial(
                    commit_round,
                    job,
                    run.spec,
                    run.registry,
                    exports,
                    rnd,
                    state,
                    strategy_snapshot(run.strategy),
                    card,
                    run.config_hash,
                )
            )


def _parent(run: Run) -> str | None:
    """The version a round's model was trained from (server/registry/lineage.py): the run's previous published
    version (None: the registry fills it in), or the warm-start version until the run has published one."""
    warm = run.started.get("warm_start")
    return warm if warm and run.registry.latest(run.job.run_id) is None else None


def _record_round(run: Run, result: RoundResult, reports: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The round's records on disk (and in the privacy mode's ledger); returns the sites' latest privacy reports."""
    append_records(run.records, result.records)
    run.privacy.recorded(result.records)
    return latest_reports(result.records, reports)


def finish(run: Run) -> dict[str, Any]:
    """The report, the privacy audit, the best round, and the run's outcome in `outcome.json` (with how the run
    started: its warm-start version, the sites' round requests, why it skipped)."""
    job = run.job
    if run.started.get("skipped"):
        return _outcome(run, {"latest": None, "best": None, "report": None, "privacy_audit": None, "forgetting": None})
    records = read_records(run.records)
    files = write_report(records, run.dir / "report", f"fracfl run {job.run_id}", _config_summary(run))
    audit = run.privacy.audit(run.dir / "report")
    latest = run.registry.latest(job.run_id)
    best = best_round(records)
    if best is not None:
        best["version"] = next(
            (p.version for p in run.registry.list() if p.run_id == job.run_id and p.round == best["round"]), None
        )  # None: that round was not published
        log.info(
            "best round: %d (%s %.4f)%s",
            best["round"],
            best["by"],
            best["map50"],
            f", published as {best['version']}" if best["version"] else ", not published (publish_every)",
        )
    return _outcome(
        run,
        {
            "latest": latest.version if latest else None,
            "best": best,
            "report": str(files["summary_md"]),
            "privacy_audit": str(audit) if audit else None,
            "forgetting": forgetting_summary(forgetting(records)),
        },
    )


def _outcome(run: Run, results: dict[str, Any]) -> dict[str, Any]:
    outcome = {"run_id": run.job.run_id, "run_dir": str(run.dir), "rounds": run.job.federation.rounds, **results}
    outcome.update({k: run.started.get(k) for k in ("warm_start", "round_requests", "skipped")})
    _write_outcome(run, outcome)
    return outcome


def _write_outcome(run: Run, outcome: dict[str, Any]) -> None:
    """Atomically: the file is written twice, and a reader (the schedule, a test) must never see half of it."""
    replace_atomic(run.dir / OUTCOME, json.dumps(outcome, indent=1))


def config_hash(job: ServerJob) -> str:
    """Hash of everything that defines the run's maths (not paths or progress bars)."""
    d = asdict(job)
    for k in ("run_dir", "progress", "registry", "val_data", "sites_manifest", "tracking", "export"):
        d.pop(k, None)
    # Whether the sites were asked first changes no round; a run without a warm start hashes as before these keys
    # existed, so a run folder from an earlier fracfl still resumes.
    d["federation"].pop("round_requests", None)
    d["federation"].pop("answer_requests", None)  # after the rounds: changes none of them
    if d["federation"].get("warm_start") is None:
        d["federation"].pop("warm_start", None)
    if d["train"]["imbalance"].get("negative_weight") == 1.0:  # the weight every run had before the key existed
        d["train"]["imbalance"].pop("negative_weight")
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _model_from_state(spec: ModelSpec, state: State) -> torch.nn.Module:
    model = reusable_model(spec)
    model.load_state_dict(as_tensors(state), strict=True)
    return model


def _pooled_evaluator(job: ServerJob, spec: ModelSpec) -> Callable[[State], dict[str, float]] | None:
    """The server's own evaluation of each global model on the pooled validation set (simulations only)."""
    if not (job.federation.server_eval and job.val_data):
        return None
    data = DetectionDataset.from_data(job.val_data, "val", job.train.imgsz, cache=True)
    device = select_device(job.train.device)

    def evaluate(state: dict[str, np.ndarray]) -> dict[str, float]:
        report = evaluate_model(_model_from_state(spec, state), data, job.eval, device, progress=False)
        return encode_metrics(report, len(data))

    return evaluate


def best_round(records: list[RoundRecord]) -> dict[str, Any] | None:
    """The round whose global model scored best: by the server's pooled validation mAP50 where it evaluates
    (simulations), else by the sites' own validation mAP50 weighted by their validation images. None when no
    round after the initial model was scored."""
    pooled = {r.round: r.metrics.get("map50") for r in records if r.phase == "server" and r.round > 0}
    by = "pooled validation mAP50"
    if not any(v is not None for v in pooled.values()):
        by, pooled = "sites' validation mAP50 (weighted by validation images)", {}
        sums: dict[int, list[float]] = {}
        for r in records:
            m = r.metrics.get("map50")
            if r.phase == "evaluate" and r.ok and m is not None and r.examples:
                acc = sums.setdefault(r.round, [0.0, 0.0])
                acc[0], acc[1] = acc[0] + m * r.examples, acc[1] + r.examples
        pooled = {rnd: a / n for rnd, (a, n) in sums.items() if n > 0}
    scored = {rnd: v for rnd, v in pooled.items() if v is not None}
    if not scored:
        return None
    rnd = max(sorted(scored), key=lambda k: scored[k])  # the earliest of equal scores
    return {"round": rnd, "map50": scored[rnd], "by": by}


def _flat_metrics(records: list[RoundRecord]) -> dict[str, float]:
    """`phase/site/metric` numbers for tracking: site names and numbers only, never paths or patient data."""
    return {
        f"{r.phase}/{r.site}/{k}": float(v)
        for r in records
        for k, v in r.metrics.items()
        if isinstance(v, (int, float))
    }


def _config_summary(run: Run) -> dict[str, object]:
    job = run.job
    return {
        "strategy": job.strategy.name,
        "rounds": job.federation.rounds,
        "sites": job.federation.sites,
        "local epochs": job.train.local_epochs,
        "image size": job.train.imgsz,
        "model": job.model.arch,
        "config hash": run.config_hash,
    }
