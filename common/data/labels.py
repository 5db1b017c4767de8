"""Read YOLO detection label files (`cls cx cy w h`, normalised), rejecting any row that would train on garbage.

A missing or empty label file is a negative image (no fracture): those images measure false positives, so they
are kept. Every rejected row is reported with its file and line so an annotator can fix it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from common.data.problems import Problem
from common.errors import DataError

BOX_TOLERANCE = 1e-3  # rounding overshoot past the image edge that is clipped instead of rejected
_FIELDS = 5


def read_labels(path: str | Path, nc: int) -> np.ndarray:
    """Boxes as float32 (n, 5) rows `cls cx cy w h`; (0, 5) for a negative image.

    Raises DataError naming the file and line at the first bad row. Exact duplicate rows are dropped.
    """
    boxes, problems = validate_labels(path, nc)
    for p in problems:
        if p.severity == "error":
            raise DataError(p.path, p.message, p.line)
    return boxes


def validate_labels(path: str | Path, nc: int) -> tuple[np.ndarray, list[Problem]]:
    """Like `read_labels` but collects every problem of the file instead of raising; valid rows are kept.

    File-level problems (unreadable, not text) come back as one error with no line.
    """
    if nc < 1:
        raise ValueError(f"nc must be >= 1, got {nc}")
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        return _empty(), []
    except UnicodeDecodeError as e:
        return _empty(), [Problem.error(path, f"label file is not UTF-8 text (byte {e.start}): is it an image?")]
    except OSError as e:
        return _empty(), [Problem.error(path, f"cannot read label file ({e.strerror or e})")]

    rows: list[tuple[float, ...]] = []
    problems: list[Problem] = []
    first_seen: dict[tuple[float, ...], int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields:
            continue
        row, errors = _parse_row(fields, nc)
        problems.extend(Problem.error(path, msg, lineno) for msg in errors)
        if row is None:
            continue
        if row in first_seen:
            problems.append(Problem.warning(path, f"duplicate of line {first_seen[row]}: dropped", lineno))
            continue
        first_seen[row] = lineno
        rows.append(_clip(row))
    boxes = np.asarray(rows, dtype=np.float32).reshape(-1, _FIELDS)
    return boxes, problems


def _empty() -> np.ndarray:
    return np.zeros((0, _FIELDS), np.float32)


def _parse_row(fields: list[str], nc: int) -> tuple[tuple[float, ...] | None, list[str]]:
    """(row or None when unusable, error messages). A row can have several errors (e.g. class and size)."""
    if len(fields) != _FIELDS:
        note = "; polygon/segment rows are not supported (detection boxes only)" if len(fields) > _FIELDS else ""
        return None, [f"expected {_FIELDS} fields 'cls cx cy w h', got {len(fields)}{note}"]
    try:
        values = tuple(float(f) for f in fields)
    except ValueError:
        bad = next(f for f in fields if not _is_float(f))
        return None, [f"non-numeric value {bad!r} (expected 'cls cx cy w h')"]
    if not all(math.isfinite(v) for v in values):
        return None, ["non-finite value (nan or inf)"]
    cls, cx, cy, w, h = values
    errors = []
    if not cls.is_integer():
        errors.append(f"class id {fields[0]} is not an integer")
    elif not 0 <= cls < nc:
        errors.append(f"class id {int(cls)} out of range [0, {nc})")
    if w <= 0 or h <= 0:
        errors.append(f"box width/height must be > 0, got w={fields[3]} h={fields[4]}")
    else:
        x0, x1, y0, y1 = cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2
        if min(x0, y0) < -BOX_TOLERANCE or max(x1, y1) > 1 + BOX_TOLERANCE:
            errors.append(
                f"box outside the image: x {x0:.4f}..{x1:.4f}, y {y0:.4f}..{y1:.4f} "
                "(coordinates must be normalised to 0..1)"
            )
        elif min(x1, 1.0) - max(x0, 0.0) <= 0 or min(y1, 1.0) - max(y0, 0.0) <= 0:
            errors.append("box has no area inside the image")
    return (None, errors) if errors else (values, [])


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _clip(row: tuple[float, ...]) -> tuple[float, ...]:
    """Clip a box that overshoots the edge by at most BOX_TOLERANCE, keeping it as cx cy w h."""
    cls, cx, cy, w, h = row
    x0, x1 = max(cx - w / 2, 0.0), min(cx + w / 2, 1.0)
    y0, y1 = max(cy - h / 2, 0.0), min(cy + h / 2, 1.0)
    return (cls, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)
