"""`fracfl ingest DICOM_DIR --labels DIR --out SITE_DATA`: de-identified DICOM plus labels into a training set."""

from __future__ import annotations

import argparse


def _run(a: argparse.Namespace) -> int:
    from client.dicom.ingest import ingest

    report = ingest(
        a.dicom,
        a.labels,
        a.out,
        a.keys,
        burned_in=a.burned_in,
        val_fraction=a.val_fraction,
        test_fraction=a.test_fraction,
    )
    for path, reason, problem in report.skipped:  # local console only: file names may identify patients
        print(f"skipped {path} ({reason}): {problem}")
    now = ", ".join(f"{n} {split}" for split, n in report.splits.items())
    print(
        f"ingest: {report.added} image(s) added to {a.out} (now {now}); "
        f"skipped by reason: {report.counts()['skipped'] or 'none'}"
    )
    for warning in report.warnings():
        print(f"warning: {warning}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="add de-identified DICOM radiographs and their labels to a site training set",
        description="Each DICOM file with a YOLO label of the same name is de-identified (PS3.15 "
        "Basic Profile, keyed-hash pseudonyms) and written as PNG + label + de-identified DICOM, "
        "named by pseudonymous UID, into an Ultralytics-format folder.",
    )
    p.add_argument("dicom", help="folder of DICOM files (searched recursively)")
    p.add_argument("--labels", required=True, help="folder of YOLO .txt labels named like the DICOM files")
    p.add_argument("--out", required=True, help="site training folder (created or extended)")
    p.add_argument("--keys", required=True, help="site folder for the pseudonymisation secret and linking table")
    p.add_argument(
        "--burned-in",
        choices=("refuse", "accept"),
        default="refuse",
        help="images flagged BurnedInAnnotation=YES: refuse (default) or accept after checking the source",
    )
    p.add_argument("--val-fraction", type=float, default=0.25, help="share of patients put in the validation split")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        help="share of patients held out in a test split, never trained on (default: the share the folder was "
        "split with; 0 for a new folder)",
    )
    p.set_defaults(func=_run)
