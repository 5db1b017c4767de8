"""What protecting patients instead of radiographs costs: mAP50 and time per step, the two DP-SGD units side by side.

One synthetic site whose patients each have `--images-per-patient` radiographs. Both arms start from the same
weights, train the same epochs with the same clipping norm, each with noise calibrated to the same target epsilon
for its own unit (image: q = batch / images; patient: q = (batch / images per patient) / patients, so both draw
about `--batch` images a step), and alternate epoch by epoch so machine noise hits them alike.

    .venv/bin/python bench/patient_dp.py [--images 96] [--images-per-patient 3] [--epochs 8] [--imgsz 96]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=96, help="training and validation radiographs in all")
    p.add_argument("--images-per-patient", type=int, default=3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--imgsz", type=int, default=96)
    p.add_argument("--batch", type=int, default=12, help="expected images per step, both arms")
    p.add_argument("--epsilon", type=float, default=8.0)
    a = p.parse_args()

    import torch

    from common.config import AugmentConfig, EvalConfig, ImbalanceConfig, TrainConfig
    from common.data.dataset import DetectionDataset
    from common.engine.device import select_device
    from common.engine.evaluate import evaluate_model
    from common.engine.trainer import train_local
    from common.nn.model import ModelSpec, build_model
    from common.privacy.accounting import calibrate, default_delta, sample_rate
    from common.privacy.dp_sgd import DPSGD
    from common.privacy.patients import patient_groups
    from common.synth import generate_dataset, get_profile

    tmp = Path(tempfile.mkdtemp())
    data_yaml = generate_dataset(
        tmp, [get_profile("general_hospital")], images_per_site=a.images, size=a.imgsz, seed=0, progress=False
    )
    train = DetectionDataset.from_data(data_yaml, "train", a.imgsz, cache=True)
    val = DetectionDataset.from_data(data_yaml, "val", a.imgsz, cache=True)
    k = a.images_per_patient
    groups = patient_groups(train.images, {p.stem: f"P{i // k}" for i, p in enumerate(train.images)})
    n_img, n_pat = len(train), int(groups.max()) + 1
    cfg = TrainConfig(
        imgsz=a.imgsz,
        batch_size=a.batch,
        epochs=1,
        warmup_steps=0,
        device="cpu",
        lr=0.01,
        augment=AugmentConfig(),
        imbalance=ImbalanceConfig("constant"),
    )
    arms = {}
    for unit, n, batch, g in (("image", n_img, a.batch, None), ("patient", n_pat, max(1, round(a.batch / k)), groups)):
        q = sample_rate(batch, n)
        steps = a.epochs * int(1 / q)
        sigma = calibrate([], q, steps, a.epsilon, default_delta(n))
        torch.manual_seed(0)
        arms[unit] = {
            "model": build_model(ModelSpec(width=0.25, depth=0.33, norm="group")),
            "q": q,
            "sigma": sigma,
            "groups": g,
            "steps": 0,
            "seconds": 0.0,
            "n": n,
        }
    for epoch in range(a.epochs):
        for arm in arms.values():
            hook = DPSGD(arm["sigma"], 1.0, arm["q"], max_physical_batch=8, groups=arm["groups"])
            t0 = time.perf_counter()
            result = train_local(arm["model"], train, cfg, privacy=hook, progress=False, first_epoch=epoch)
            arm["seconds"] += time.perf_counter() - t0
            arm["steps"] += int(result.metrics["steps"])
            arm["model"].load_state_dict(result.state)
    out = {}
    for unit, arm in arms.items():
        report = evaluate_model(arm["model"], val, EvalConfig(), select_device("cpu"), progress=False)
        out[unit] = {
            "map50": report.map50,
            "sensitivity": report.sensitivity,
            "roc_auc": report.roc_auc,
            "noise_multiplier": arm["sigma"],
            "sample_rate": arm["q"],
            "units": arm["n"],
            "s_per_step": arm["seconds"] / max(arm["steps"], 1),
            "steps": arm["steps"],
        }
    print(
        f"machine: {machine()}; {n_img} training radiographs of {n_pat} patients ({k} each), {a.imgsz} px, "
        f"{a.epochs} epochs, target epsilon {a.epsilon}, clip 1.0, ~{a.batch} images a step"
    )
    for unit, r in out.items():
        print(
            f"{unit:8s} unit: noise {r['noise_multiplier']:.2f}, q {r['sample_rate']:.3f} over {r['units']} "
            f"{unit}s, {r['steps']} steps at {r['s_per_step']:.2f} s/step; mAP50 {r['map50']:.3f}, "
            f"sensitivity {r['sensitivity']:.3f}, ROC AUC {r['roc_auc']:.3f}"
        )
    print(
        f"patient / image: time per step {out['patient']['s_per_step'] / out['image']['s_per_step']:.2f}x, "
        f"noise multiplier {out['patient']['noise_multiplier'] / out['image']['noise_multiplier']:.2f}x"
    )
    emit({"bench": "patient_dp", "machine": machine(), "arms": out})


if __name__ == "__main__":
    main()
