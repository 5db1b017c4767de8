"""Shapes a viewer draws, as the boxes fracfl compares with its own, and the matching of the two.

Coordinates are (column, row) in the referenced image's pixel space, with 0,0 the top-left corner of the top-left
pixel (DICOM's convention for GSPS PIXEL units and SR SCOORD), the space the model's boxes are stored in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

XYXY = tuple[float, float, float, float]
CONFIRM_IOU = 0.5  # at or above: the annotation confirms the model's box


class NotARegion(ValueError):
    """A graphic that outlines no area (a point, a line, an angle): it cannot confirm, move or add a box."""


def shape_box(graphic_type: str, points: Sequence[float], filled: bool = False) -> XYXY:
    """Bounding box of a GSPS/SR graphic given as flat column,row pairs; NotARegion for points and open lines.

    Accepted: a closed POLYLINE or INTERPOLATED outline of 3+ distinct points (first point repeated at the end, as
    a drawn rectangle is; or filled; or the 4 corners of a rectangle without the repeat), POLYGON (SR, closed by
    definition), CIRCLE (centre, a point on the rim) and ELLIPSE (the ends of the major axis, then of the minor
    axis; it may be rotated)."""
    if len(points) % 2 or not all(math.isfinite(float(v)) for v in points):
        raise ValueError(f"{graphic_type}: graphic data is not a list of finite column,row pairs")
    xy = [(float(points[i]), float(points[i + 1])) for i in range(0, len(points), 2)]
    kind = graphic_type.strip().upper()
    if kind == "CIRCLE":
        if len(xy) != 2:
            raise ValueError(f"CIRCLE needs 2 points (centre, rim), got {len(xy)}")
        (cx, cy), (px, py) = xy
        r = math.hypot(px - cx, py - cy)
        return _checked(kind, (cx - r, cy - r, cx + r, cy + r))
    if kind == "ELLIPSE":
        if len(xy) != 4:
            raise ValueError(f"ELLIPSE needs 4 points (major then minor axis ends), got {len(xy)}")
        (ax1, ay1), (ax2, ay2), (bx1, by1), (bx2, by2) = xy
        cx, cy = (ax1 + ax2) / 2, (ay1 + ay2) / 2
        ax, ay, bx, by = (ax2 - ax1) / 2, (ay2 - ay1) / 2, (bx2 - bx1) / 2, (by2 - by1) / 2
        hx, hy = math.hypot(ax, bx), math.hypot(ay, by)  # half extents of an ellipse with these semi-axes
        return _checked(kind, (cx - hx, cy - hy, cx + hx, cy + hy))
    if kind in ("POLYLINE", "INTERPOLATED", "POLYGON"):
        closed = kind == "POLYGON" or filled or (len(xy) > 3 and xy[0] == xy[-1]) or _rectangle_corners(xy)
        if not closed or len(set(xy)) < 3:
            raise NotARegion(f"{kind} of {len(xy)} points that does not close on itself (a line or an angle)")
        xs, ys = [p[0] for p in xy], [p[1] for p in xy]
        return _checked(kind, (min(xs), min(ys), max(xs), max(ys)))
    if kind in ("POINT", "MULTIPOINT"):
        raise NotARegion(f"{kind} marks no area")
    raise ValueError(f"unknown graphic type {graphic_type!r}")


def _rectangle_corners(xy: list[tuple[float, float]]) -> bool:
    xs, ys = {p[0] for p in xy}, {p[1] for p in xy}
    return len(xy) == 4 and len(xs) == len(ys) == 2 and set(xy) == {(x, y) for x in xs for y in ys}


def _checked(kind: str, box: XYXY) -> XYXY:
    if box[2] <= box[0] or box[3] <= box[1]:
        raise NotARegion(f"{kind} of zero area")
    return box


def iou(a: XYXY, b: XYXY) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class Match:
    """What one annotation says about the model's boxes: `kind` confirm / move (of box `target`) or add (new box)."""

    kind: str
    annotation: int  # index into the annotations
    target: int | None  # index into the model's boxes; None for add
    iou: float


def match(annotations: Sequence[XYXY], boxes: Sequence[XYXY], confirm_iou: float = CONFIRM_IOU) -> list[Match]:
    """One-to-one matching, best overlap first: IoU >= confirm_iou confirms that box, a smaller overlap moves it to
    the annotation, no overlap with a box still free adds one (a fracture the model missed). Boxes no annotation
    reaches get nothing: an unannotated finding is unreviewed, not rejected."""
    pairs = sorted(((iou(a, b), i, j) for i, a in enumerate(annotations) for j, b in enumerate(boxes)), reverse=True)
    taken_a: set[int] = set()
    taken_b: set[int] = set()
    out: list[Match] = []
    for overlap, i, j in pairs:
        if overlap <= 0.0:
            break
        if i in taken_a or j in taken_b:
            continue
        taken_a.add(i)
        taken_b.add(j)
        out.append(Match("confirm" if overlap >= confirm_iou else "move", i, j, overlap))
    out += [Match("add", i, None, 0.0) for i in range(len(annotations)) if i not in taken_a]
    return sorted(out, key=lambda m: m.annotation)
