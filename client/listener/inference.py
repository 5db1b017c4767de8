"""The listener's processor: the DICOM pipeline (read, de-identify for the model, infer, write GSPS/SR/SC)."""

from __future__ import annotations

from pathlib import Path

from client.listener.config import ListenConfig
from client.listener.processor import Processor, Quarantine
from common.errors import ConfigError


class PipelineProcessor:
    """Adapts `DicomPipeline.process` (never raises on bad input) to the listener's `Processor` protocol."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def __call__(self, path: Path) -> list[Path]:
        result = self.pipeline.process(path)
        if result.quarantined is not None:
            raise Quarantine(result.reason or "rejected by the DICOM pipeline")
        return list(result.outputs)


def build_processor(cfg: ListenConfig) -> Processor:
    from client.dicom.pipeline import DicomPipeline

    if not cfg.weights:
        raise ConfigError("config key weights: give the model (a weights file or a registry version folder)")
    root = Path(cfg.queue_dir)
    return PipelineProcessor(DicomPipeline(cfg.weights, root / "results", root / "quarantine", backend=cfg.backend))
