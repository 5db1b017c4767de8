"""Time from C-STORE received by `fracfl listen` to its results (GSPS, SR, Secondary Capture) stored in a real PACS.

A real Orthanc (Debian package) routes each uploaded radiograph to the listener as a hospital's auto-routing would;
the listener runs the real DICOM pipeline with full-size YOLOv7-tiny at 640 px and stores the results back in
Orthanc. The latency of one radiograph runs from the start of the listener's receipt of the C-STORE to Orthanc's
success response for the last result object (both from the listener's journal), and is split into inference
(received -> results staged) and delivery. Radiographs are sent one at a time; the first one is a warm-up.

    .venv/bin/python bench/dicom_latency.py [--repeats 3] [--fracatlas 10] [--threads 2] [--backend torch]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import FRACATLAS, emit, machine
from orthanc_support import ORTHANC_AE, Orthanc, free_port, have_orthanc


def fracatlas_as_dx(images: list[Path], out: Path) -> list[Path]:
    """Wrap FracAtlas JPEG radiographs as DX For Presentation objects (8-bit MONOCHROME2), as a digitiser would."""
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    files = []
    for img in images:
        pixels = np.asarray(Image.open(img).convert("L"))
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = DigitalXRayImageStorageForPresentation
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientName, ds.PatientID, ds.Modality = "BENCH^FRACATLAS", img.stem, "DX"
        for keyword in (
            "PatientBirthDate",
            "PatientSex",
            "StudyDate",
            "StudyTime",
            "StudyID",
            "AccessionNumber",
            "ReferringPhysicianName",
            "SeriesNumber",
            "InstanceNumber",
            "PatientOrientation",
        ):
            setattr(ds, keyword, None)  # Type 2 attributes a digitiser writes (empty), as highdicom expects
        ds.PresentationIntentType, ds.ImageType = "FOR PRESENTATION", ["ORIGINAL", "PRIMARY"]
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = pixels.tobytes()
        path = out / f"{img.stem}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def inputs(work: Path, n_fracatlas: int) -> list[tuple[str, Path]]:
    from pydicom.data import get_testdata_file

    from common.synth import generate_dataset

    found = [
        ("pydicom-data RG1 (CR chest 1955x1841, 15-bit)", Path(get_testdata_file("RG1_UNCR.dcm"))),
        ("pydicom-data RG3 (CR ankle 1760x1760, 10-bit)", Path(get_testdata_file("RG3_UNCR.dcm"))),
    ]
    generate_dataset(
        work / "synth", ["general_hospital"], images_per_site=2, size=1024, seed=0, dicom=True, progress=False
    )
    found += [("synthetic DX 1024 px", p) for p in sorted((work / "synth").rglob("dicom/*.dcm"))[:2]]
    valid = sorted((FRACATLAS / "images" / "valid").glob("*.jpg"))[:n_fracatlas]
    if valid:
        (work / "fracatlas").mkdir()
        found += [("FracAtlas valid (JPEG wrapped as DX)", p) for p in fracatlas_as_dx(valid, work / "fracatlas")]
    else:
        print(f"FracAtlas not found at {FRACATLAS}: measuring pydicom-data and synthetic radiographs only")
    return found


def fresh_copy(src: Path, out: Path) -> tuple[Path, str]:
    """The same radiograph under a new SOP Instance UID: the PACS treats each repeat as a new image."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    ds = dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = out / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path)
    return path, ds.SOPInstanceUID


def journal_rows(queue: Path) -> list[dict]:
    path = queue / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3, help="sends of each radiograph")
    p.add_argument("--fracatlas", type=int, default=10, help="FracAtlas validation images to include")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--backend", default="torch", choices=["torch", "tflite"])
    p.add_argument("--weights", default=None, help="trained weights to use instead of a random full-size model")
    p.add_argument("--variant", default="fp32", help="tflite build (exported first, calibrated on synthetic DX)")
    p.add_argument(
        "--heatmap", choices=["on", "off", "both"], default="both", help="Grad-CAM in the SC (both: side by side)"
    )
    a = p.parse_args()
    if not have_orthanc():
        print("skipped: Orthanc not installed (apt-get install orthanc)")
        return

    from client.listener.config import DestinationConfig, ListenConfig
    from common.nn.model import ModelSpec, build_model
    from common.nn.weights import save_weights

    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="fracfl-dicom-latency-"))
    if a.weights:  # a trained model: realistic findings (a random one's int8 build scores everything ~0.5)
        from common.nn.weights import load_model

        model, spec, _ = load_model(a.weights)
    else:  # full-size YOLOv7-tiny backbone/neck, Ultralytics anchor-free head; random weights
        spec = ModelSpec()
        model = build_model(spec)
    model_path = save_weights(model.eval(), spec, work / "model.safetensors", {"imgsz": a.imgsz})
    sources = inputs(work, a.fracatlas)
    if a.backend == "tflite":
        model_path = edge_build(model_path, work, a.variant)
    (work / "send").mkdir()
    lport = free_port()
    with Orthanc(work / "orthanc", "FRACFL", lport) as pacs:
        passes = {"on": [True], "off": [False], "both": [True, False]}[a.heatmap]
        for heatmap in passes:
            cfg = ListenConfig(
                host="127.0.0.1",
                port=lport,
                queue_dir=str(work / f"queue-heatmap-{heatmap}"),
                model=str(model_path),
                backend=a.backend,
                variant=a.variant,
                threads=a.threads,
                status_every=3600,
                heatmap=heatmap,
                destination=DestinationConfig(ORTHANC_AE, "127.0.0.1", pacs.dicom_port),
            )
            report(run_pass(cfg, pacs, sources, work, a.repeats), f"heatmap {'on' if heatmap else 'off'}", a)
        stored = sum(1 for _ in pacs.received_from("FRACFL"))
    print(f"results stored in Orthanc: {stored} objects")


