"""`fracfl export --model VERSION_OR_PATH`: TFLite builds of a published model, checked against PyTorch.

A registry version (v0003, 3, latest) or a version folder; the files go into that version's `exports/` folder and
the results onto its card. Calibration and validation images are local files named here, never downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.commands.options import add_registry


def _registry_and_version(a: argparse.Namespace):
    from common.errors import DataError
    from server.commands.registry import default_root
    from server.registry import Registry

    p = Path(a.model)
    if p.is_dir() and (p / "card.json").is_file():  # a version folder given as a path
        return Registry(p.parent), p.name
    if p.is_file():
        raise DataError(
            p,
            "exports are made for registry versions, whose cards record them: give a version "
            "(v0003, latest) or a version folder",
        )
    root = Path(a.registry) if a.registry else default_root()
    if not root.is_dir():
        raise DataError(root, "no registry here (use --registry DIR or set FRACFL_REGISTRY, or give a version folder)")
    reg = Registry(root)
    return reg, reg.get(a.model).version


def _run(a: argparse.Namespace) -> int:
    from rich.console import Console

    from common.config import EvalConfig
    from common.errors import ConfigError
    from server.export.config import ExportConfig
    from server.export.version import export_version
    from server.registry.render import exports_table

    reg, version = _registry_and_version(a)
    try:
        cfg = ExportConfig(
            variants=[v.strip() for v in a.variants.split(",") if v.strip()],
            imgsz=a.imgsz,
            calibration=a.calibration,
            validation=a.data,
            threads=a.threads,
            calibration_images=a.calibration_images,
        )
    except ConfigError as e:
        raise ConfigError(str(e).replace("export.", "--")) from e
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"exporting {reg.root / version}: {', '.join(cfg.variants)}")

    def report(entry: dict) -> None:
        console.print(f"  {entry['variant']}: {entry['status']}")

    entries = export_version(reg, version, cfg, a.data, EvalConfig(conf=a.conf), report=report)
    console.print("\n".join(exports_table(entries)))
    failed = [e for e in entries if e["status"] != "ok"]
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    from common.config import EvalConfig
    from server.export.config import VARIANTS

    p = sub.add_parser(
        "export",
        help="TFLite builds of a published model, compared with PyTorch",
        description="Write TFLite (LiteRT) builds of a registry version into its exports/ folder and "
        "record each file's size, hash and accuracy versus PyTorch on its model card.",
    )
    p.add_argument("--model", required=True, help="registry version (v0003, 3, latest) or a version folder")
    add_registry(p)
    p.add_argument("--variants", default="fp32,fp16,int8", help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument(
        "--data",
        default=None,
        help="validation data (data.yaml or folder) for the comparison with "
        "PyTorch; without it the files are made but not compared",
    )
    p.add_argument(
        "--calibration", default=None, help="local images for int8 calibration (data.yaml or folder; default: --data)"
    )
    p.add_argument("--calibration-images", type=int, default=64, help="at most this many calibrate int8")
    p.add_argument("--imgsz", type=int, default=None, help="input size (default: the size the model was trained at)")
    p.add_argument("--threads", type=int, default=2, help="interpreter threads for the comparison (default 2)")
    p.add_argument(
        "--conf",
        type=float,
        default=EvalConfig().conf,
        help=f"operating point for sensitivity (default {EvalConfig().conf})",
    )
    p.set_defaults(func=_run)
