"""`fracfl predict PATH... --model M`: findings, verdict, heatmap and annotated PNG per radiograph."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.config import TFLITE_VARIANTS, EvalConfig


def _run(a: argparse.Namespace) -> int:
    from client.inference.predict import predict_files, summary_line

    cfg = EvalConfig(conf=a.conf)
    feedback = None
    if a.feedback_db:
        from client.feedback.record import PredictFeedback

        keep = Path(a.keep_dir) if a.keep_dir else Path(a.feedback_db).parent / "kept"
        feedback = PredictFeedback(a.feedback_db, keep, burned_in=a.burned_in)
    records = []
    for record in predict_files(
        a.paths,
        a.model,
        Path(a.out),
        backend=a.backend,
        variant=a.variant,
        cfg=cfg,
        dicom_results=a.dicom_results,
        heatmap=not a.no_heatmap,
        feedback=feedback,
    ):
        records.append(record)
        if not a.json:
            print(summary_line(record), flush=True)
    if a.json:
        json.dump(records, sys.stdout, indent=2)
        print()
    return 0 if all(r["ok"] for r in records) else 1


def register(sub: argparse._SubParsersAction) -> None:
    d = EvalConfig()
    p = sub.add_parser(
        "predict",
        help="detect fractures on DICOM, PNG or JPEG radiographs",
        description="Boxes with scores and fracture type, the image-level probability with the "
        "operating point's verdict, a Grad-CAM heatmap and an annotated PNG per image. DICOM files "
        "are read with their LUTs/window (MONOCHROME1 inverted). Exit code 1 when a file was skipped.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (searched recursively)")
    p.add_argument("--model", required=True, help="weights file (.safetensors) or registry version folder")
    p.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "tflite"],
        help="inference runtime: the PyTorch model, or an edge build exported into the version folder "
        "(same preprocessing, decoding and operating point; no heatmap, which needs gradients)",
    )
    p.add_argument(
        "--variant",
        default="fp32",
        choices=TFLITE_VARIANTS,
        help="which TFLite build of the version folder --backend tflite runs (default %(default)s)",
    )
    p.add_argument("--out", default="runs/predict", help="folder for annotated/heatmap PNGs and predictions.json")
    p.add_argument("--conf", type=float, default=d.conf, help=f"operating point score (default {d.conf})")
    p.add_argument("--json", action="store_true", help="print one JSON array instead of one line per image")
    p.add_argument(
        "--dicom-results",
        action="store_true",
        help="also write GSPS, SR (TID 1500) and secondary capture for DICOM inputs, under OUT/<name>/",
    )
    p.add_argument("--no-heatmap", action="store_true", help="skip Grad-CAM (faster)")
    p.add_argument(
        "--feedback-db",
        metavar="PATH",
        help="also record each DICOM input's findings in the site's feedback store (for `fracfl review`), "
        "with a de-identified copy kept in --keep-dir",
    )
    p.add_argument(
        "--keep-dir",
        metavar="DIR",
        help="de-identified copies for --feedback-db (default: kept/ beside "
        "the database; the site's pseudonymisation keys are in DIR/../deid)",
    )
    p.add_argument(
        "--burned-in",
        choices=["refuse", "accept"],
        default="refuse",
        help="images flagged BurnedInAnnotation=YES: not kept (refuse, default) or kept (accept, only "
        "after checking this source's images)",
    )
    p.set_defaults(func=_run)
