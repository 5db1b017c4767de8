"""A radiologist's annotation object in, verdicts on the images fracfl analysed out; what cannot be applied is set
aside in the store with its reason, never dropped. A KOS rejection note on an instance fracfl never analysed (an
original image the site ingested for training) is recorded as a withdrawal instead, so no round trains on it.

The object references the ORIGINAL image (what the PACS shows); the store knows the pseudonymous UID of the copy the
listener kept, so every reference goes through the site's keyed hash (`SiteKeys.uid`). The store receives only
pseudonyms: the object's UID, the images', and the annotating person's (`SiteKeys.person`); names stay in the
object. Boxes are compared in the original image's pixel space, which is also the kept copy's and the stored
boxes' (the pipeline keeps the image at its size and reports boxes in its pixels).

Re-applying an object (a PACS that sends it twice, a retry after a conflict) records nothing twice: each verdict
carries, as its note, the part of the object it came from, and parts already recorded for that object are skipped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType

from pydicom.dataset import Dataset
from pydicom.uid import UID

from client.dicom.deid import SiteKeys
from client.dicom.results import MANUFACTURER
from client.feedback.annotations import gsps, kos, sr
from client.feedback.annotations.geometry import CONFIRM_IOU, match
from client.feedback.annotations.parsed import (
    Annotations,
    ImageStatement,
    Malformed,
    Region,
    Unusable,
)
from client.feedback.store import Box, BoxRow, FeedbackStore, ImageRow
from common.dicom import DicomRejected, redact
from common.dicom.read import open_dataset

PARSERS: dict[str, ModuleType] = {  # SOP class -> module with SOURCE and parse(dataset) -> Annotations
    "1.2.840.10008.5.1.4.1.1.11.1": gsps,  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.88.22": sr,  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33": sr,  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34": sr,  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.35": sr,  # Extensible SR
    "1.2.840.10008.5.1.4.1.1.88.59": kos,  # Key Object Selection Document
}
ANNOTATION_SOP_CLASSES = frozenset(PARSERS)
UNKNOWN_OBSERVER = "OBS-UNKNOWN"  # the reviewer of verdicts from an object that names no person
FIRST_CLASS = 0  # class of a box a radiologist adds: the first configured class name (fracture)


@dataclass
class Outcome:
    """What one object did: counts for the log (no identifiers), and whether it was wholly set aside."""

    source: str = ""
    verdicts: int = 0
    withdrawn: int = 0  # instances fracfl never analysed (e.g. ingested originals) that a KOS withdrew
    set_aside: int = 0
    already: int = 0  # parts recorded by an earlier delivery of the same object
    own_result: bool = False  # fracfl's own GSPS/SR coming back from the PACS: not a radiologist's annotation
    reasons: tuple[str, ...] = ()

    @property
    def wholly_set_aside(self) -> bool:
        return self.set_aside > 0 and self.verdicts == 0 and self.withdrawn == 0 and self.already == 0


class PacsFeedback:
    """Applies annotation objects to the store; `confirm_iou` is the overlap at which a region confirms a box."""

    def __init__(self, store: FeedbackStore, keys: SiteKeys, confirm_iou: float = CONFIRM_IOU):
        self.store = store
        self.keys = keys
        self.confirm_iou = confirm_iou

    def apply_file(self, path: str | Path) -> Outcome:
        """Read and apply one received object. Raises only for transient trouble (the store, a ConflictError with
        a reviewer editing the same box): the caller retries, and parts already recorded are skipped."""
        with redact.handling():
            try:
                ds = open_dataset(path)
            except DicomRejected as e:
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:32] if Path(path).is_file() else "missing"
                return self._set_aside_whole(f"sha256:{digest}", "pacs", f"{e.reason}: not a readable DICOM object")
            return self.apply(ds)

    def apply(self, ds: Dataset) -> Outcome:
        sop_class = str(
            ds.get("SOPClassUID", "")
            or (ds.file_meta.get("MediaStorageSOPClassUID", "") if hasattr(ds, "file_meta") else "")
        )
        kind = PARSERS.get(sop_class)
        if kind is None:
            raise ValueError(f"not an annotation SOP class: {UID(sop_class).name or sop_class}")
        if str(ds.get("Manufacturer", "")) == MANUFACTURER:
            return Outcome(source=kind.SOURCE, own_result=True)
        original_uid = str(ds.get("SOPInstanceUID", "") or "")
        ref = self.keys.uid(original_uid) if original_uid else "unidentified"
        try:
            parsed: Annotations = kind.parse(ds)
        except Malformed as e:
            return self._set_aside_whole(ref, kind.SOURCE, e.detail)
        except (AttributeError, KeyError, TypeError, ValueError, IndexError) as e:  # a damaged value: messages may
            return self._set_aside_whole(ref, kind.SOURCE, f"{type(e).__name__} while reading it")  # quote it
        return self._apply(parsed)

    # -- internals ---------------------------------------------------------------------------------------------
    def _apply(self, parsed: Annotations) -> Outcome:
        ref = self.keys.uid(parsed.object_uid)
        reviewer = self.keys.person(parsed.observer) if parsed.observer else UNKNOWN_OBSERVER
        links = [(ref, "AnnotationSOPInstanceUID", parsed.object_uid)]
        if parsed.observer:
            links.append((reviewer, "ObserverName", parsed.observer))
        self.keys.record(links)  # the site can find the object and the person again; the store cannot
        out = Outcome(source=parsed.source)
        unusable = list(parsed.unusable)
        images = [r.image_uid for r in parsed.regions] + [s.image_uid for s in parsed.statements]
        for image_uid in dict.fromkeys(images):
            regions = [r for r in parsed.regions if r.image_uid == image_uid]
            statements = [s for s in parsed.statements if s.image_uid == image_uid]
            row = self.store.image_by_sop_uid(self.keys.uid(image_uid))
            if row is None and parsed.source == kos.SOURCE:  # an instance never analysed: kept out of training
                self._withdraw(self.keys.uid(image_uid), statements, reviewer, ref, out)
            elif row is None:
                unusable += [
                    Unusable("unknown_image", part, image_uid)
                    for part in [r.where for r in regions] + [s.note for s in statements]
                ]
            else:
                self._apply_image(row, regions, statements, reviewer, ref, parsed.source, out)
        if not parsed.regions and not parsed.statements and not unusable:
            unusable.append(Unusable("no_annotations", "no region, no image verdict"))
        for part in unusable:
            self._keep_aside(ref, parsed.source, part, out)
        return out

    def _apply_image(
        self,
        row: ImageRow,
        regions: list[Region],
        statements: list[ImageStatement],
        reviewer: str,
        ref: str,
        source: str,
        out: Outcome,
    ) -> None:
        recorded = {(v.value or {}).get("note") for v in self.store.verdicts(row.id) if v.source_ref == ref}
        todo = [r for r in regions if r.where not in recorded]
        todo_statements = [s for s in statements if s.note not in recorded]
        out.already += len(regions) - len(todo) + len(statements) - len(todo_statements)
        boxes: list[BoxRow] = [b for b in row.boxes if b.status != "rejected"]
        verdict = partial(self.store.add_verdict, image_id=row.id, reviewer=reviewer, source=source, source_ref=ref)
        for m in match([r.box for r in todo], [_xyxy(b.box) for b in boxes], self.confirm_iou):
            region = todo[m.annotation]
            if m.target is None:
                verdict(kind="add", box=Box(*region.box, cls=FIRST_CLASS), note=region.where)
            else:
                target = boxes[m.target]
                moved = Box(*region.box, cls=target.box.cls) if m.kind == "move" else None
                # expected_version: a reviewer who changed this box meanwhile wins a ConflictError, and the object
                # is retried against the box as it is now
                verdict(kind=m.kind, box_id=target.id, box=moved, note=region.where, expected_version=target.version)
            out.verdicts += 1
        for s in todo_statements:
            verdict(kind=s.kind, note=s.note)
            out.verdicts += 1

    def _withdraw(self, uid: str, statements: list[ImageStatement], reviewer: str, ref: str, out: Outcome) -> None:
        for s in statements:
            if self.store.withdraw(sop_uid=uid, note=s.note, reviewer=reviewer, source_ref=ref):
                out.withdrawn += 1
            else:
                out.already += 1

    def _keep_aside(self, ref: str, source: str, part: Unusable, out: Outcome) -> None:
        detail = part.detail + (f" (image {self.keys.uid(part.image_uid)})" if part.image_uid else "")
        out.set_aside += 1
        out.reasons = tuple(dict.fromkeys([*out.reasons, part.reason]))
        if not any(
            i.object_uid == ref and i.reason == part.reason and i.detail == detail for i in self.store.set_aside_items()
        ):
            self.store.set_aside(object_uid=ref, reason=part.reason, source=source, detail=detail)

    def _set_aside_whole(self, ref: str, source: str, detail: str) -> Outcome:
        out = Outcome(source=source)
        self._keep_aside(ref, source, Unusable("malformed", detail), out)
        return out


def _xyxy(box: Box) -> tuple[float, float, float, float]:
    return (box.x1, box.y1, box.x2, box.y2)
