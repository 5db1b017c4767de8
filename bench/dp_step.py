"""Time per DP-SGD step over time per ordinary step: same model (YOLOv7-tiny, GroupNorm), batch and image size.

Each repetition times one ordinary step and one DP-SGD step per grad-sample mode (`common.privacy.dp_sgd.MODES`)
back to back, so machine noise hits them alike. Reported: ratios of the median and of the fastest wall times, and of
the median process CPU times (less sensitive to other processes on a shared machine, which stretch wall time). The
DP step is the whole of it: per-sample gradients, per-image clipping, noise and the optimiser update (a fixed batch
here, so the ratio is compute, not Poisson batch sizes).

    .venv/bin/python bench/dp_step.py [--imgsz 256] [--batch 8] [--reps 5] [--modes lean hooks functorch] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--imgsz", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--modes", nargs="+", default=None, help="default: all of MODES")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    a = p.parse_args()

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)

    from common.data.dataset import DetectionDataset, collate, model_input
    from common.nn.loss import PerImageDetectionLoss
    from common.nn.model import ModelSpec, build_model
    from common.privacy.dp_sgd import MODES, _DPOptimizer, grad_sample_module
    from common.synth import generate_dataset

    tmp = Path(tempfile.mkdtemp())
    generate_dataset(
        tmp,
        sites=["general_hospital"],
        images_per_site=a.batch + 2,
        size=a.imgsz,
        val_fraction=0.2,
        seed=0,
        progress=False,
    )
    data = DetectionDataset.from_data(tmp / "data.yaml", "train", a.imgsz, cache=True)
    batch = collate([data[i] for i in range(a.batch)])
    batch["img"] = model_input(batch["img"], torch.device("cpu"))
    targets = {k: batch[k] for k in ("batch_idx", "cls", "bboxes")}
    modes = a.modes or list(MODES)

    def step(net, model, opt) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        per_image, _ = PerImageDetectionLoss(model).per_image(net(batch["img"]), targets)
        opt.zero_grad(set_to_none=True)
        per_image.mean().backward()
        opt.step()
        return time.perf_counter() - t0, time.process_time() - c0

    def model() -> torch.nn.Module:  # the same initial weights for every contender
        torch.manual_seed(0)
        return build_model(ModelSpec(norm="group")).train()

    plain = model()
    plain_opt = torch.optim.SGD(plain.parameters(), lr=1e-3, momentum=0.9)
    private = {}
    for mode in modes:
        net = model()
        opt = _DPOptimizer(
            torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=a.batch,
        )
        private[mode] = (grad_sample_module(net, mode), net, opt)
    contenders = {"plain": (plain, plain, plain_opt), **private}
    for args in contenders.values():  # warm-up
        step(*args)
    load = os.getloadavg()[0]
    wall, cpu = {"plain": [], **{m: [] for m in modes}}, {"plain": [], **{m: [] for m in modes}}
    for _ in range(a.reps):
        for name, args in contenders.items():
            w, c = step(*args)
            wall[name].append(w)
            cpu[name].append(c)
    med = {k: statistics.median(v) for k, v in wall.items()}
    low = {k: min(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(
        f"machine: {machine()}; {torch.get_num_threads()} threads; YOLOv7-tiny GroupNorm, batch {a.batch}, "
        f"{a.imgsz} px, {a.reps} repetitions; 1-min load {load:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    print(f"ordinary step: median {med['plain']:.2f} s, fastest {low['plain']:.2f} s, CPU {med_cpu['plain']:.2f} s")
    ratio = {m: med[m] / med["plain"] for m in modes}
    for m in modes:
        print(
            f"DP-SGD step ({m}): median {med[m]:.2f} s = {ratio[m]:.2f}x ordinary; fastest {low[m]:.2f} s = "
            f"{low[m] / low['plain']:.2f}x; CPU {med_cpu[m]:.2f} s = {med_cpu[m] / med_cpu['plain']:.2f}x"
        )
    emit(
        {
            "imgsz": a.imgsz,
            "batch": a.batch,
            "median_s": med,
            "fastest_s": low,
            "median_cpu_s": med_cpu,
            "ratio": ratio,
            "ratio_fastest": {m: low[m] / low["plain"] for m in modes},
            "ratio_cpu": {m: med_cpu[m] / med_cpu["plain"] for m in modes},
        }
    )


if __name__ == "__main__":
    main()
