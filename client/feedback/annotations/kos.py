"""Key Object Selection documents that withdraw images (rejection notes, PS3.16 CID 7011).

A rejection says the image should not have been used: poor quality, a patient-safety problem, filed under the wrong
patient or order, or past its retention period. None of these says whether there is a fracture, so none becomes a
fracture verdict (no_fracture would teach the model that a possibly fractured bone is normal; rejecting the boxes
would call possibly true findings false). Each becomes a `note` verdict "withdrawn in PACS: <title>" on the image,
from source pacs-kos: the review page shows it, and training must leave such images out. Selections with any
other title (e.g. "Of Interest") are set aside.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from client.feedback.annotations.content import code, evidence, observer, referenced
from client.feedback.annotations.parsed import (
    Annotations,
    ImageStatement,
    Malformed,
    Unusable,
    sop_instance_uid,
)
from client.feedback.store import KOS

SOURCE = KOS
WITHDRAWN = "withdrawn in PACS"
REJECTIONS = {  # CID 7011 Rejection Note Titles (DCM): code -> meaning
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}


def parse(ds: Dataset) -> Annotations:
    out = Annotations(SOURCE, sop_instance_uid(ds), observer(ds))
    titles = ds.get("ConceptNameCodeSequence") or []
    if not titles:
        raise Malformed("a Key Object Selection without a document title")
    value, scheme, meaning = code(titles[0])
    images = [
        uid
        for item in ds.get("ContentSequence", [])
        if item.get("ValueType") in ("IMAGE", "COMPOSITE")
        for uid in referenced(item)
    ] or evidence(ds)
    if scheme != "DCM" or value not in REJECTIONS:
        out.unusable.append(
            Unusable("not_a_rejection", f"title ({value}, {scheme}, {meaning[:64]!r}) on {len(images)} object(s)")
        )
        return out
    note = f"{WITHDRAWN}: {REJECTIONS[value]} (DCM {value})"
    out.statements += [ImageStatement(uid, "note", note) for uid in images]
    return out
