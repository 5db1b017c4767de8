"""What a round leaves behind: its model card, and its commit (strategy state, registry version, resume point).

A commit runs in the background (server/commit.py) while the sites work on the next round; the order of what it
writes is what lets a killed server resume from a complete round (server/checkpoint.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from common.nn.model import ModelSpec
from server.checkpoint import save_checkpoint, save_strategy
from server.config import ServerJob
from server.history import RoundRecord
from server.loop import RoundResult
from server.registry import Registry, describe_model

log = logging.getLogger("fracfl.server")


class ExportQueue(Protocol):
    """Where a published version is queued for its edge builds (server/export/background.py, or nothing)."""

    def submit(self, version: str, final: bool = False) -> bool: ...


def model_version(run_id: str, rnd: int) -> str:
    """The name of a run's global model after round `rnd` (0: its initial model). Known before the round's
    commit is written; the registry version holding it has this run_id and round on its card."""
    return f"{run_id}:r{rnd:04d}"


def _counted(record: RoundRecord) -> dict[str, Any]:
    """An evaluation's metrics with its image count (`n_images`), from which the card's intervals are computed."""
    ok = record.status == "ok" and bool(record.examples)
    return {**record.metrics, "n_images": record.examples} if ok else record.metrics


def round_card(
    job: ServerJob, spec: ModelSpec, result: RoundResult, chash: str, privacy: dict[str, Any] | None
) -> dict[str, Any]:
    """The model card of the global model after `result`'s round (`privacy`: the privacy mode's section)."""
    train = {r.site: r for r in result.records if r.phase == "train"}
    evals = {r.site: r for r in result.records if r.phase == "evaluate"}
    pooled = next((_counted(r) for r in result.records if r.phase == "server"), None)
    sites = [
        {
            "name": s,
            "examples": r.examples,
            "status": _card_status(r.status),
            "metrics": evals[s].metrics if s in evals else {},
        }
        for s, r in sorted(train.items())
    ]
    return {
        "run_id": job.run_id,
        "round": result.round,
        "strategy": {"name": job.strategy.name, "params": dict(job.strategy.params)},
        "config_hash": chash,
        "model": {
            "arch": spec.arch,
            "width": spec.width,
            "depth": spec.depth,
            "norm": spec.norm,
            "description": describe_model(spec.arch),
        },
        "sites": sites,
        "metrics": {"pooled": pooled, "per_site": {s: _counted(r) for s, r in sorted(evals.items())}},
        "privacy": privacy,
        "exports": [],
    }


def _card_status(status: str) -> str:
    if status == "ok":
        return "trained"
    return "budget exhausted" if status.startswith("refused: privacy budget exhausted") else status


def commit_round(
    job: ServerJob,
    spec: ModelSpec,
    registry: Registry,
    exports: ExportQueue,
    rnd: int,
    state: dict[str, np.ndarray],
    strategy_state: bytes,
    card: dict[str, Any],
    chash: str,
) -> None:
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


def adopt_published(registry: Registry, run_id: str, folder: Path, done: int, chash: str) -> bool:
    """A server killed after publishing round done+1 but before its checkpoint pointer moved: that version is the
    round's result (its records and strategy state were written before it), so the checkpoint moves to it instead of
    the round running, and being published, twice."""
    latest = registry.latest(run_id)
    if latest is not None and latest.round == done + 1 and (folder / f"strategy-r{done + 1:04d}.pkl").is_file():
        save_checkpoint(folder, done + 1, None, chash, published=(latest.weights, latest.weights_sha256))
        log.info("round %d was published as %s before the server stopped; resuming after it", done + 1, latest.version)
        return True
    return False
