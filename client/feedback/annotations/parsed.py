"""What a radiologist's annotation object says, read out of it before anything is looked up or stored.

Parsers (gsps, sr, kos) turn a dataset into `Annotations`; `apply` maps the image references to the store's
pseudonymous images and writes verdicts. Values here are still the object's own (original UIDs, the observer's
name): they are pseudonymised by `apply` and never logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from client.feedback.annotations.geometry import XYXY

# Why an annotation, or a part of one, was set aside (store.set_aside reasons; docs/dicom-listener.md lists them).
SET_ASIDE_REASONS = {
    "malformed": "the object cannot be read or lacks what its kind requires",
    "unknown_image": "it references an image fracfl never analysed (or analysed before the feedback store existed)",
    "not_a_region": "a point, line or angle: it outlines no area, so it cannot confirm, move or add a box",
    "bad_graphic": "graphic data that does not describe a shape of its type",
    "unsupported_graphic": "a compound graphic, 3D coordinates, or display-relative coordinates under a rotation",
    "no_image_reference": "a region that names no image",
    "not_a_fracture": "an SR finding coded as something other than a fracture",
    "not_a_rejection": "a Key Object Selection whose title is not a rejection (CID 7011)",
    "no_annotations": "the object holds nothing fracfl can use (e.g. a presentation state with only window settings)",
}


class Malformed(Exception):
    """The whole object is unusable; `detail` must not quote its values (it is stored and logged)."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class Region:
    """An outline around a fracture on one image: its bounding box in that image's pixel space."""

    image_uid: str  # the ORIGINAL SOP Instance UID, as the PACS shows the image
    box: XYXY
    where: str  # which part of the object, e.g. "annotation 1 graphic 2 (ELLIPSE)"


@dataclass(frozen=True)
class ImageStatement:
    """A verdict on a whole image (no box): `kind` is a store verdict kind (no_fracture, note)."""

    image_uid: str
    kind: str
    note: str


@dataclass(frozen=True)
class Unusable:
    """A part that cannot be applied: set aside with `reason` (SET_ASIDE_REASONS), never dropped."""

    reason: str
    detail: str
    image_uid: str | None = None  # original UID; pseudonymised before it is stored

    def __post_init__(self) -> None:
        assert self.reason in SET_ASIDE_REASONS, self.reason


@dataclass
class Annotations:
    source: str  # store verdict source: pacs-gsps, pacs-sr, pacs-kos
    object_uid: str  # original SOP Instance UID of the annotation object
    observer: str  # the person's name as written in the object ('' when it names nobody)
    regions: list[Region] = field(default_factory=list)
    statements: list[ImageStatement] = field(default_factory=list)
    unusable: list[Unusable] = field(default_factory=list)


def person_name(*values: object) -> str:
    """The first non-empty person name among `values`, components normalised ('smith^ john^' -> 'SMITH^JOHN') so
    one radiologist gets one pseudonym whatever the viewer's spelling."""
    for value in values:
        parts = [p.strip().upper() for p in str(value or "").split("^")]
        while parts and not parts[-1]:
            parts.pop()
        if parts:
            return "^".join(parts)
    return ""


def sop_instance_uid(ds: Dataset) -> str:
    uid = str(ds.get("SOPInstanceUID", "") or "").strip()
    if not uid:
        raise Malformed("no SOP Instance UID")
    return uid
