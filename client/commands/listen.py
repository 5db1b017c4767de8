"""`fracfl listen [key=value ...]`: run the DICOM listener until SIGTERM (config: conf/listen.yaml)."""

from __future__ import annotations

import argparse
import logging
from functools import partial
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf, open_dict

from common.commands.options import deprecated
from common.config import to_typed
from common.hydra_app import register_hydra_command, run_hydra

if TYPE_CHECKING:
    from client.listener.config import ListenConfig

MODEL_KEYS = ("model", "weights")  # `weights` is the old name of `model`, accepted with a deprecation line


def take_model(overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    """Split `model=...` (and the old `weights=...`) off the overrides.

    `model` also names a Hydra config group (conf/model/, the architecture in train/simulate), so Hydra would read
    `model=registry/v0007` as choosing conf/model/registry/v0007.yaml; the value is applied after composition instead.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    rest, taken = [], {}
    for text in overrides:
        if text.partition("=")[0] in MODEL_KEYS:
            override = OverridesParser.create().parse_override(text)  # quoting as Hydra reads it
            taken[override.key_or_group] = str(override.value())
        else:
            rest.append(text)
    return rest, taken


def listen_config(cfg: DictConfig, taken: dict[str, str]) -> ListenConfig:
    """The typed config from the composed one plus `take_model`'s values; the old key `weights` still works."""
    from client.listener.config import ListenConfig

    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.update(taken)
        if "weights" in cfg:
            deprecated("config key weights", "model")
            old = cfg.pop("weights")
            if OmegaConf.is_missing(cfg, "model") or not cfg.model:  # both given: model wins
                cfg.model = old
    return to_typed(cfg, ListenConfig)


def _job(cfg: DictConfig, taken: dict[str, str]) -> None:
    import torch

    from client.listener.inference import build_processor
    from client.listener.service import ListenerService

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    listen = listen_config(cfg, taken)
    listen.check()
    torch.set_num_threads(listen.threads)
    ListenerService(listen, build_processor(listen)).serve_forever()


def _run(a: argparse.Namespace) -> int:
    overrides, taken = take_model(a.overrides)
    return run_hydra("listen", overrides, partial(_job, taken=taken), "listen")


def register(sub: argparse._SubParsersAction) -> None:
    register_hydra_command(
        sub,
        "listen",
        "listen",
        help="DICOM listener: receive radiographs, send results to a PACS",
        description="A DICOM Storage SCP (C-ECHO, C-STORE): queues received radiographs on disk, "
        "runs fracture detection and stores GSPS, SR and Secondary Capture results at the "
        "configured PACS. Arguments are Hydra overrides of conf/listen.yaml, e.g. "
        "`model=registry/v0007 port=104`.",
        job=partial(_job, taken={}),
    )
    sub.choices["listen"].set_defaults(func=_run)  # takes `model=` out of the overrides before Hydra sees them
