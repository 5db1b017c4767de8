"""`fracfl data check D` and `fracfl data synth OUT`: dataset validation and synthetic radiographs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _check(a: argparse.Namespace) -> int:
    from common.data.check import check_dataset

    report = check_dataset(a.data, progress=not a.quiet)
    print(report.format())
    if a.json:
        Path(a.json).write_text(json.dumps(report.to_dict(), indent=1, default=str))
    return 1 if report.errors else 0


def _synth(a: argparse.Namespace) -> int:
    from common.synth import generate_dataset, get_profile

    sites = [get_profile(s.strip()) for s in a.sites.split(",") if s.strip()]
    yaml_path = generate_dataset(
        Path(a.out),
        sites,
        images_per_site=a.images,
        size=a.size,
        val_fraction=a.val_fraction,
        seed=a.seed,
        dicom=a.dicom,
        progress=not a.quiet,
    )
    print(f"wrote {yaml_path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="check datasets, generate synthetic radiographs")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    c = dsub.add_parser("check", help="list every problem of a dataset at once (exit 1 when there are errors)")
    c.add_argument("data", help="data.yaml or dataset folder")
    c.add_argument("--json", help="also write the report as JSON to this file")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_check)
    s = dsub.add_parser("synth", help="generate synthetic radiographs for several simulated hospitals")
    s.add_argument("out", help="output folder")
    s.add_argument(
        "--sites", default="general_hospital,trauma_center,rural_clinic", help="comma-separated site profiles"
    )
    s.add_argument("--images", type=int, default=60, help="images per site")
    s.add_argument("--size", type=int, default=512, help="image side in pixels")
    s.add_argument("--val-fraction", type=float, default=0.25)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dicom", action="store_true", help="also write DICOM DX files (made-up patient identities)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_synth)
