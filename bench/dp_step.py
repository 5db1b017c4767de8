"""Time per DP-SGD step over time per ordinary step: same model (YOLOv7-tiny, GroupNorm), batch and image size.

Each repetition times one ordinary step and one DP-SGD step per Opacus grad-sample mode back to back, so machine
noise hits them alike; medians are reported. The DP step is the whole of it: per-sample gradients, per-image
clipping, noise and the optimiser update (a fixed batch here, so the ratio is compute, not Poisson batch sizes).

    .venv/bin/python bench/dp_step.py [--imgsz 256] [--batch 8] [--reps 5] [--modes hooks functorch]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--imgsz", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--modes", nargs="+", default=["hooks", "functorch"])
    a = p.parse_args()

    import torch
    from opacus import GradSampleModule

    from common.data.dataset import DetectionDataset, collate
    from common.nn.loss import PerImageDetectionLoss
    from common.nn.model import ModelSpec, build_model
    from common.privacy.dp_sgd import _DPOptimizer
    from common.synth import generate_dataset

    tmp = Path(tempfile.mkdtemp())
    generate_dataset(tmp, sites=["general_hospital"], images_per_site=a.batch + 2, size=a.imgsz, val_fraction=0.2,
                     seed=0, progress=False)
    data = DetectionDataset.from_data(tmp / "data.yaml", "train", a.imgsz, cache=True)
    batch = collate([data[i] for i in range(a.batch)])
    targets = {k: batch[k] for k in ("batch_idx", "cls", "bboxes")}

    def step(net, model, opt) -> float:
        t0 = time.perf_counter()
        per_image, _ = PerImageDetectionLoss(model).per_image(net(batch["img"]), targets)
        opt.zero_grad(set_to_none=True)
        per_image.mean().backward()
        opt.step()
        return time.perf_counter() - t0

    torch.manual_seed(0)
    plain = build_model(ModelSpec(norm="group")).train()
    plain_opt = torch.optim.SGD(plain.parameters(), lr=1e-3, momentum=0.9)
    private = {}
    for mode in a.modes:
        model = build_model(ModelSpec(norm="group")).train()
        gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean", force_functorch=mode == "functorch")
        opt = _DPOptimizer(torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9), noise_multiplier=1.0,
                           max_grad_norm=1.0, expected_batch_size=a.batch)
        private[mode] = (gsm, model, opt)
    step(plain, plain, plain_opt)  # warm-up
    for gsm, model, opt in private.values():
        step(gsm, model, opt)
    times = {"plain": [], **{m: [] for m in a.modes}}
    for _ in range(a.reps):
        times["plain"].append(step(plain, plain, plain_opt))
        for mode, (gsm, model, opt) in private.items():
            times[mode].append(step(gsm, model, opt))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"machine: {machine()}; {torch.get_num_threads()} threads; YOLOv7-tiny GroupNorm, batch {a.batch}, "
          f"{a.imgsz} px, {a.reps} repetitions")
    print(f"ordinary step: {med['plain']:.2f} s")
    for mode in a.modes:
        print(f"DP-SGD step ({mode}): {med[mode]:.2f} s = {med[mode] / med['plain']:.2f}x ordinary")
    emit({"imgsz": a.imgsz, "batch": a.batch, "median_s": med,
          "ratio": {m: med[m] / med["plain"] for m in a.modes}})


if __name__ == "__main__":
    main()
