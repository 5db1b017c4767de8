"""`write_report`: the report as files a reviewer can open without Python (JSON, CSV, PNG)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .report import DetectionReport


def _r(x: float) -> float:
    return round(float(x), 4)


def _json_text(x: object, level: int = 0) -> str:
    """Indented JSON with every list of numbers or records on one line, so curves don't bury the metrics."""
    if isinstance(x, dict) and x:
        pad = " " * (level + 1)
        body = ",\n".join(f"{pad}{json.dumps(k)}: {_json_text(v, level + 1)}" for k, v in x.items())
        return "{\n" + body + "\n" + " " * level + "}"
    if isinstance(x, list) and any(isinstance(v, (dict, list)) for v in x):
        pad = " " * (level + 1)
        body = ",\n".join(pad + json.dumps(v, allow_nan=False) for v in x)
        return "[\n" + body + "\n" + " " * level + "]"
    return json.dumps(x, allow_nan=False)


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_report(report: DetectionReport, out_dir: Path, prefix: str = "") -> dict[str, Path]:
    """Write metrics.json, the three error CSVs and four PNG plots into `out_dir`; return their paths by kind.

    Error CSVs keep the report's worst-first order. `prefix` lets several evaluations share one folder.
    """
    from . import plots  # matplotlib only when files are written

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    p = {
        k: out_dir / f"{prefix}{name}"
        for k, name in (
            ("metrics", "metrics.json"),
            ("false_negatives", "errors_false_negatives.csv"),
            ("false_positives", "errors_false_positives.csv"),
            ("images", "errors_images.csv"),
            ("pr_curve", "pr_curve.png"),
            ("roc_curve", "roc_curve.png"),
            ("confusion_matrix", "confusion_matrix.png"),
            ("f1_curve", "f1_curve.png"),
        )
    }
    p["metrics"].write_text(_json_text(report.to_dict()) + "\n")
    _write_csv(
        p["false_negatives"],
        ["image_id", "cls", "cls_name", "x1", "y1", "x2", "y2", "best_score"],
        [[e.image_id, e.cls, e.cls_name, *map(_r, e.box), _r(e.best_score)] for e in report.false_negatives],
    )
    _write_csv(
        p["false_positives"],
        ["image_id", "cls", "cls_name", "x1", "y1", "x2", "y2", "score", "best_iou"],
        [[e.image_id, e.cls, e.cls_name, *map(_r, e.box), _r(e.score), _r(e.best_iou)] for e in report.false_positives],
    )
    _write_csv(
        p["images"],
        ["kind", "image_id", "score", "n_gt", "n_pred_above_conf"],
        [["missed_fracture", e.image_id, _r(e.score), e.n_gt, e.n_pred] for e in report.missed_fractures]
        + [["false_alarm", e.image_id, _r(e.score), e.n_gt, e.n_pred] for e in report.false_alarms],
    )
    plots.plot_pr_curve(report, p["pr_curve"])
    plots.plot_roc_curve(report, p["roc_curve"])
    plots.plot_confusion(report, p["confusion_matrix"])
    plots.plot_f1_curve(report, p["f1_curve"])
    return p
