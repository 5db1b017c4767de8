"""`fracfl evaluate --model M --data D`: metrics, plots and error lists of saved weights on a dataset split."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.commands.options import add_batch_size
from common.config import EvalConfig


def _run(a: argparse.Namespace) -> int:
    from common.data.dataset import DetectionDataset
    from common.engine.device import select_device
    from common.engine.evaluate import evaluate_model
    from common.inference.load import load_at_size
    from common.metrics import write_report

    model, imgsz = load_at_size(a.model, a.imgsz)
    data = DetectionDataset.from_data(a.data, a.split, imgsz)
    cfg = EvalConfig(conf=a.conf, iou=a.iou, batch_size=a.batch_size)
    report = evaluate_model(model, data, cfg, select_device(a.device), progress=not a.quiet)
    out = Path(a.out)
    files = write_report(report, out)
    print(report.summary_line())
    print(f"report: {out} ({', '.join(sorted(p.name for p in files.values()))})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = EvalConfig()
    p = sub.add_parser(
        "evaluate",
        help="evaluate saved weights on a dataset split",
        description="Box-level mAP/P/R/F1 and image-level sensitivity/specificity/AUC, with plots "
        "and per-image error lists, for a fracfl weights file on an Ultralytics-format dataset.",
    )
    p.add_argument("--model", required=True, help="weights file (.safetensors) or registry version folder")
    p.add_argument("--data", required=True, help="data.yaml or dataset folder")
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
    p.add_argument("--out", default="runs/evaluate", help="folder for metrics.json, plots and error lists")
    p.add_argument("--imgsz", type=int, default=None, help="input size (default: the size the model was trained at)")
    p.add_argument("--conf", type=float, default=d.conf, help=f"operating point score (default {d.conf})")
    p.add_argument("--iou", type=float, default=d.iou, help=f"IoU for a match (default {d.iou})")
    add_batch_size(p, d.batch_size)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
