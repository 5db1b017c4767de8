"""The listener's processor: the site's DICOM pipeline (read and validate, infer, write GSPS/SR/SC)."""

from __future__ import annotations

from pathlib import Path

from client.listener.config import ListenConfig
from client.listener.processor import Processor, Quarantine
from common.errors import ConfigError


class PipelineProcessor:
    """Adapts `DicomPipeline.process` (which never raises on bad input) to the listener's `Processor` protocol."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def __call__(self, path: Path) -> list[Path]:
        result = self.pipeline.process(path)
        if result.reason is not None:  # the pipeline moved the file to its quarantine folder, beside its reason
            where = f"\nfile: {result.quarantined}" if result.quarantined else ""
            raise Quarantine(result.reason, f"{result.problem or ''}{where}", result.transfer_syntax)
        return list(result.outputs)


def build_processor(cfg: ListenConfig) -> Processor:
    """Load the model once; results are written under queue_dir/results, rejected files under queue_dir/quarantine."""
    from client.dicom.pipeline import DicomPipeline

    if not cfg.model:
        raise ConfigError("config key model: give the model (a weights file or a registry version folder)")
    root = Path(cfg.queue_dir)
    return PipelineProcessor(DicomPipeline(cfg.model, root / "results", root / "quarantine", backend=cfg.backend,
                                           variant=cfg.variant, eval_cfg=cfg.eval, keep_dir=cfg.keep_dir, heatmap=cfg.heatmap))
