"""What the model-store tests share: tiny models published to a registry, a degraded one, a held-out split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.nn.weights import read_weights
from server.registry import Registry

GATE_CONF = 0.002  # an untrained nano model scores ~0.01: at this operating point it flags every image


def publish(registry: Path, weights: Path, rnd: int = 1, degrade: bool = False, score_shift: float = 0.0) -> str:
    """Publish a weights file as the registry's next version; `degrade`: a classifier bias of -20, so the model
    finds nothing (a deliberately worse challenger); `score_shift`: every class logit moved by this much, so the
    model ranks its boxes exactly as before but scores them lower or higher (another calibration). Returns the
    version name."""
    tensors, spec, meta = read_weights(weights)
    state = {k: v.numpy().copy() for k, v in tensors.items()}
    for k in state:
        if ".cv3." in k and k.endswith(".2.bias"):  # the last convolution of each class-score branch
            state[k] = np.full_like(state[k], -20.0) if degrade else state[k] + np.float32(score_shift)
    card = {"run_id": "cl-test", "round": rnd, "strategy": {"name": "fedavg"}}
    return Registry(registry).publish(state, spec, card, {"imgsz": meta.get("imgsz", 128)}).version


def holdout(root: Path, images: int = 24) -> Path:
    """Synthetic radiographs with a `test` split (half of them) and a patients.csv pairing images two by two."""
    from common.synth import generate_dataset

    generate_dataset(
        root, ["general_hospital"], images_per_site=images, size=128, val_fraction=0.5, seed=1, progress=False
    )
    test = sorted((root / "general_hospital" / "images" / "val").glob("*.png"))
    rows = [f"{p.stem},patient-{i // 2}" for i, p in enumerate(test)]
    (root / "patients.csv").write_text("image,patient\n" + "\n".join(rows) + "\n")
    data = root / "holdout.yaml"
    data.write_text("train: general_hospital/images/train\ntest: general_hospital/images/val\nnames: {0: fracture}\n")
    return data
