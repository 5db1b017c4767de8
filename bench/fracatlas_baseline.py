"""Centralised YOLOv7-tiny on FracAtlas: the yardstick federated runs are compared with.

Trains from scratch (no pretrained weights can be fetched here) with a fixed budget, validates on FracAtlas'
`valid` split after each epoch, and prints the metrics. FracAtlas: CC BY 4.0, Abedeen et al., Sci Data 10:521 (2023).

    .venv/bin/python bench/fracatlas_baseline.py [--epochs 3] [--imgsz 320] [--out runs/bench/fracatlas_baseline]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FRACATLAS, REPO, emit, machine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", default=str(REPO / "runs" / "bench" / "fracatlas_baseline"))
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for fracfl train")
    a = p.parse_args()
    if not (FRACATLAS / "data.yaml").is_file():
        print(f"skipped: FracAtlas not found at {FRACATLAS} (set FRACATLAS_DIR)")
        return
    cmd = [
        str(Path(sys.executable).parent / "fracfl"),
        "train",
        "experiment=fracatlas_baseline",
        f"data.path={FRACATLAS}",
        f"train.epochs={a.epochs}",
        f"train.imgsz={a.imgsz}",
        f"train.batch_size={a.batch}",
        f"run_dir={a.out}",
        *a.overrides,
    ]
    print("machine:", machine())
    print("running:", " ".join(cmd))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    hours = (time.perf_counter() - t0) / 3600
    val = json.loads((Path(a.out) / "metrics.json").read_text())["val"]
    keys = ("map50", "map50_95", "precision", "recall", "f1", "sensitivity", "specificity", "roc_auc")
    print(
        f"FracAtlas valid ({val['n_images']} images, {val['n_positive']} with fractures), "
        f"{a.epochs} epochs at {a.imgsz} px in {hours:.2f} h:"
    )
    for k in keys:
        print(f"  {k:12s} {val[k] if val[k] is not None else float('nan'):.4f}")
    emit(
        {
            "bench": "fracatlas_baseline",
            "machine": machine(),
            "epochs": a.epochs,
            "imgsz": a.imgsz,
            "hours": hours,
            **{k: val[k] for k in keys},
        }
    )


if __name__ == "__main__":
    main()
