"""The site's DICOM pipeline: one received file in, results for the PACS out; bad input quarantined with a reason.

Steps (each a function or small class, testable alone, MONAI Deploy style):
    load+select (common.dicom.read_dicom_image: validate, refuse with a reason code)
    -> preprocess (same call: modality/VOI LUT, MONOCHROME1, uint8, pixel spacing)
    -> infer + explain (client.inference.Analyser: Predictor on the chosen backend, Grad-CAM)
    -> write results (client.dicom.results: GSPS, TID 1500 SR, secondary capture; PNGs and JSON beside them)
    -> keep a de-identified copy when a keep folder is configured (client.dicom.deid)
    -> quarantine on any failure (client.dicom.quarantine).
`DicomPipeline.process` never raises for a bad file; the network listener calls it once per stored instance.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from client.dicom.deid import BurnedInAnnotation, Deidentifier, SiteKeys
from client.dicom.quarantine import quarantine
from client.dicom.results import measurement_report, presentation_state, secondary_capture
from client.inference.analyse import Analyser, Analysis, atomic_json, atomic_write, write_heatmap, write_pictures
from client.inference.version import model_version
from common.config import EvalConfig
from common.dicom import RADIOGRAPH_MODALITIES, DicomImage, DicomRejected, read_dicom_image, redact
from common.dicom.read import check_referenceable, transfer_syntax_name
from common.inference import Prediction, load_backend

log = logging.getLogger("fracfl.dicom")

PROCESSING_ERROR = "processing_error"  # reason code for failures after a file was accepted (common.dicom.REASONS)
RESULT_FILES = {"gsps": "gsps.dcm", "sr": "sr.dcm", "sc": "sc.dcm"}


@dataclass
class PipelineResult:
    """What happened to one file. `outputs` are the DICOM objects to send back to the PACS (empty on failure)."""

    source: Path
    outputs: list[Path] = field(default_factory=list)
    prediction: Prediction | None = None
    quarantined: Path | None = None
    reason: str | None = None  # reason code (common.dicom.REASONS or 'processing_error') when quarantined
    problem: str | None = None  # the sentence a person reads
    kept: Path | None = None  # de-identified copy, when a keep folder is configured and the image may be kept
    kept_heatmap: Path | None = None  # its heatmap PNG beside it (for the review page), when there is one
    transfer_syntax: str | None = None  # name and UID, for log lines about the file (never patient data)
    model_version: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.quarantined is None and self.reason is None


class DicomPipeline:
    """Processes received DICOM files with one loaded model.

    out_dir/<SOPInstanceUID>/ gets gsps.dcm, sr.dcm, sc.dcm, annotated and heatmap PNGs and result.json.
    keep_dir (optional) gets de-identified copies named by pseudonymous UID, for training sets and feedback;
    the pseudonymisation secret and linking table live in site_dir (default: keep_dir/../deid).
    """

    def __init__(
        self,
        model_ref: str | Path,
        out_dir: str | Path,
        quarantine_dir: str | Path,
        backend: str = "torch",
        eval_cfg: EvalConfig | None = None,
        *,
        keep_dir: str | Path | None = None,
        site_dir: str | Path | None = None,
        burned_in: str = "refuse",
        heatmap: bool = True,
        modalities: frozenset[str] = RADIOGRAPH_MODALITIES,
        variant: str = "fp32",
    ):
        redact.install()  # no DICOM value reaches a log line or warning of this process
        self.out_dir = Path(out_dir)
        self.quarantine_dir = Path(quarantine_dir)
        self.modalities = modalities
        self.model_version = model_version(model_ref)
        self.analyser = Analyser(
            load_backend(model_ref, backend, variant=variant), eval_cfg or EvalConfig(), self.model_version, heatmap
        )
        self.keep_dir = Path(keep_dir) if keep_dir is not None else None
        self.deidentify: Deidentifier | None = None
        if self.keep_dir is not None:
            keys = SiteKeys(Path(site_dir) if site_dir is not None else self.keep_dir.parent / "deid")
            self.deidentify = Deidentifier(keys, burned_in)

    def process(self, path: str | Path) -> PipelineResult:
        """Run every step on one file; never raises for bad input (it is quarantined with its reason).

        Everything logged or warned meanwhile, by us or by pydicom/highdicom, has the file's values replaced by
        attribute names (common.dicom.redact)."""
        with redact.handling():
            return self._process(Path(path))

    def _process(self, path: Path) -> PipelineResult:
        result = PipelineResult(source=path, model_version=self.model_version)
        try:
            image = read_dicom_image(path, self.modalities)
            result.transfer_syntax = transfer_syntax_name(image.dataset)
            check_referenceable(image.dataset, path)
            analysis = self.analyser(image.pixels)
            result.prediction = analysis.prediction
            folder = self.out_dir / str(image.dataset.SOPInstanceUID)
            result.outputs = write_results(image, analysis, folder, self.model_version)
        except DicomRejected as e:
            result.transfer_syntax = e.transfer_syntax or result.transfer_syntax
            return self._quarantine(result, e.reason, redact.redact(e.problem))
        except (
            Exception
        ) as e:  # a bug, a malformed LUT or a full disk must not lose the file: set aside with the reason
            result.outputs = []
            return self._quarantine(result, PROCESSING_ERROR, processing_problem(e))
        result.notes = list(image.notes)
        if self.deidentify is not None:
            self._keep(image.dataset, analysis, result)
        log.info(
            "processed: %d finding(s), verdict %s",
            len(analysis.prediction.findings()),
            "positive" if analysis.prediction.positive else "negative",
        )
        return result

    def _keep(self, ds: Dataset, analysis: Analysis, result: PipelineResult) -> None:
        assert self.deidentify is not None and self.keep_dir is not None
        try:
            result.kept, result.kept_heatmap = keep_copy(self.deidentify, self.keep_dir, ds, analysis)
        except BurnedInAnnotation as e:
            result.notes.append(f"not kept: {e}")
        except Exception as e:  # results were delivered; losing the kept copy is reported, not fatal
            result.notes.append(f"not kept: {type(e).__name__} while de-identifying or writing the copy")

    def _quarantine(self, result: PipelineResult, reason: str, problem: str) -> PipelineResult:
        result.reason, result.problem = reason, problem
        try:
            result.quarantined = quarantine(result.source, self.quarantine_dir, reason, problem)
        except OSError as e:  # cannot even move it: leave it in place, the caller still gets the reason
            result.notes.append(f"quarantine failed ({type(e).__name__}); file left in place")
        # The caller reports it (the listener with its queue id, predict per file): one line, at debug level here.
        log.debug("quarantined: %s (%s)", reason, result.transfer_syntax or "transfer syntax unknown")
        return result


def keep_copy(deidentify: Deidentifier, keep_dir: Path, ds: Dataset, analysis: Analysis) -> tuple[Path, Path | None]:
    """The de-identified copy named by its pseudonymous SOP Instance UID, and its heatmap beside it (no header, so
    nothing identifying); raises BurnedInAnnotation when the image may not be kept."""
    clean = deidentify(ds)
    keep_dir.mkdir(parents=True, exist_ok=True)
    kept = atomic_write(keep_dir / f"{clean.SOPInstanceUID}.dcm", _encode(clean))
    heat = analysis.heatmap
    return kept, write_heatmap(heat, keep_dir / f"{clean.SOPInstanceUID}.heatmap.png") if heat is not None else None


def processing_problem(e: Exception) -> str:
    """The sentence for an unexpected failure: exception type and message, with the file's values redacted."""
    return redact.redact(f"{type(e).__name__} while processing: {e}")[:500]


def write_results(image: DicomImage, analysis: Analysis, folder: Path, version: str) -> list[Path]:
    """GSPS, SR and SC for the PACS (returned), plus PNGs and result.json for people, in `folder`."""
    ds = image.dataset
    folder.mkdir(parents=True, exist_ok=True)
    objects = {
        "gsps": presentation_state(ds, analysis.prediction, version),
        "sr": measurement_report(ds, analysis.prediction, version, image.pixel_spacing_mm),
        "sc": secondary_capture(ds, analysis.picture, version),
    }
    outputs = [atomic_write(folder / RESULT_FILES[k], _encode(obj)) for k, obj in objects.items()]
    write_pictures(analysis, folder, "image")
    atomic_json(
        folder / "result.json",
        {
            "model_version": version,
            **analysis.summary(),
            "pixel_spacing_mm": image.pixel_spacing_mm,
            "notes": image.notes,
            "outputs": [p.name for p in outputs],
        },
    )
    return outputs


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
