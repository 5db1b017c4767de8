"""Radiologists' verdicts in the feedback store -> YOLO labels for the site's training pool.

The rules, for one analysed image (an `images` row with its boxes and verdicts):

- **Withdrawn images are left out.** A `note` verdict from source `pacs-kos` is what a Key Object Selection
  rejection note becomes (client/feedback/annotations/kos.py: "withdrawn in PACS: ..."): the image should not have
  been used (quality, safety, wrong patient or order, retention). It says nothing about a fracture, so the image
  becomes neither a label nor a hard negative; it is simply not trained on, whatever other verdicts it has. Notes
  from any other source are free text and change nothing.
- **Only reviewed images count.** An image needs at least one verdict other than a note.
- **"No fracture"** makes the image a hard negative (an empty label file), except for boxes confirmed, moved or
  added *after* the last "no fracture" verdict: the reviewer changed their mind, and those boxes are the labels.
- Otherwise every box must be decided: an image with a box still `proposed` (nobody confirmed or rejected it, e.g.
  a PACS outline confirmed one box and left another alone) is incompletely reviewed and left out, because an
  undecided model box can neither be trusted as a label nor dropped as a false positive.
- **Confirmed** boxes and **corrected** (moved) boxes, at their corrected geometry, are labels; **added** boxes are
  new positives; **rejected** boxes are dropped. An image whose boxes are all rejected (or that had none, reviewed
  with "no fracture") is a hard negative.
- **Type verdicts** (`set_class`) set the box's class; the store applies them to the box, and a type change alone
  does not decide a proposed box (as on the review page, where the box stays open until confirmed or rejected).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from client.feedback.annotations.kos import SOURCE as KOS_SOURCE
from client.feedback.store import Box, ImageRow, VerdictRow

LABELLED = frozenset({"confirmed", "corrected", "added"})
DECIDING = frozenset({"confirm", "reject", "move", "add"})  # verdicts that settle a box (set_class does not)
POSITIVE, NEGATIVE = "positive", "hard_negative"
SKIPPED = ("unreviewed", "undecided_boxes", "withdrawn")  # why an image is not in the pool


@dataclass(frozen=True)
class Labels:
    """What one image contributes: `kind` is POSITIVE or NEGATIVE with `boxes` (pixel coordinates of the kept
    image, class set), or one of SKIPPED with no boxes. `decided_by` is the id of the last verdict considered."""

    kind: str
    boxes: tuple[Box, ...] = ()
    decided_by: int = 0

    @property
    def usable(self) -> bool:
        return self.kind in (POSITIVE, NEGATIVE)


def withdrawn(verdicts: Sequence[VerdictRow]) -> bool:
    """Whether the PACS withdrew the image (a KOS rejection note, recorded as a `note` from source pacs-kos)."""
    return any(v.kind == "note" and v.source == KOS_SOURCE for v in verdicts)


def image_labels(image: ImageRow, verdicts: Sequence[VerdictRow]) -> Labels:
    """The labels (or the reason for none) of `image` under the module's rules; `verdicts` are the image's own."""
    if withdrawn(verdicts):
        return Labels("withdrawn")
    decisive = [v for v in verdicts if v.kind != "note"]
    if not decisive:
        return Labels("unreviewed")
    last = max(v.id for v in decisive)
    settled: dict[int, int] = {}  # box id -> id of the verdict that last decided it
    for v in decisive:
        if v.kind in DECIDING and v.box_id is not None:
            settled[v.box_id] = max(settled.get(v.box_id, 0), v.id)
    no_fracture = max((v.id for v in decisive if v.kind == "no_fracture"), default=None)
    if no_fracture is not None:
        kept = [b.box for b in image.boxes if b.status in LABELLED and settled.get(b.id, 0) > no_fracture]
    elif any(b.status == "proposed" for b in image.boxes):
        return Labels("undecided_boxes", decided_by=last)
    else:
        kept = [b.box for b in image.boxes if b.status in LABELLED]
    return Labels(POSITIVE if kept else NEGATIVE, tuple(kept), last)


def yolo_rows(boxes: Sequence[Box], width: int, height: int) -> str:
    """Boxes as YOLO label lines (class cx cy w h, normalised), clipped to the image; boxes left empty are dropped."""
    rows = []
    for b in boxes:
        x1, x2 = max(0.0, min(b.x1, width)), max(0.0, min(b.x2, width))
        y1, y2 = max(0.0, min(b.y1, height)), max(0.0, min(b.y2, height))
        if x2 <= x1 or y2 <= y1:
            continue
        cx, cy, w, h = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height
        rows.append(f"{b.cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
    return "".join(rows)
