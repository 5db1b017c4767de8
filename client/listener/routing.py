"""Which processor a received object goes to: radiographs (and anything else) to the image pipeline, radiologists'
annotation objects (GSPS, measurement SRs, Key Object Selections) to the PACS feedback, which writes verdicts into
the site's feedback store and sends nothing back."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom

from client.feedback.annotations.apply import ANNOTATION_SOP_CLASSES, PacsFeedback
from client.listener.processor import Processor, Quarantine

log = logging.getLogger("fracfl.listener")


def sop_class_of(path: Path) -> str:
    """The object's SOP Class UID from its file meta or header; '' when unreadable (the pipeline then says why)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # noqa: BLE001 - any damage: the image pipeline quarantines it with its reason code
        return ""
    meta = getattr(ds, "file_meta", None)
    return str((meta.get("MediaStorageSOPClassUID") if meta is not None else None) or ds.get("SOPClassUID", ""))


class AnnotationProcessor:
    """Adapts `PacsFeedback` to the `Processor` protocol: no result files; an object of which nothing could be
    applied is quarantined (kept in failed/ with its reasons, to re-queue once e.g. its image has been analysed)."""

    def __init__(self, feedback: PacsFeedback):
        self.feedback = feedback

    def __call__(self, path: Path) -> list[Path]:
        outcome = self.feedback.apply_file(path)
        if outcome.own_result:
            log.info("ignored %s: fracfl's own result came back from the PACS", outcome.source)
            return []
        log.info(
            "%s: %d verdict(s), %d instance(s) never analysed withdrawn, %d already recorded, %d part(s) set aside%s",
            outcome.source,
            outcome.verdicts,
            outcome.withdrawn,
            outcome.already,
            outcome.set_aside,
            f" ({', '.join(outcome.reasons)})" if outcome.reasons else "",
        )
        if outcome.wholly_set_aside:
            raise Quarantine(
                f"annotation set aside: {', '.join(outcome.reasons)}",
                "nothing in this object could be applied; the feedback store lists why (set aside)",
            )
        return []


class RoutingProcessor:
    """Annotation objects to `annotations` (None: no feedback store configured, so they are quarantined, not fed to
    the image pipeline), everything else to `images`."""

    def __init__(self, images: Processor, annotations: Processor | None):
        self.images = images
        self.annotations = annotations

    def __call__(self, path: Path) -> list[Path]:
        if sop_class_of(path) not in ANNOTATION_SOP_CLASSES:
            return list(self.images(path))
        if self.annotations is None:
            raise Quarantine(
                "annotation without feedback store",
                "a radiologist's annotation object arrived, but feedback_db (and keep_dir) are not set",
            )
        return list(self.annotations(path))
