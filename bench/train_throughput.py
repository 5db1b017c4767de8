"""Training throughput and peak memory of YOLOv7-tiny on the shared training engine.

Each configuration (image size x device) runs in its own child process, so peak memory (max RSS on the CPU, peak
allocated on a GPU) belongs to that configuration alone. Data: synthetic radiographs generated into a temp folder.

    .venv/bin/python bench/train_throughput.py [--sizes 320 640] [--steps 6] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine  # noqa: E402


def one(data: str, imgsz: int, device: str, steps: int, batch: int) -> dict:
    import torch

    from common.config import TrainConfig
    from common.data.dataset import DetectionDataset
    from common.engine.trainer import train_local
    from common.nn.model import ModelSpec, build_model

    torch.set_num_threads(torch.get_num_threads())
    model = build_model(ModelSpec(arch="yolov7-tiny"))
    ds = DetectionDataset.from_data(data, "train", imgsz, augment=TrainConfig().augment, cache=True)
    warm = TrainConfig(imgsz=imgsz, batch_size=batch, max_steps=2, device=device, warmup_steps=0)
    train_local(model, ds, warm, progress=False)  # warm-up: allocator, caches, first-iteration costs
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    cfg = TrainConfig(imgsz=imgsz, batch_size=batch, max_steps=steps, device=device, warmup_steps=0)
    m = train_local(model, ds, cfg, progress=False).metrics
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"imgsz": imgsz, "device": device, "batch": batch, "steps": steps,
            "images_per_s": m["images_per_s"], "peak_mem_mib": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--one", nargs=2, metavar=("IMGSZ", "DEVICE"), help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.data, int(a.one[0]), a.one[1], a.steps, a.batch)))
        return

    import torch

    from common.synth import generate_dataset, get_profile

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_dataset(Path(tmp) / "synth", [get_profile("general_hospital")], images_per_site=max(32, a.batch * 4),
                                size=max(a.sizes), seed=0, progress=False)
        rows = []
        for dev in devices:
            for size in a.sizes:
                out = subprocess.run([sys.executable, __file__, "--one", str(size), dev, "--data", str(data),
                                      "--steps", str(a.steps), "--batch", str(a.batch)],
                                     check=True, capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                rows.append(r)
                print(f"yolov7-tiny train  {dev:4s} {size:4d} px  batch {a.batch}: "
                      f"{r['images_per_s']:6.2f} images/s, peak memory {r['peak_mem_mib']:7.0f} MiB")
    emit({"bench": "train_throughput", "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
