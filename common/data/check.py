"""Check a whole dataset and list every problem at once, so a user fixes their data in one pass.

Each image is fully decoded (the same decoder training uses), each label row validated, and file contents
hashed to find the same radiograph in two splits (train/val leakage inflates validation scores).
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from common.data.images import decode_image
from common.data.labels import validate_labels
from common.data.problems import Problem
from common.data.spec import DatasetSpec, load_spec
from common.errors import DataError


@dataclass
class SplitCounts:
    """Per-split totals: images listed, valid boxes, images without any box (negatives), undecodable images."""

    images: int = 0
    boxes: int = 0
    negatives: int = 0
    unreadable: int = 0


@dataclass(frozen=True)
class CheckReport:
    """Everything `check_dataset` found; `errors` make the dataset unusable as is, `warnings` do not."""

    root: Path
    problems: tuple[Problem, ...]
    counts: dict[str, SplitCounts] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        splits = "; ".join(
            f"{name}: {c.images} images, {c.boxes} boxes, {c.negatives} negatives"
            + (f", {c.unreadable} unreadable" if c.unreadable else "")
            for name, c in self.counts.items()
        )
        e, w = len(self.errors), len(self.warnings)
        head = f"{splits} -- " if splits else ""
        return f"{head}{e} error{'s' * (e != 1)}, {w} warning{'s' * (w != 1)}"

    def format(self) -> str:
        """Human-readable report: errors, then warnings, one `path[:line]: message` per line, then a summary."""
        lines = [f"Dataset {self.root}"]
        for title, group in (("Errors", self.errors), ("Warnings", self.warnings)):
            if group:
                lines.append(f"{title} ({len(group)}):")
                lines.extend(f"  {p.where(self.root)}: {p.message}" for p in group)
        lines.append(f"Summary: {self.summary()}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (absolute paths)."""
        return {
            "root": str(self.root),
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "seconds": round(self.seconds, 3),
            "counts": {name: asdict(c) for name, c in self.counts.items()},
            "problems": [
                {"path": str(p.path), "line": p.line, "severity": p.severity, "message": p.message}
                for p in self.problems
            ],
        }


@dataclass
class _ImageResult:
    problems: list[Problem]
    digest: bytes | None
    boxes: int
    readable: bool


def check_dataset(
    path: str | Path | DatasetSpec, *, progress: bool = True, workers: int | None = None
) -> CheckReport:
    """Check every image and label of a dataset (a data.yaml, a dataset folder, or a loaded spec)."""
    import time

    start = time.perf_counter()
    if isinstance(path, DatasetSpec):
        spec = path
    else:
        try:
            spec = load_spec(path)
        except DataError as e:
            return CheckReport(Path(path), (Problem.from_error(e),), {}, time.perf_counter() - start)

    problems: list[Problem] = []
    source = spec.source or spec.root
    for split, images in spec.splits.items():
        if not images:
            problems.append(Problem.error(source, f"split {split!r} has no images"))

    items = [(split, img) for split, images in spec.splits.items() for img in images]
    n_workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:  # decoders and hashing release the GIL
        results = list(_progress(pool.map(lambda it: _check_image(spec, it[1]), items), len(items), progress))

    counts = {split: SplitCounts() for split in spec.splits}
    by_digest: dict[bytes, list[tuple[str, Path]]] = defaultdict(list)
    for (split, img), res in zip(items, results):
        problems.extend(res.problems)
        c = counts[split]
        c.images += 1
        c.boxes += res.boxes
        c.negatives += res.readable and res.boxes == 0
        c.unreadable += not res.readable
        if res.digest is not None:
            by_digest[res.digest].append((split, img))

    problems.extend(_duplicates(by_digest, spec.root))
    problems.extend(_orphan_labels(spec))
    problems.sort(key=lambda p: (p.severity != "error", str(p.path), p.line or 0))
    return CheckReport(spec.root, tuple(problems), counts, time.perf_counter() - start)


def _check_image(spec: DatasetSpec, img: Path) -> _ImageResult:
    problems: list[Problem] = []
    digest, readable = None, False
    try:
        data = img.read_bytes()
    except OSError as e:
        problems.append(Problem.error(img, f"cannot read image ({e.strerror or e})"))
    else:
        digest = hashlib.blake2b(data, digest_size=16).digest()
        try:
            _, notes = decode_image(data, img)
            readable = True
            problems.extend(Problem.warning(img, note) for note in notes)
        except DataError as e:
            problems.append(Problem.from_error(e))
    label = spec.label_file(img)
    if label.is_file():
        boxes, label_problems = validate_labels(label, spec.nc)
        problems.extend(label_problems)
        n_boxes = len(boxes)
    else:
        problems.append(Problem.warning(img, f"no label file ({_rel(label, spec.root)}): treated as a negative image"))
        n_boxes = 0
    return _ImageResult(problems, digest, n_boxes, readable)


def _duplicates(by_digest: dict[bytes, list[tuple[str, Path]]], root: Path) -> Iterator[Problem]:
    for members in by_digest.values():
        first_split, first = members[0]
        first = _rel(first, root)
        for split, img in members[1:]:
            if split != first_split:
                yield Problem.warning(
                    img, f"same content as {first} ({first_split}): leakage between {first_split} and {split}"
                )
            else:
                yield Problem.warning(img, f"same content as {first}: duplicate image within {split}")


def _orphan_labels(spec: DatasetSpec) -> Iterator[Problem]:
    """Label files in the dataset's label folders that belong to no listed image (usually a lost image)."""
    expected = {spec.label_file(img) for images in spec.splits.values() for img in images}
    for folder in sorted({p.parent for p in expected}):
        if not folder.is_dir():
            continue
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            p = Path(entry.path)
            if p.suffix == ".txt" and entry.is_file() and p not in expected:
                yield Problem.error(p, "label file without an image: its image is missing from the dataset")


def _rel(path: Path, root: Path) -> Path:
    """`path` relative to the dataset root when inside it: keeps report lines short."""
    try:
        return path.relative_to(root)
    except ValueError:
        return path


def _progress(it: Iterator[_ImageResult], total: int, show: bool) -> Iterator[_ImageResult]:
    if not show or total == 0:
        yield from it
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("checking images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("check", total=total)
        for res in it:
            bar.advance(task)
            yield res
