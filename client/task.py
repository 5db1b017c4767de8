"""What a site does in a round, in plain torch: local training and local validation with the shared engine.

Only weights and aggregate numbers leave this module; images, file names and per-image errors stay at the site.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from functools import lru_cache
from pathlib import Path

import torch

from client.continual.config import SiteReplay
from client.continual.pool import PoolVersion, current_pool, load_version, record_round
from client.continual.replay import training_parts
from client.privacy import Budget, PrivacyRefused, guard_round, privacy_groups
from common.config import AugmentConfig, ReplayConfig, to_typed
from common.data.dataset import DetectionDataset
from common.engine.device import select_device
from common.engine.evaluate import evaluate_model
from common.engine.trainer import train_local
from common.errors import ConfigError
from common.nn.model import reusable_model
from common.privacy.ledger import LedgerError
from common.protocol import NUM_EXAMPLES, SiteJob, encode_metrics

log = logging.getLogger("fracfl.client.task")


def _augment(augment: str | None) -> AugmentConfig | None:
    return to_typed(json.loads(augment), AugmentConfig) if augment else None


@lru_cache(maxsize=8)
def _dataset(data: str, split: str, imgsz: int, augment: str | None, seed: int) -> DetectionDataset:
    """Datasets stay decoded in memory between rounds (simulated sites live in long-running workers)."""
    return DetectionDataset.from_data(data, split, imgsz, augment=_augment(augment), cache=True, seed=seed)


@lru_cache(maxsize=8)
def _training_set(
    data: str, pool: str | None, share: float, imgsz: int, augment: str | None, seed: int, withdrawn: frozenset[str]
) -> tuple[DetectionDataset, list[Path]]:
    """The round's training images (original split at the replay share, plus the pool version `pool`, immutable,
    so its folder is a sound cache key; without the `withdrawn` instances) and the folders naming their patients."""
    version = None if pool is None else load_version(Path(pool))
    parts = training_parts(Path(data), version, ReplayConfig(original_share=share), withdrawn)
    dataset = DetectionDataset.from_specs(parts.parts, imgsz, augment=_augment(augment), cache=True, seed=seed)
    return dataset, parts.roots


def _model(job: SiteJob, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = reusable_model(job.spec)
    model.load_state_dict(state, strict=True)
    return model


def train_site(
    site: str,
    data: Path,
    state: dict[str, torch.Tensor],
    job: SiteJob,
    server_round: int,
    *,
    proximal_mu: float = 0.0,
    budget: Budget | None = None,
    model_version: str = "",
    replay: SiteReplay | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float], dict | None]:
    """Local training for one round; returns new weights, metrics (with NUM_EXAMPLES for weighting) and, with
    DP-SGD, the privacy report. With DP-SGD the round is checked against the site's `budget` first and recorded in
    its ledger before the weights are returned (PrivacyRefused when it must not train).

    The round trains on the original train split plus the site's current feedback pool, mixed by `replay` (the
    site's own setting, client.continual.config.site_replay; default: the job's proposal), without the instances
    the PACS withdrew. The reply says only how many images that was, never what the pool holds."""
    cfg = replace(job.train, epochs=job.train.local_epochs)
    own = replay or SiteReplay(job.train.replay)
    mix = own.mix
    root = data if data.is_dir() else data.parent
    pool = current_pool(root) if mix.use_pool else None
    if pool is not None and own.withdrawn is None:
        log.warning(
            "site %s trains on its feedback pool, but its site.toml [continual] names no feedback_db: instances the "
            "PACS withdrew since pool %s was built cannot be left out",
            site,
            pool.name,
        )
    train, roots = _training_set(
        str(data),
        None if pool is None else str(pool.root),
        mix.original_share,
        cfg.imgsz,
        json.dumps(asdict(cfg.augment)),
        job.seed,
        own.withdrawn or frozenset(),
    )
    seed = job.seed * 100_003 + server_round
    guard = None
    if job.privacy.mode == "dp_sgd":
        if budget is None:
            raise ConfigError("privacy=dp_sgd: the site has no privacy budget configured")
        groups = privacy_groups(site, budget, job.privacy, roots, train.images)
        guard = guard_round(
            site,
            budget,
            job.privacy,
            run_id=job.run_id,
            rnd=server_round,
            planned_rounds=job.rounds,
            images=train.images,
            batch_size=cfg.batch_size,
            local_epochs=cfg.local_epochs,
            max_steps=cfg.max_steps,
            model_version=model_version,
            seed=seed,
            groups=groups,
        )
    model = _model(job, state)
    result = train_local(
        model,
        train,
        cfg,
        seed=seed,
        progress=False,
        description=f"round {server_round}",
        proximal_mu=proximal_mu,
        first_epoch=server_round * max(cfg.local_epochs, 1),
        privacy=guard.hook if guard else None,
    )
    privacy = None
    if guard is not None:
        try:
            privacy = guard.commit(int(result.metrics["steps"]))
        except LedgerError as e:  # not recorded, so not released
            raise PrivacyRefused("privacy ledger cannot be written (see the site's log)") from e
    metrics = {
        k: float(result.metrics[k]) for k in ("loss", "box_loss", "cls_loss", "dfl_loss", "steps", "images_per_s")
    }
    metrics[NUM_EXAMPLES] = float(len(train))
    if pool is not None:
        _note_round(root, pool)
    return result.state, metrics, privacy


def _note_round(root: Path, pool: PoolVersion) -> None:
    """Remember the pool version this round used (`fracfl site pool` shows what changed since); a site folder
    that cannot be written to loses only that note, not the round."""
    try:
        record_round(root, pool)
    except OSError as e:
        log.warning("cannot note the pool version this round used (%s)", e)


def evaluate_site(data: Path, state: dict[str, torch.Tensor], job: SiteJob, min_images: int = 0) -> dict[str, float]:
    """Validation metrics of the global model on the site's own validation split (aggregates only), withheld
    (UNDEFINED) below `min_images` images, the site's own minimum, or the run's where that is higher."""
    val = _dataset(str(data), "val", job.train.imgsz, None, job.seed)
    report = evaluate_model(_model(job, state), val, job.eval, select_device(job.train.device), progress=False)
    return encode_metrics(report, len(val), max(min_images, job.min_val_images))