def edge_build(weights: Path, work: Path, variant: str) -> Path:
    """Publish the model to a scratch registry and export the TFLite variant, as the server would."""
    from common.nn.weights import load_model
    from server.export.config import ExportConfig
    from server.export.version import export_version
    from server.registry import Registry

    model, spec, meta = load_model(weights)
    reg = Registry(work / "registry")
    card = {
        "run_id": "bench",
        "round": 1,
        "strategy": {"name": "fedavg", "params": {}},
        "model": {},
        "sites": [],
        "metrics": {},
        "privacy": None,
        "exports": [],
    }
    pub = reg.publish(model, spec, card, meta)
    calib = work / "synth" / "data.yaml"
    entries = export_version(
        reg, pub.version, ExportConfig(variants=[variant], calibration=str(calib), validation=str(calib))
    )
    if entries[0]["status"] != "ok":
        raise SystemExit(f"export failed: {entries[0]['status']}")
    return pub.path


def run_pass(cfg, pacs: Orthanc, sources: list[tuple[str, Path]], work: Path, repeats: int) -> list[dict]:
    """Send every radiograph `repeats` times, one at a time, through Orthanc to a fresh listener; one row each."""
    from client.listener.inference import build_processor
    from client.listener.queue import pseudonym
    from client.listener.service import ListenerService

    queue = Path(cfg.queue_dir)
    svc = ListenerService(cfg, build_processor(cfg))
    svc.start()
    rows = []
    try:
        for rep in range(repeats):
            for label, src in sources:
                path, uid = fresh_copy(src, work / "send")
                ref = pseudonym(uid)
                t0 = time.time()
                pacs.upload(path)
                deadline = time.time() + 120
                while not (events := {r["event"]: r for r in journal_rows(queue) if r["ref"] == ref}).get("sent"):
                    if "failed" in events or time.time() > deadline:
                        raise SystemExit(f"{label}: no results ({events.get('failed', {}).get('reason', 'timeout')})")
                    time.sleep(0.01)
                rows.append(
                    {
                        "source": label,
                        "repeat": rep,
                        "total": events["sent"]["seconds"],
                        "inference": events["processed"]["seconds"],
                        "routing": events["received"]["t"] - t0,
                    }
                )
                print(f"{label:48s} total {rows[-1]['total']:.2f} s  (pipeline {rows[-1]['inference']:.2f} s)")
    finally:
        svc.stop()
    return rows


def report(rows: list[dict], name: str, a: argparse.Namespace) -> None:
    measured = rows[1:]  # the first radiograph pays one-off costs (first forward pass, lazy imports)
    totals = [r["total"] for r in measured]
    print(f"\n== {name}; machine: {machine()} ({a.threads} inference threads); shared with other jobs while measured")
    print(f"warm-up (first radiograph): {rows[0]['total']:.2f} s")
    print(f"{'source':48s} {'n':>3s} {'median total':>13s} {'median pipeline':>16s}")
    for label in dict.fromkeys(r["source"] for r in measured):
        sel = [r for r in measured if r["source"] == label]
        print(
            f"{label:48s} {len(sel):3d} {statistics.median(r['total'] for r in sel):12.2f}s "
            f"{statistics.median(r['inference'] for r in sel):15.2f}s"
        )
    print(
        f"ALL ({name}): median {statistics.median(totals):.2f} s, p90 {np.percentile(totals, 90):.2f} s, "
        f"max {max(totals):.2f} s over {len(totals)} radiographs (goal: under 2 s)\n"
    )
    emit(
        {
            "bench": "dicom_latency",
            "pass": name,
            "backend": a.backend,
            "imgsz": a.imgsz,
            "threads": a.threads,
            "median_s": statistics.median(totals),
            "p90_s": float(np.percentile(totals, 90)),
            "n": len(totals),
            "median_pipeline_s": statistics.median(r["inference"] for r in measured),
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
