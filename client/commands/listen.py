"""`fracfl listen [key=value ...]`: run the DICOM listener until SIGTERM (config: conf/listen.yaml)."""

from __future__ import annotations

import argparse
import logging

from omegaconf import DictConfig

from common.hydra_app import register_hydra_command


def _job(cfg: DictConfig) -> None:
    import torch

    from client.listener.config import ListenConfig
    from client.listener.inference import build_processor
    from client.listener.service import ListenerService
    from common.config import to_typed

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    listen = to_typed(cfg, ListenConfig)
    listen.check()
    torch.set_num_threads(listen.threads)
    ListenerService(listen, build_processor(listen)).serve_forever()


def register(sub: argparse._SubParsersAction) -> None:
    register_hydra_command(sub, "listen", "listen", help="DICOM listener: receive radiographs, send results to a PACS",
                           description="A DICOM Storage SCP (C-ECHO, C-STORE): queues received radiographs on disk, "
                           "runs fracture detection and stores GSPS, SR and Secondary Capture results at the "
                           "configured PACS. Arguments are Hydra overrides of conf/listen.yaml.", job=_job)
