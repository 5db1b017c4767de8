"""Where a training step's time goes, YOLOv7-tiny at 320 px, on the CPU and (when there is one) on CUDA:

    pipeline   the data loader alone (decode cache, augmentation, collation, copy to the device)
    fwd+bwd    forward, per-image loss, backward and the optimiser on one batch already on the device
    step       the full training step of the engine (`train_local`), non-DP
    step DP    the same with DP-SGD (GroupNorm model, Poisson batches, per-sample gradients)
    eval       the server's evaluation (`evaluate_model`) over the validation split

Each line says the device and the settings it ran with. Every figure is steady state: one warm-up pass first,
then timed for about --seconds. Goals (issue 13): on the CPU the full step within 15 % of fwd+bwd (the loader
hidden); on one H200 at least 1,500 images/s for central training.

    .venv/bin/python bench/train_throughput.py                        # CPU (+ CUDA when present), synthetic data
    .venv/bin/python bench/train_throughput.py --devices cuda --batch 64 256 --data /tmp/fracatlas
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from _common import emit, machine

from common.config import AugmentConfig, EvalConfig, ImbalanceConfig, TrainConfig
from common.data.dataset import DetectionDataset, model_input
from common.engine.evaluate import evaluate_model
from common.engine.loader import auto_workers
from common.engine.precision import step_format, to_fp32
from common.engine.trainer import _loader, _optimizer, _to, train_local
from common.nn.loss import PerImageDetectionLoss
from common.nn.model import ModelSpec, build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rate(run: Callable[[], int], device: torch.device, seconds: float) -> float:
    """Images per second of `run` (which returns the images it handled), after one untimed call; at least three
    timed calls, however long they take."""
    run()
    _sync(device)
    t0, n, calls = time.perf_counter(), 0, 0
    while time.perf_counter() - t0 < seconds or calls < 3:
        n, calls = n + run(), calls + 1
    _sync(device)
    return n / (time.perf_counter() - t0)


def pipeline(data: DetectionDataset, cfg: TrainConfig, device: torch.device, seconds: float) -> float:
    loader = _loader(data, cfg, 0, device)
    it = iter(())

    def run() -> int:
        nonlocal it
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        model_input(batch["img"], device)
        return len(batch["index"])

    return _rate(run, device, seconds)


def fwd_bwd(data: DetectionDataset, cfg: TrainConfig, device: torch.device, seconds: float) -> float:
    model = build_model(ModelSpec(arch="yolov7-tiny")).to(device).train()
    fmt = step_format(cfg.precision, cfg.channels_last, device, private=False)
    if fmt.channels_last:
        model.to(memory_format=torch.channels_last)
    crit, opt = PerImageDetectionLoss(model), _optimizer(model, cfg)
    batch = next(iter(_loader(data, replace(cfg, workers=0), 0, device)))
    x, targets = model_input(batch["img"], device, fmt.channels_last), _to(batch, device)

    def run() -> int:
        opt.zero_grad(set_to_none=True)
        with fmt.context(device):
            preds = model(x)
        crit.per_image(to_fp32(preds), targets)[0].mean().backward()
        opt.step()
        return len(x)

    return _rate(run, device, seconds)


def step(data: DetectionDataset, cfg: TrainConfig, device: torch.device, seconds: float, dp: bool) -> float:
    """The engine itself, in steady state: two calls of `train_local`, the second three times as long, and the
    rate of the difference, so that the loader workers' start and the first batches' latency cancel out."""
    from common.privacy.dp_sgd import DPSGD

    spec = ModelSpec(arch="yolov7-tiny", norm="group" if dp else "batch")
    cfg = replace(cfg, imbalance=ImbalanceConfig("constant")) if dp else cfg  # what conf/privacy/dp_sgd.yaml sets
    model = build_model(spec)

    def run(steps: int) -> tuple[float, int]:
        hook = DPSGD(1.0, 1.0, min(1.0, cfg.batch_size / len(data)), max_physical_batch=cfg.batch_size) if dp else None
        t0 = time.perf_counter()
        m = train_local(model, data, replace(cfg, max_steps=steps), privacy=hook, progress=False).metrics
        _sync(device)
        return time.perf_counter() - t0, int(m["images"])

    probe_s, probe_n = run(3)
    short = max(2, int(seconds / 4 * probe_n / probe_s / cfg.batch_size))
    (t1, n1), (t2, n2) = run(short), run(3 * short)
    return (n2 - n1) / max(t2 - t1, 1e-9)


def evaluation(val: DetectionDataset, device: torch.device, seconds: float) -> float:
    model = build_model(ModelSpec(arch="yolov7-tiny"))
    return _rate(
        lambda: (evaluate_model(model, val, EvalConfig(batch_size=32), device, progress=False), len(val))[1],
        device,
        seconds,
    )


def rows_for(
    data_path: Path, device: torch.device, imgsz: int, batch: int, precision: str, seconds: float
) -> list[dict]:
    aug = AugmentConfig()
    cfg = TrainConfig(
        imgsz=imgsz, batch_size=batch, warmup_steps=0, device=str(device), precision=precision, augment=aug
    )
    data = DetectionDataset.from_data(data_path, "train", imgsz, augment=aug, cache=True)
    val = DetectionDataset.from_data(data_path, "val", imgsz, cache=True)
    fmt = step_format(precision, None, device, private=False).describe()
    settings = f"{device.type}, {imgsz} px, batch {batch}, {fmt}, {auto_workers(device)} loader workers"
    out = []
    for what, run in (
        ("pipeline", lambda: pipeline(data, cfg, device, seconds)),
        ("fwd+bwd", lambda: fwd_bwd(data, cfg, device, seconds)),
        ("step", lambda: step(data, cfg, device, seconds, dp=False)),
        ("step DP", lambda: step(data, cfg, device, seconds, dp=True)),
        ("eval", lambda: evaluation(val, device, seconds)),
    ):
        rate = run()
        label = (
            settings if what != "step DP" else settings.replace(fmt, "fp32 (DP-SGD)").replace("batch", "Poisson batch")
        )
        print(f"{what:9s} {rate:8.1f} images/s   [{label}]", flush=True)
        out.append(
            {
                "what": what,
                "images_per_s": rate,
                "device": device.type,
                "imgsz": imgsz,
                "batch": batch,
                "precision": fmt if what != "step DP" else "fp32",
                "workers": auto_workers(device),
            }
        )
    full, alone = out[2]["images_per_s"], out[1]["images_per_s"]
    print(f"full step / fwd+bwd alone: {full / alone:.3f} ({device.type}, batch {batch}, {fmt})", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, nargs="+", default=None, help="default: 8 on the CPU, 64 and 256 on CUDA")
    p.add_argument("--precision", nargs="+", default=["auto"], help="auto, fp32, bf16 (each is measured)")
    p.add_argument("--seconds", type=float, default=10.0, help="timed length of each measurement")
    p.add_argument("--data", type=Path, default=None, help="data.yaml or folder (default: synthetic radiographs)")
    a = p.parse_args()
    devices = a.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"machine: {machine()}", flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data
        if data is None:
            from common.synth import generate_dataset, get_profile

            data = generate_dataset(
                Path(tmp) / "synth",
                [get_profile("general_hospital")],
                images_per_site=96,
                size=a.imgsz * 2,
                seed=0,
                progress=False,
            )
        for dev in devices:
            device = torch.device(dev)
            for batch in a.batch or ([8] if device.type == "cpu" else [64, 256]):
                for precision in a.precision:
                    rows += rows_for(data, device, a.imgsz, batch, precision, a.seconds)
    emit({"bench": "train_throughput", "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
