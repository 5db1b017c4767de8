"""The listener's processor: the site's DICOM pipeline (read and validate, infer, write GSPS/SR/SC)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from client.feedback.annotations.apply import PacsFeedback
from client.feedback.record import record_finding
from client.feedback.store import FeedbackStore
from client.listener.config import ListenConfig
from client.listener.processor import Processor, Quarantine
from client.listener.reload import ReloadingProcessor
from client.listener.routing import AnnotationProcessor, RoutingProcessor
from client.models.approval import public_key_of
from client.models.store import ModelStore
from common.errors import ConfigError

log = logging.getLogger("fracfl.listener")


class PipelineProcessor:
    """Adapts `DicomPipeline.process` (which never raises on bad input) to the listener's `Processor` protocol, and
    records each kept image's findings in the site's feedback store when one is configured."""

    def __init__(self, pipeline, feedback: FeedbackStore | None = None):
        self.pipeline = pipeline
        self.feedback = feedback

    def __call__(self, path: Path) -> list[Path]:
        result = self.pipeline.process(path)
        if result.reason is not None:  # the pipeline moved the file to its quarantine folder, beside its reason
            where = f"\nfile: {result.quarantined}" if result.quarantined else ""
            raise Quarantine(result.reason, f"{result.problem or ''}{where}", result.transfer_syntax)
        if self.feedback is not None:
            if result.kept is None or result.prediction is None:
                log.info("not in the feedback store: no de-identified copy was kept (see the result notes)")
            else:  # a failure here is transient (disk, lock): the item is retried and recording is idempotent
                record_finding(
                    self.feedback,
                    kept=result.kept,
                    prediction=result.prediction,
                    model_version=result.model_version,
                    heatmap=result.kept_heatmap,
                    origin="listen",
                )
        return list(result.outputs)


def build_processor(cfg: ListenConfig) -> Processor:
    """Load the model once (or, with models_dir, the store's current version, hot-reloaded between items, at the
    operating point its approval names when the gate chose one for it); results are written under queue_dir/results,
    rejected files under queue_dir/quarantine."""
    from client.dicom.pipeline import DicomPipeline

    if bool(cfg.model) == bool(cfg.models_dir):
        raise ConfigError(
            "config key model: give the model (a weights file or a registry version folder), or models_dir "
            "(the site's model store), not both"
        )
    cfg.check()
    root = Path(cfg.queue_dir)
    feedback = FeedbackStore(cfg.feedback_db) if cfg.feedback_db else None  # opened first: a bad path fails now

    def build(model: str | Path, conf: float | None = None) -> Processor:
        pipeline = DicomPipeline(
            model,
            root / "results",
            root / "quarantine",
            backend=cfg.backend,
            variant=cfg.variant,
            eval_cfg=cfg.eval if conf is None else replace(cfg.eval, conf=conf),
            keep_dir=cfg.keep_dir,
            heatmap=cfg.heatmap,
        )
        # Radiologists' annotations are matched through the same site keys that named the kept copies.
        annotations = (
            AnnotationProcessor(PacsFeedback(feedback, pipeline.deidentify.keys))
            if feedback is not None and pipeline.deidentify is not None
            else None
        )
        return RoutingProcessor(PipelineProcessor(pipeline, feedback), annotations)

    if not cfg.models_dir:
        return build(cfg.model)
    public_key = public_key_of(cfg.approval_key) if cfg.clinical and cfg.approval_key else None
    return ReloadingProcessor(ModelStore(cfg.models_dir), build, public_key)
