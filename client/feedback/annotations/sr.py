"""Measurement SRs (TID 1500 and other Enhanced/Comprehensive SR trees): image regions around fractures.

Each SCOORD item (an outline SELECTED FROM an image) is a region; the Finding (DCM 121071) coded beside it in the
same container says what it outlines: a fracture code or none at all counts as a fracture; another finding is set
aside. A container whose finding is a fracture with a qualitative evaluation valued Absent (SCT 272519000 or
2667000) and no outline is a "no fracture" verdict on its images (those it references, else all in the evidence).
SCOORD3D outlines are set aside: a radiograph has no patient coordinate system to map them into pixels.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from client.feedback.annotations.content import (
    coded_value,
    concept,
    evidence,
    observer,
    referenced,
)
from client.feedback.annotations.geometry import NotARegion, shape_box
from client.feedback.annotations.parsed import (
    Annotations,
    ImageStatement,
    Malformed,
    Region,
    Unusable,
    sop_instance_uid,
)

SOURCE = "pacs-sr"
FINDING = ("121071", "DCM")
FRACTURE_CODES = frozenset({("125605004", "SCT"), ("72704001", "SCT")})  # fracture of bone; fracture
ABSENT = frozenset({("272519000", "SCT"), ("2667000", "SCT")})  # Absent (pydicom's code; the older one)


def parse(ds: Dataset) -> Annotations:
    out = Annotations(SOURCE, sop_instance_uid(ds), observer(ds))
    if "ContentSequence" not in ds:
        raise Malformed("a structured report without content")
    _walk(ds, out, evidence(ds), "report")
    return out


def _walk(container: Dataset, out: Annotations, all_images: list[str], path: str) -> None:
    items = list(container.get("ContentSequence", []))
    codes = [(concept(i), coded_value(i)) for i in items]
    finding = next((value for name, value in codes if name == FINDING and value), None)
    fracture = finding is None or finding[:2] in FRACTURE_CODES or "FRACTURE" in finding[2].upper()
    outlines = [(n, i) for n, i in enumerate(items, 1) if i.get("ValueType") in ("SCOORD", "SCOORD3D")]
    for n, item in outlines:
        where = f"{path} item {n} ({item.get('GraphicType', 'no type')})"
        if item.ValueType == "SCOORD3D":
            out.unusable.append(Unusable("unsupported_graphic", f"{where}: 3D coordinates"))
        elif finding is not None and not fracture:
            out.unusable.append(Unusable("not_a_fracture", f"{where}: finding {finding[2][:64]!r}"))
        else:
            _region(item, where, out)
    absent = any(value is not None and value[:2] in ABSENT for _, value in codes)
    if finding is not None and fracture and absent and not outlines:
        images = [uid for i in items if i.get("ValueType") == "IMAGE" for uid in referenced(i)] or all_images
        out.statements += [ImageStatement(uid, "no_fracture", f"SR {path}: fracture absent") for uid in images]
    for n, item in enumerate(items, 1):
        if item.get("ValueType") == "CONTAINER":
            _walk(item, out, all_images, f"{path}.{n}")


def _region(item: Dataset, where: str, out: Annotations) -> None:
    try:
        box = shape_box(str(item.get("GraphicType", "")), list(item.get("GraphicData") or []))
    except NotARegion as e:
        out.unusable.append(Unusable("not_a_region", f"{where}: {e}"))
        return
    except (TypeError, ValueError) as e:
        out.unusable.append(Unusable("bad_graphic", f"{where}: {e}"))
        return
    images = [
        uid
        for child in item.get("ContentSequence", [])
        if child.get("ValueType") == "IMAGE"
        for uid in referenced(child)
    ]
    if not images:
        out.unusable.append(Unusable("no_image_reference", where))
    out.regions += [Region(uid, box, where) for uid in images]
