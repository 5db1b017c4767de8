"""`fracfl predict` as a library: DICOM, PNG or JPEG files and folders in, one JSON-ready record per file out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from client.inference.analyse import Analyser, atomic_json, write_pictures
from client.inference.version import model_version
from common.config import EvalConfig
from common.data.images import is_image_file, read_image
from common.dicom import DicomRejected, is_dicom_bytes, read_dicom_image, redact
from common.dicom.read import DICOM_SUFFIXES, check_referenceable
from common.errors import DataError
from common.inference import load_backend

if TYPE_CHECKING:
    from client.feedback.record import PredictFeedback


def collect(paths: list[str | Path]) -> list[Path]:
    """Files to predict on: given files as they are, folders searched recursively for images and DICOM files
    (PACS exports often have no extension, so files are also recognised by the DICOM prefix)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and not f.name.startswith(".") and (is_image_file(f) or _is_dicom(f))
            )
        elif p.exists():
            out.append(p)
        else:
            raise DataError(p, "no such file or folder")
    return out


def predict_files(
    paths: list[str | Path],
    model_ref: str | Path,
    out: Path,
    *,
    backend: str = "torch",
    variant: str = "fp32",
    cfg: EvalConfig | None = None,
    dicom_results: bool = False,
    heatmap: bool = True,
    feedback: PredictFeedback | None = None,
) -> Iterator[dict]:
    """Analyse each file, write its annotated (and heatmap) PNG to `out`, yield its record; bad files yield a
    record with `ok: False` and the reason instead of stopping the run. Writes `out/predictions.json` at the end.
    With `feedback`, each DICOM input's findings also go to the site's feedback store (its `feedback` line says how)."""
    redact.install()  # no DICOM value in any log line or warning (common.dicom.redact)
    files = collect(paths)
    version = model_version(model_ref)
    analyser = Analyser(load_backend(model_ref, backend, variant=variant), cfg or EvalConfig(), version, heatmap)
    out.mkdir(parents=True, exist_ok=True)
    records, stems = [], set()
    for path in files:
        with redact.handling():
            record = _predict_one(path, _unique(path.stem, stems), analyser, out, version, dicom_results, feedback)
        records.append(record)
        yield record
    atomic_json(out / "predictions.json", {"model_version": version, "images": records})


def _predict_one(
    path: Path,
    stem: str,
    analyser: Analyser,
    out: Path,
    version: str,
    dicom_results: bool,
    feedback: PredictFeedback | None,
) -> dict:
    """One file's record; every failure becomes `ok: False` with a reason code (common.dicom.REASONS)."""
    from client.dicom.pipeline import processing_problem, write_results  # the DICOM side only when it is used

    record: dict = {"file": str(path), "model_version": version}
    try:
        dicom = _is_dicom(path)
        image = read_dicom_image(path) if dicom else None
        pixels = image.pixels if image is not None else read_image(path)
        analysis = analyser(pixels)
        pictures = write_pictures(analysis, out, stem)
        record.update(
            ok=True,
            **analysis.summary(),
            annotated=str(pictures[0]),
            heatmap_png=str(pictures[1]) if len(pictures) > 1 else None,
            pixel_spacing_mm=image.pixel_spacing_mm if image is not None else None,
        )
        if dicom_results and image is not None:
            check_referenceable(image.dataset, path)
            record["dicom_results"] = [str(p) for p in write_results(image, analysis, out / stem, version)]
        if feedback is not None:
            record["feedback"] = feedback(image, analysis, version)
    except DicomRejected as e:
        record.update(ok=False, reason=e.reason, problem=redact.redact(e.problem))
    except DataError as e:
        record.update(ok=False, reason="unreadable_image", problem=e.problem)
    except Exception as e:  # one odd file (a malformed LUT, say) must not end the run for the others
        record.update(ok=False, reason="processing_error", problem=processing_problem(e))
    return record


def summary_line(record: dict) -> str:
    """One line per image for people."""
    if not record["ok"]:
        return f"{record['file']}: skipped ({record['reason']}): {record['problem']}"
    verdict = "FRACTURE" if record["positive"] else "no fracture"
    finds = ", ".join(
        f"{f['class_name']} {f['score']:.2f} at {[round(v) for v in f['box']]}" for f in record["findings"]
    )
    line = f"{record['file']}: {verdict} p={record['probability']:.2f}" + (f" ({finds})" if finds else "")
    return line + (f"; {record['feedback']}" if "feedback" in record else "")


def _is_dicom(path: Path) -> bool:
    """DICOM by content (Part 10 or raw dataset), or named .dcm: a PNG renamed .dcm is refused as not_dicom."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return is_dicom_bytes(f.read(132))
    except OSError:
        return False


def _unique(stem: str, taken: set[str]) -> str:
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}_{n}"
    taken.add(name)
    return name
