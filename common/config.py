"""Typed configuration shared by centralised training, evaluation, federated sites and the server.

Hydra composes the YAML groups in `conf/`; `to_typed` checks the result against these dataclasses, so a misspelt
key or a wrong type fails at start-up with the key's name, and code reads attributes instead of raw dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import conf
from common.errors import ConfigError

T = TypeVar("T")

CONF_DIR = Path(conf.__file__).resolve().parent  # the Hydra groups: the source tree's conf/, or the installed copy

# `${first:${a},b}`: a unless it is null, else b (e.g. a resumed run keeps its own folder).
OmegaConf.register_new_resolver("first", lambda a, b: b if a is None else a, replace=True)


@dataclass
class ModelConfig:
    arch: str = "yolov7-tiny"  # yolov7-tiny | yolov7
    width: float = 1.0
    depth: float = 1.0
    norm: str = "batch"  # batch | group (group for DP-SGD: BatchNorm mixes images)
    names: dict[int, str] = field(default_factory=lambda: {0: "fracture"})
    init: str | None = None  # fracfl weights or a foreign checkpoint to start from


@dataclass
class SynthConfig:
    sites: list[str] = field(default_factory=lambda: ["general_hospital", "trauma_center", "rural_clinic"])
    images_per_site: int = 60
    size: int = 512
    val_fraction: float = 0.25
    dicom: bool = False


@dataclass
class DataConfig:
    path: str = "data/synthetic"
    train_split: str = "train"
    val_split: str = "val"
    cache_images: bool = True  # keep decoded, resized images in memory (small datasets, several epochs)
    synth: SynthConfig | None = None  # when set and `path` is missing, generate synthetic radiographs there


@dataclass
class AugmentConfig:
    hflip: float = 0.5  # probability
    degrees: float = 5.0
    translate: float = 0.1  # fraction of the image size
    scale: float = 0.25  # zoom factor drawn from [1 - scale, 1 + scale]
    brightness: float = 0.2
    contrast: float = 0.2
    gamma: float = 0.2
    noise: float = 0.02  # std of additive Gaussian noise, fraction of full scale
    mosaic: float = 0.0  # probability of a 4-image mosaic: mixes images, so never with DP-SGD

    @property
    def mixes_images(self) -> bool:
        return self.mosaic > 0


@dataclass
class ImbalanceConfig:
    mode: str = "reweight"  # none | oversample | reweight | constant
    positive_fraction: float = 0.5  # share of fracture images (oversample) or of loss weight (reweight)
    positive_weight: float = 3.0  # constant: loss weight of a fracture image, fixed before training
    negative_weight: float = 1.0  # constant: loss weight of an image without a fracture, fixed before training


@dataclass
class PrivacyConfig:
    """Privacy of a federated run. `dp_sgd`: sample-level DP-SGD at each site (the privacy unit is one radiograph);
    `client_dp`: Flower's client-level DP (protects whole sites, never added to the sample-level figure).

    Simulated sites use these values. A real site's limits and ledger come from its own `site.toml`
    (client/site_config.py): the run may ask for lower limits, and a run asking for more is refused there.
    """

    mode: str = "none"  # none | dp_sgd | client_dp
    target_epsilon: float = 8.0  # noise is calibrated so the whole planned run ends here
    ceiling_epsilon: float = 10.0  # hard limit: a round that would cross it is refused
    delta: float | None = None  # None: min(1e-5, 0.1 / N) for a site of N training images
    max_grad_norm: float = 1.0  # per-image gradient clipping (dp_sgd) or per-site update clipping (client_dp)
    max_physical_batch: int = 8  # memory bound: logical Poisson batches are split into chunks of at most this
    grad_sample_mode: str = "lean"  # lean (Opacus hooks minus the unused batch gradient) | hooks | functorch
    ledger_dir: str = "privacy"  # where simulated sites keep their ledgers (a real site's is in its site.toml)
    noise_multiplier: float = 1.0  # client_dp only: server-side noise on the aggregate, in units of the clipping norm
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)  # simulations: per-site budget overrides
    # Research mode: DP noise and Poisson sampling seeded from the job seed, so a simulation can be repeated exactly.
    # The server knows that seed and could remove the noise: a real site refuses it unless its own site.toml says
    # research_mode = true. Logged loudly, recorded in the ledger and card, flagged by `fracfl audit show`.
    reproducible_noise: bool = False
    # dp_sgd's privacy unit: auto (the patient where the site's data names patients, patients.csv from `fracfl
    # ingest`; else the image) | patient | image. A real site whose data names patients refuses `image`.
    unit: str = "auto"


@dataclass
class TrainConfig:
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimiser steps (federated rounds count steps)
    batch_size: int = 8
    imgsz: int = 320
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_steps: int = 0
    warmup_epochs: float | None = None  # warmup length in epochs of this batch size (overrides warmup_steps)
    schedule: str = "cosine"  # constant | cosine | linear (decay to a tenth of lr)
    lr_reference_batch: int | None = None  # lr is scaled by batch_size / this (linear scaling rule); None: as given
    grad_clip: float | None = 10.0  # global norm clip of the mean gradient (not DP clipping)
    freeze: list[str] = field(default_factory=list)  # parts kept fixed: backbone, neck, head
    workers: int | None = None  # data-loader processes; None: from the cores and device (common/engine/loader.py)
    cache_mb: int = 4096  # bound on decoded images kept in memory per process (shared by its loader workers)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16; DP-SGD always fp32
    channels_last: bool | None = None  # None: on CUDA for BatchNorm models; never with DP-SGD
    ema_decay: float | None = 0.9999  # EMA of the weights, used for validation and returned (None: off)
    ema_tau: float = 2000.0  # EMA warm-up in steps: decay = ema_decay * (1 - exp(-steps / ema_tau))
    patience: int | None = None  # centralised: stop after this many epochs without a better validation mAP50
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    imbalance: ImbalanceConfig = field(default_factory=ImbalanceConfig)


@dataclass
class ReplayConfig:
    """How a site's round mixes its original training split with its feedback pool (client/continual/replay.py).
    The run's values are a proposal: a real site's own site.toml `[continual]` table wins."""

    original_share: float = 1.0  # share of the original train images kept, chosen stably by image content hash
    use_pool: bool = True  # also train on the pool's train split when the site has built one


@dataclass
class LocalTrainConfig(TrainConfig):
    """Site-side training in a federated run: `local_epochs` (or `max_steps`) of the shared engine per round."""

    local_epochs: int = 1
    replay: ReplayConfig = field(default_factory=ReplayConfig)


# The TFLite builds of a published model (made by the server's exports, run by `predict` and the listener).
# fp32: Ultralytics' LiteRT export as is. fp16: its weights stored as float16 (half the file, fp32 arithmetic).
# w8a32: int8 weights, float activations (weight-only/dynamic, no calibration). int8: int8 weights and
# activations (static, calibrated on local images): the fast one on CPUs.
TFLITE_VARIANTS = ("fp32", "fp16", "w8a32", "int8")


@dataclass
class EvalConfig:
    conf: float = 0.25  # operating point: score at or above it counts as a finding
    iou: float = 0.5  # IoU for a prediction to match a fracture box
    nms_iou: float = 0.6
    max_det: int = 100
    batch_size: int = 16


@dataclass
class TrainJob:
    """`fracfl train`: centralised training then evaluation on the validation split."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run_dir: str = "runs/train"
    seed: int = 0
    progress: bool = True


def to_typed(cfg: DictConfig | dict[str, Any], schema: type[T]) -> T:
    """Validate a composed config against `schema` and return the dataclass; errors name the offending key."""
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]) if "hydra" in cfg else cfg
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"config key {key}: {e.msg if hasattr(e, 'msg') else e}".splitlines()[0]) from e
