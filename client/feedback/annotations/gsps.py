"""Grayscale Softcopy Presentation State: the outlines a radiologist drew in a viewer (PS3.3 C.10.5).

Every closed graphic object (rectangle drawn as a closed polyline, polygon, circle, ellipse) is one region on each
image its annotation item references (or, when the item names none, on every image of the presentation state).
Text objects carry no region and are ignored; points, lines and compound graphics are set aside with a reason.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from client.feedback.annotations.geometry import XYXY, NotARegion, shape_box
from client.feedback.annotations.parsed import (
    Annotations,
    Malformed,
    Region,
    Unusable,
    person_name,
    sop_instance_uid,
)

SOURCE = "pacs-gsps"


def parse(ds: Dataset) -> Annotations:
    out = Annotations(SOURCE, sop_instance_uid(ds), person_name(ds.get("ContentCreatorName"), ds.get("OperatorsName")))
    all_images = [uid for series in ds.get("ReferencedSeriesSequence", []) for uid in _image_uids(series)]
    areas = _displayed_areas(ds, all_images)
    transformed = int(ds.get("ImageRotation", 0) or 0) % 360 != 0 or str(ds.get("ImageHorizontalFlip", "N")) == "Y"
    for n, item in enumerate(ds.get("GraphicAnnotationSequence", []), 1):
        images = _image_uids(item) or all_images
        for g, obj in enumerate(item.get("GraphicObjectSequence", []), 1):
            kind = str(obj.get("GraphicType", "")).strip().upper()
            where = f"annotation {n} graphic {g} ({kind or 'no type'})"
            if not images:
                out.unusable.append(Unusable("no_image_reference", where))
            display = str(obj.get("GraphicAnnotationUnits", "PIXEL")).strip().upper() == "DISPLAY"
            for image in images:
                if display and (transformed or image not in areas):
                    why = "under a rotation or flip" if transformed else "without a displayed area for the image"
                    out.unusable.append(Unusable("unsupported_graphic", f"{where}: DISPLAY units {why}", image))
                    continue
                try:
                    if int(obj.get("GraphicDimensions", 2) or 2) != 2:
                        raise ValueError("graphic dimensions other than 2")
                    points = [float(v) for v in obj.get("GraphicData") or []]
                    box = shape_box(
                        kind,
                        _to_pixels(points, areas[image]) if display else points,
                        str(obj.get("GraphicFilled", "N")) == "Y",
                    )
                except NotARegion as e:
                    out.unusable.append(Unusable("not_a_region", f"{where}: {e}"))
                    break
                except (TypeError, ValueError) as e:
                    out.unusable.append(Unusable("bad_graphic", f"{where}: {e}"))
                    break
                out.regions.append(Region(image, box, where))
        for c, _ in enumerate(item.get("CompoundGraphicSequence", []), 1):
            out.unusable.append(Unusable("unsupported_graphic", f"annotation {n} compound graphic {c}"))
    return out


def _image_uids(item: Dataset) -> list[str]:
    uids = [
        str(ref.get("ReferencedSOPInstanceUID", "") or "").strip() for ref in item.get("ReferencedImageSequence", [])
    ]
    if not all(uids):
        raise Malformed("an image reference without a Referenced SOP Instance UID")
    return uids


def _displayed_areas(ds: Dataset, images: list[str]) -> dict[str, XYXY]:
    """Image UID -> its displayed area in pixel space (corners are 1-based pixel indices, inclusive)."""
    areas: dict[str, XYXY] = {}
    for item in ds.get("DisplayedAreaSelectionSequence", []):
        try:
            (c1, r1), (c2, r2) = item.DisplayedAreaTopLeftHandCorner, item.DisplayedAreaBottomRightHandCorner
        except (AttributeError, ValueError):
            raise Malformed("a displayed area without both corners") from None
        for uid in _image_uids(item) or images:
            areas[uid] = (float(c1) - 1, float(r1) - 1, float(c2), float(r2))
    return areas


def _to_pixels(points: list[float], area: XYXY) -> list[float]:
    """DISPLAY units (0..1 across the displayed area) to pixels, for a presentation without rotation or flip; points
    are converted before the shape is measured, as a circle on a non-square area is round in pixels."""
    w, h = area[2] - area[0], area[3] - area[1]
    return [area[i % 2] + v * (w if i % 2 == 0 else h) for i, v in enumerate(points)]
