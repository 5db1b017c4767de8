"""Edge latency and equivalence: PyTorch fp32 eager vs the TFLite builds, side by side in one run, at 640 px on
2 threads, on real radiographs (FracAtlas `valid` when present, else synthetic ones).

1. Publishes the model into a throw-away registry and exports it exactly as the server does (`export_version`):
   fp32, fp16, w8a32 and int8 (calibrated on FracAtlas `train` images, not the ones it is validated on), with the
   card's equivalence figures (mAP50, sensitivity vs PyTorch, largest box difference) on the validation set.
2. Times every backend on the same letterboxed radiographs, interleaved image by image so that load from other
   processes hits all of them alike: the network alone, and the whole `Predictor.predict` (letterbox, network,
   decoding, NMS). PyTorch is timed fused (BatchNorm folded into the convolutions, as a deployment would run it).

    .venv/bin/python bench/edge_latency.py [--weights W.safetensors] [--images 30] [--imgsz 640] [--threads 2]
    .venv/bin/python bench/edge_latency.py --out DIR ...; ... --out DIR --latency-only   # re-time the same files
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FRACATLAS, REPO, emit, machine

BASELINE = REPO / "runs" / "bench" / "fracatlas_baseline" / "weights" / "model.safetensors"
CARD = {
    "run_id": "bench-edge",
    "round": 0,
    "strategy": {"name": "none", "params": {}},
    "model": {},
    "sites": [],
    "metrics": {},
    "privacy": None,
    "exports": [],
}


def _data(work: Path) -> tuple[str, str, str]:
    """(validation data, calibration data, calibration split): FracAtlas, else synthetic radiographs."""
    if (FRACATLAS / "data.yaml").is_file():
        return str(FRACATLAS / "data.yaml"), str(FRACATLAS / "data.yaml"), "train"
    from common.synth import generate_dataset

    print(f"FracAtlas not found at {FRACATLAS}: synthetic radiographs instead")
    yaml = generate_dataset(work / "synth", images_per_site=40, size=1024, seed=0, progress=False)
    return str(yaml), str(yaml), "val"


def _model(weights: str | None):
    from common.nn.model import ModelSpec, build_model
    from common.nn.weights import load_model

    path = Path(weights) if weights else BASELINE
    if path.is_file():
        model, spec, _ = load_model(path)
        return model, spec, str(path)
    print("no trained weights given or found: an untrained YOLOv7-tiny (latency is meaningful, accuracy is not)")
    spec = ModelSpec()
    return build_model(spec), spec, "untrained"


def _median_ms(times: list[float]) -> float:
    return round(1000 * statistics.median(times), 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help=f"fracfl weights (default: {BASELINE.relative_to(REPO)} if any)")
    p.add_argument("--images", type=int, default=30, help="radiographs timed per backend")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default="fp32,fp16,w8a32,int8")
    p.add_argument("--out", default=None, help="keep the registry with the exports here (default: a temp folder)")
    p.add_argument(
        "--latency-only",
        action="store_true",
        help="time the exports already in --out's registry again (no export, no equivalence run)",
    )
    a = p.parse_args()

    import torch

    from common.config import EvalConfig
    from common.data.augment import letterbox
    from common.data.dataset import DetectionDataset
    from common.data.images import read_image
    from common.inference import Predictor, TorchBackend, load_backend
    from common.inference.predictor import to_input
    from server.export.config import ExportConfig
    from server.export.version import export_version
    from server.registry import Registry

    torch.set_num_threads(a.threads)
    work = Path(a.out or tempfile.mkdtemp(prefix="fracfl-edge-bench-"))
    val_data, calib_data, calib_split = _data(work)
    model, spec, source = _model(a.weights)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    print("machine:", machine())
    print(f"model: {source}; {a.imgsz} px; {a.threads} threads; validation: {val_data}")

    reg = Registry(work / "registry")
    if a.latency_only:
        version = reg.get("latest").version
        entries = reg.get(version).card["exports"]
    else:
        version = reg.publish(model, spec, dict(CARD), {"imgsz": a.imgsz}).version
        cfg = ExportConfig(
            variants=variants, imgsz=a.imgsz, calibration=calib_data, calibration_split=calib_split, threads=a.threads
        )
        t0 = time.perf_counter()
        entries = export_version(
            reg,
            version,
            cfg,
            val_data,
            EvalConfig(),
            report=lambda e: print(f"  exported {e['variant']}: {e['status']}", flush=True),
        )
        print(f"export and equivalence: {time.perf_counter() - t0:.0f} s")
    folder = reg.get(version).path

    fused = copy.deepcopy(model).eval().fuse()
    backends = {"pytorch fp32 eager": TorchBackend(fused, imgsz=a.imgsz)}
    backends.update(
        {
            f"tflite {e['variant']}": load_backend(folder, "tflite", variant=e["variant"], threads=a.threads)
            for e in entries
            if e["status"] == "ok"
        }
    )
    paths = DetectionDataset.from_data(val_data, "val", a.imgsz).images[: a.images]
    images = [read_image(pth) for pth in paths]
    inputs = [to_input(letterbox(img, a.imgsz)[0]).unsqueeze(0) for img in images]
    predictors = {name: Predictor(b, EvalConfig()) for name, b in backends.items()}
    net: dict[str, list[float]] = {n: [] for n in backends}
    e2e: dict[str, list[float]] = {n: [] for n in backends}
    for b in backends.values():  # warm-up: first calls allocate and pick kernels
        for x in inputs[:2]:
            b(x)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    for img, x in zip(images, inputs):  # interleaved: load from other processes hits every backend alike
        for name, b in backends.items():
            t = time.perf_counter()
            b(x)
            net[name].append(time.perf_counter() - t)
            t = time.perf_counter()
            predictors[name].predict(img)
            e2e[name].append(time.perf_counter() - t)

    torch_ms = _median_ms(net["pytorch fp32 eager"])
    by_variant = {e["variant"]: e for e in entries}
    print(
        f"\nmedian latency per radiograph, {len(images)} radiographs at {a.imgsz} px, {a.threads} threads "
        f"(1-min load average before timing: {load:.1f} on {os.cpu_count()} cores):"
    )
    print(
        f"{'backend':22s} {'network ms':>10s} {'end-to-end ms':>13s} {'vs pytorch':>10s} {'size MB':>8s} "
        f"{'mAP50 (torch)':>15s} {'sens (torch)':>14s} {'box diff px':>11s} {'score diff':>10s}"
    )
    rows = []
    for name in backends:
        e = by_variant.get(name.removeprefix("tflite "), {})
        ms, ms_e2e = _median_ms(net[name]), _median_ms(e2e[name])
        row = {
            "backend": name,
            "network_ms": ms,
            "end_to_end_ms": ms_e2e,
            "ratio_vs_pytorch": round(ms / torch_ms, 3),
            **{
                k: e.get(k)
                for k in (
                    "bytes",
                    "map50",
                    "map50_torch",
                    "map50_delta_points",
                    "sensitivity",
                    "sensitivity_torch",
                    "max_box_diff_px",
                    "max_score_diff",
                    "verdicts_agree",
                    "meets_goal",
                )
            },
        }
        rows.append(row)

        def f(v, spec=".3f"):
            return "-" if v is None else format(v, spec)

        print(
            f"{name:22s} {ms:10.1f} {ms_e2e:13.1f} {ms / torch_ms:10.2f} "
            f"{f(e.get('bytes') and e['bytes'] / 1e6, '.1f'):>8s} "
            f"{f(e.get('map50')):>6s} ({f(e.get('map50_torch'))}) {f(e.get('sensitivity')):>5s} "
            f"({f(e.get('sensitivity_torch'))}) {f(e.get('max_box_diff_px'), '.2f'):>11s} "
            f"{f(e.get('max_score_diff'), '.4f'):>10s}"
        )
    int8 = next((r for r in rows if r["backend"] == "tflite int8"), None)
    if int8:
        print(
            f"\nint8 goal (<= 1/4 of PyTorch eager): {int8['ratio_vs_pytorch']:.2f} -> "
            f"{'met' if int8['ratio_vs_pytorch'] <= 0.25 else 'NOT met'}"
        )
    emit(
        {
            "bench": "edge_latency",
            "machine": machine(),
            "load_average": load,
            "model": source,
            "imgsz": a.imgsz,
            "threads": a.threads,
            "images": len(images),
            "validation": val_data,
            "rows": rows,
        }
    )


if __name__ == "__main__":
    main()
