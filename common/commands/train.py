"""`fracfl train [HYDRA OVERRIDES]`: the centralised baseline on the shared training engine."""

from __future__ import annotations

import argparse
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from common.config import TrainJob, to_typed
from common.hydra_app import register_hydra_command


def _job(cfg: DictConfig) -> None:
    from common.engine.centralised import run_training

    run_training(to_typed(cfg, TrainJob), Path(HydraConfig.get().runtime.output_dir))


def register(sub: argparse._SubParsersAction) -> None:
    register_hydra_command(
        sub,
        "train",
        "train",
        help="centralised training and validation (Hydra overrides, e.g. train.epochs=5 data.path=D)",
        description="Train on one dataset with the engine every site uses. Arguments are Hydra overrides of "
        "conf/train.yaml, e.g. `experiment=train_demo`, `model=yolov7`, `train.epochs=5`, `data.path=/data/fracatlas`; "
        "`--multirun` sweeps, `--cfg job` prints the composed config.",
        job=_job,
    )
