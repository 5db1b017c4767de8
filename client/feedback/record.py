"""Findings into the feedback store, from `fracfl listen` and `fracfl predict --feedback-db`.

Only the de-identified copy is ever referenced: its pseudonymous SOP Instance UID, patient id and body part are read
back from the copy's own header, so nothing from the original (which holds patient data) reaches the store.
"""

from __future__ import annotations

from pathlib import Path

import pydicom

from client.feedback.store import Box, FeedbackStore
from client.inference.analyse import Analysis
from common.dicom import DicomImage
from common.inference import Prediction


def record_finding(
    store: FeedbackStore, *, kept: Path, prediction: Prediction, model_version: str, heatmap: Path | None, origin: str
) -> int:
    """Record what the reader was shown for one kept image (boxes at the operating point); returns the image id."""
    ds = pydicom.dcmread(kept, stop_before_pixels=True)
    if not store.class_names() and prediction.names:
        store.set_class_names([prediction.names.get(k, str(k)) for k in range(max(prediction.names) + 1)])
    return store.record_image(
        sop_uid=str(ds.SOPInstanceUID),
        image_ref=str(kept),
        model_version=model_version,
        probability=prediction.probability,
        boxes=finding_boxes(prediction),
        heatmap_ref=str(heatmap) if heatmap is not None else None,
        body_part=str(ds.get("BodyPartExamined", "")) or None,
        patient=str(ds.get("PatientID", "")) or None,
        origin=origin,
    )


def finding_boxes(prediction: Prediction) -> list[Box]:
    """The boxes a reader is shown (at the operating point, highest score first), as the store keeps them."""
    return [
        Box(x1, y1, x2, y2, cls=f["class_id"], score=f["score"])
        for f in prediction.findings()
        for x1, y1, x2, y2 in [f["box"]]
        if x1 < x2 and y1 < y2
    ]


class PredictFeedback:
    """What `fracfl predict --feedback-db` adds for each DICOM input: a de-identified copy kept the way the listener
    keeps it, and its findings recorded. Other inputs have no header to de-identify, so they are not recorded."""

    def __init__(self, db: str | Path, keep_dir: str | Path, burned_in: str = "refuse"):
        from client.dicom.deid import Deidentifier, SiteKeys

        self.store = FeedbackStore(db)
        self.keep_dir = Path(keep_dir)
        self.deidentify = Deidentifier(SiteKeys(self.keep_dir.parent / "deid"), burned_in)

    def __call__(self, image: DicomImage | None, analysis: Analysis, model_version: str) -> str:
        """One line for the file's record: what was recorded, or why nothing was."""
        from client.dicom.deid import BurnedInAnnotation
        from client.dicom.pipeline import keep_copy

        if image is None:
            return "not recorded: only DICOM inputs are de-identified and kept"
        try:
            kept, heatmap = keep_copy(self.deidentify, self.keep_dir, image.dataset, analysis)
        except BurnedInAnnotation as e:
            return f"not recorded: {e}"
        image_id = record_finding(
            self.store,
            kept=kept,
            prediction=analysis.prediction,
            model_version=model_version,
            heatmap=heatmap,
            origin="predict",
        )
        return f"recorded as feedback image {image_id}"
