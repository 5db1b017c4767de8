"""A whole federated run on the server side: initial model, rounds, records, checkpoints, publishing, tracking.

`run_federation` is what the ServerApp calls, in a simulation and in a deployment alike. A run folder holds the
job, the round records (JSON Lines), the checkpoint and the tracking files; published models go to the registry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.serverapp import Grid
from flwr.serverapp.exception import PrivacyBudgetExhausted

from common.data.dataset import DetectionDataset
from common.engine.device import select_device
from common.engine.evaluate import evaluate_model
from common.nn.model import ModelSpec, reusable_model
from common.nn.weights import model_from_config
from common.protocol import SiteJob, encode_metrics
from common.records import as_tensors
from server.checkpoint import load_checkpoint, restore_strategy, save_checkpoint, save_strategy, strategy_snapshot
from server.commit import Committer
from server.config import ServerJob
from server.export.background import BackgroundExports, background_exports
from server.loop import RoundResult, run_round, server_record
from server.audit import write_audit_report
from server.privacy import (card_section, client_dp_section, client_dp_strategy, latest_reports, replay_releases,
                            summarise)
from server.registry import Registry, describe_model
from server.strategies import build_strategy
from server.tracking import make_tracker
from server.report import append_records, read_records, write_report

log = logging.getLogger("fracfl.server")


def config_hash(job: ServerJob) -> str:
    """Hash of everything that defines the run's maths (not paths or progress bars)."""
    d = asdict(job)
    for k in ("run_dir", "progress", "registry", "val_data", "sites_manifest", "tracking", "export"):
        d.pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _model_from_state(spec: ModelSpec, state: dict[str, np.ndarray]) -> torch.nn.Module:
    model = reusable_model(spec)
    model.load_state_dict(as_tensors(state), strict=True)
    return model


def _pooled_evaluator(job: ServerJob, spec: ModelSpec):
    """The server's own evaluation of each global model on the pooled validation set (simulations only)."""
    if not (job.federation.server_eval and job.val_data):
        return None
    data = DetectionDataset.from_data(job.val_data, "val", job.train.imgsz, cache=True)
    device = select_device(job.train.device)

    def evaluate(state: dict[str, np.ndarray]) -> dict[str, float]:
        report = evaluate_model(_model_from_state(spec, state), data, job.eval, device, progress=False)
        return encode_metrics(report, len(data))

    return evaluate


def _card(job: ServerJob, spec: ModelSpec, result: RoundResult, chash: str,
          privacy: dict[str, dict[str, Any]], strategy: Any = None) -> dict[str, Any]:
    train = {r["site"]: r for r in result.records if r["phase"] == "train"}
    evals = {r["site"]: r for r in result.records if r["phase"] == "evaluate"}
    pooled = next((_counted(r) for r in result.records if r["phase"] == "server"), None)
    sites = [{"name": s, "examples": r["examples"], "status": _card_status(r["status"]),
              "metrics": evals.get(s, {}).get("metrics", {})}
             for s, r in sorted(train.items())]
    return {
        "run_id": job.run_id, "round": result.round,
        "strategy": {"name": job.strategy.name, "params": dict(job.strategy.params)}, "config_hash": chash,
        "model": {"arch": spec.arch, "width": spec.width, "depth": spec.depth, "norm": spec.norm,
                  "description": describe_model(spec.arch)},
        "sites": sites,
        "metrics": {"pooled": pooled, "per_site": {s: _counted(r) for s, r in sorted(evals.items())}},
        "privacy": (client_dp_section(strategy, job.privacy) if job.privacy.mode == "client_dp"
                    else card_section(job.privacy, privacy)), "exports": [],
    }


def _counted(record: dict[str, Any]) -> dict[str, Any]:
    """An evaluation's metrics with its image count (`n_images`), from which the card's intervals are computed."""
    ok = record["status"] == "ok" and record["examples"] > 0
    return {**record["metrics"], "n_images": record["examples"]} if ok else record["metrics"]


def _card_status(status: str) -> str:
    if status == "ok":
        return "trained"
    return "budget exhausted" if status.startswith("refused: privacy budget exhausted") else status


def run_federation(grid: Grid, job: ServerJob, sites_manifest: str | None = None) -> dict[str, Any]:
    """Run (or resume) the job's rounds; returns a summary with the last published version."""
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    m = job.model
    model, spec, _ = model_from_config(m.arch, m.names, m.width, m.depth, m.norm, m.init)
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    strategy = build_strategy(job.strategy, job.federation)
    if job.privacy.mode == "client_dp":
        strategy = client_dp_strategy(strategy, job.privacy, job.federation.sites, job.federation.fraction_train)
    registry = Registry(Path(job.registry))
    records_path = run_dir / "records.jsonl"
    chash = config_hash(job)

    start, reports = 1, {}
    folder = run_dir / "checkpoint"
    ckpt = load_checkpoint(folder, chash)
    if folder.is_dir() and _adopt_published(registry, job.run_id, folder, ckpt.round if ckpt else 0, chash):
        ckpt = load_checkpoint(folder, chash)
    if ckpt is not None:
        state, start = ckpt.state, ckpt.round + 1
        restore_strategy(getattr(strategy, "strategy", strategy), ckpt.strategy_state)
        if job.privacy.mode == "client_dp":
            replay_releases(strategy, ckpt.round)
        kept = [r for r in read_records(records_path, missing_ok=True) if r["round"] <= ckpt.round]
        tmp = records_path.with_name(records_path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        append_records(tmp, kept)  # drop records of a round that never completed; swap in atomically
        tmp.replace(records_path)
        log.info("resuming run %s after round %d", job.run_id, ckpt.round)
        reports = latest_reports(kept)

    evaluate = _pooled_evaluator(job, spec)
    if start == 1:
        records_path.unlink(missing_ok=True)  # a run killed before its first checkpoint starts over cleanly
        if evaluate is not None:
            append_records(records_path, [server_record(0, evaluate(state))])

    site_job = SiteJob(model=spec.to_dict(), train=job.train, eval=job.eval, privacy=job.privacy, seed=job.seed,
                       run_id=job.run_id, rounds=job.federation.rounds)
    config: dict[str, Any] = {"job": site_job.to_json()}
    if sites_manifest:
        config["sites-manifest"] = sites_manifest
        config["faults"] = json.dumps(dict(job.federation.faults or {}))
    names: dict[int, str] = {}
    record = None  # the global state serialised for sending, carried from round to round
    with make_tracker(job.tracking.mode, run_dir, job.tracking.project, job.run_id, asdict(job)) as tracker, \
            background_exports(job, run_dir) as exports, Committer() as committer:
        for rnd in range(start, job.federation.rounds + 1):
            t0 = time.perf_counter()
            config["model-version"] = model_version(job.run_id, rnd - 1)  # what the sites train from (ledgers)
            try:
                result = run_round(grid, strategy, rnd, state, config, names,
                                   max_update_norm=job.federation.max_update_norm,
                                   timeout=job.federation.round_timeout, server_eval=evaluate,
                                   equal_weights=job.privacy.mode == "client_dp", record=record)
            except PrivacyBudgetExhausted as e:  # client-level DP: the next release would cross the ceiling
                log.warning("round %d not run: %s; the run stops here", rnd, e)
                break
            state, record = result.state, result.record
            log.info("round %d/%d: %.2f s for sites and aggregation", rnd, job.federation.rounds,
                     time.perf_counter() - t0)
            committer.wait()  # round rnd-1 is on disk before round rnd's records are
            append_records(records_path, result.records)
            reports = latest_reports(result.records, reports)
            if job.privacy.mode == "dp_sgd":
                summarise(run_dir / "privacy-ledger.jsonl", job.run_id, result.records)
            tracker.log(rnd, _flat_metrics(result.records))
            card = _card(job, spec, result, chash, reports, strategy)
            committer.submit(functools.partial(_commit, job, spec, registry, exports, rnd, state,
                                               strategy_snapshot(strategy), card, chash))
    records = read_records(records_path)
    files = write_report(records, run_dir / "report", f"fracfl run {job.run_id}", _summary(job, chash))
    if job.privacy.mode == "dp_sgd" and (run_dir / "privacy-ledger.jsonl").exists():  # no file: no site reported
        files["privacy_audit"] = write_audit_report([run_dir / "privacy-ledger.jsonl"],
                                                    run_dir / "report" / "privacy-audit.html")
    latest = registry.latest(job.run_id)
    best = best_round(records)
    if best is not None:
        best["version"] = next((p.version for p in registry.list() if p.run_id == job.run_id
                                and p.round == best["round"]), None)  # None: that round was not published
        log.info("best round: %d (%s %.4f)%s", best["round"], best["by"], best["map50"],
                 f", published as {best['version']}" if best["version"] else ", not published (publish_every)")
    summary = {"run_id": job.run_id, "run_dir": str(run_dir), "rounds": job.federation.rounds,
               "latest": latest.version if latest else None, "best": best,
               "report": str(files.get("summary_md", "")),
               "privacy_audit": str(files.get("privacy_audit", "")) or None}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def best_round(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The round whose global model scored best: by the server's pooled validation mAP50 where it evaluates
    (simulations), else by the sites' own validation mAP50 weighted by their validation images. None when no
    round after the initial model was scored."""
    pooled = {r["round"]: r["metrics"].get("map50") for r in records if r["phase"] == "server" and r["round"] > 0}
    by = "pooled validation mAP50"
    if not any(v is not None for v in pooled.values()):
        by, pooled = "sites' validation mAP50 (weighted by validation images)", {}
        sums: dict[int, list[float]] = {}
        for r in records:
            m = r["metrics"].get("map50")
            if r["phase"] == "evaluate" and r["status"] == "ok" and m is not None and r["examples"] > 0:
                acc = sums.setdefault(r["round"], [0.0, 0.0])
                acc[0], acc[1] = acc[0] + m * r["examples"], acc[1] + r["examples"]
        pooled = {rnd: a / n for rnd, (a, n) in sums.items() if n > 0}
    scored = {rnd: v for rnd, v in pooled.items() if v is not None}
    if not scored:
        return None
    rnd = max(sorted(scored), key=lambda k: scored[k])  # the earliest of equal scores
    return {"round": rnd, "map50": scored[rnd], "by": by}


def model_version(run_id: str, rnd: int) -> str:
    """The name of a run's global model after round `rnd` (0: its initial model). Known before the round's
    commit is written; the registry version holding it has this run_id and round on its card."""
    return f"{run_id}:r{rnd:04d}"


def _commit(job: ServerJob, spec: ModelSpec, registry: Registry, exports: BackgroundExports, rnd: int,
            state: dict[str, np.ndarray], strategy_state: bytes, card: dict[str, Any], chash: str) -> None:
    """Round `rnd` on disk: strategy state, registry version (when a publication is due), then the resume point."""
    t0 = time.perf_counter()
    folder = Path(job.run_dir) / "checkpoint"
    save_strategy(folder, rnd, strategy_state)
    published, ref = "", None
    if rnd % job.federation.publish_every == 0 or rnd == job.federation.rounds:
        pub = registry.publish(state, spec, card, {"imgsz": job.train.imgsz, "run_id": job.run_id, "round": rnd})
        published, ref = f", published as {pub.version}", (pub.weights, pub.weights_sha256)
        if exports.submit(pub.version, final=rnd == job.federation.rounds):
            published += " (edge export queued)"
    save_checkpoint(folder, rnd, None if ref else state, chash, published=ref)
    log.info("round %d/%d: %.2f s to commit%s", rnd, job.federation.rounds, time.perf_counter() - t0, published)


def _adopt_published(registry: Registry, run_id: str, folder: Path, done: int, chash: str) -> bool:
    """A server killed after publishing round done+1 but before its checkpoint pointer moved: that version is the
    round's result (its records and strategy state were written before it), so the checkpoint moves to it instead of
    the round running, and being published, twice."""
    latest = registry.latest(run_id)
    if latest is not None and latest.round == done + 1 and (folder / f"strategy-r{done + 1:04d}.pkl").is_file():
        save_checkpoint(folder, done + 1, None, chash, published=(latest.weights, latest.weights_sha256))
        log.info("round %d was published as %s before the server stopped; resuming after it", done + 1, latest.version)
        return True
    return False


def _flat_metrics(records: list[dict]) -> dict[str, float]:
    """`phase/site/metric` numbers for tracking: site names and numbers only, never paths or patient data."""
    out = {}
    for r in records:
        for k, v in r["metrics"].items():
            if isinstance(v, (int, float)):
                out[f"{r['phase']}/{r['site']}/{k}"] = float(v)
    return out


def _summary(job: ServerJob, chash: str) -> dict[str, object]:
    return {"strategy": job.strategy.name, "rounds": job.federation.rounds, "sites": job.federation.sites,
            "local epochs": job.train.local_epochs, "image size": job.train.imgsz, "model": job.model.arch,
            "config hash": chash}
