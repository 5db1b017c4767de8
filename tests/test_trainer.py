"""The shared training engine: it learns, is reproducible, respects freezing, weighting and privacy hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.config import AugmentConfig, EvalConfig, ImbalanceConfig, TrainConfig
from common.data.dataset import DetectionDataset
from common.engine.evaluate import evaluate_model
from common.engine.trainer import TrainingDiverged, image_weights, train_local
from common.errors import ConfigError
from common.nn.model import ModelSpec, build_model, layer_parts
from tests_support import toy_dataset

NANO = ModelSpec(width=0.125, depth=0.5)
FAST = TrainConfig(imgsz=128, batch_size=8, epochs=1, warmup_steps=0, device="cpu")


def _data(synth_data, split="train", augment=None):
    return DetectionDataset.from_data(synth_data, split, 128, augment=augment, cache=True)


def test_training_fits_the_data(tmp_path):
    """Fitting a few images end to end (loss, assignment, optimiser, NMS, mapping back, metrics) is the minimal
    proof that the engine learns."""
    torch.manual_seed(0)
    data = DetectionDataset.from_data(toy_dataset(tmp_path, n=10, positives=10), "train", 64, cache=True)
    model = build_model(NANO)
    cfg = EvalConfig(conf=0.25)
    before = evaluate_model(model, data, cfg, torch.device("cpu"), progress=False)
    plain = AugmentConfig(hflip=0, degrees=0, translate=0, scale=0, brightness=0, contrast=0, gamma=0, noise=0)
    train = TrainConfig(imgsz=64, batch_size=8, epochs=150, optimizer="adamw", lr=0.004, warmup_steps=0,
                        schedule="constant", grad_clip=None, device="cpu", augment=plain)
    train_local(model, data, train, progress=False)
    after = evaluate_model(model, data, cfg, torch.device("cpu"), progress=False)
    assert before.map50 < 0.05
    assert after.map50 > 0.5
    assert after.best_f1 > 0.5  # at its best operating point; calibration after so few steps is still rough


def test_same_seed_same_weights(synth_data):
    data = _data(synth_data, augment=AugmentConfig())
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model(NANO)
        runs.append(train_local(model, data, TrainConfig(**{**FAST.__dict__, "max_steps": 3}), seed=7, progress=False))
    assert all(torch.equal(v, runs[1].state[k]) for k, v in runs[0].state.items())
    assert runs[0].metrics["steps"] == 3 and runs[0].metrics["images"] == 24


def test_frozen_parts_do_not_move(synth_data):
    model = build_model(NANO)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(**{**FAST.__dict__, "max_steps": 2, "freeze": ["backbone"]})
    state = train_local(model, _data(synth_data), cfg, progress=False).state
    backbone = {f"model.{i}." for i in layer_parts(model)["backbone"]}
    moved = {k for k in state if k.endswith("weight") and not torch.equal(state[k], before[k])}
    assert moved and not any(k.startswith(tuple(backbone)) for k in moved)
    with pytest.raises(ConfigError, match="train.freeze"):
        train_local(model, _data(synth_data), TrainConfig(**{**FAST.__dict__, "freeze": ["torso"]}), progress=False)


def test_imbalance_weights_and_oversampling(synth_data):
    positive = np.array([True] + [False] * 4)
    w = image_weights(positive, ImbalanceConfig("reweight", 0.5))
    assert w.mean() == pytest.approx(1.0) and w[0] * 1 == pytest.approx(w[1:].sum())
    assert np.all(image_weights(positive, ImbalanceConfig("none", 0.5)) == 1)
    with pytest.raises(ConfigError, match="positive_fraction"):
        image_weights(positive, ImbalanceConfig("reweight", 1.5))

    from common.engine.trainer import _loader

    data = _data(synth_data)
    cfg = TrainConfig(**{**FAST.__dict__, "imbalance": ImbalanceConfig("oversample", 0.8)})
    drawn = torch.cat([b["positive"] for _ in range(10) for b in _loader(data, cfg, seed=0)])
    assert abs(drawn.float().mean().item() - 0.8) < 0.07


def test_divergence_is_reported_not_returned(synth_data):
    model = build_model(NANO)
    cfg = TrainConfig(**{**FAST.__dict__, "epochs": 3, "lr": 1e12, "grad_clip": None, "momentum": 0.0})
    with pytest.raises(TrainingDiverged, match="lower train.lr"):
        train_local(model, _data(synth_data), cfg, progress=False)


class _PoissonLikeHook:
    """The engine's contract with any privacy hook (the real DP-SGD hook is tested in test_dp.py): a swapped-in
    loader that yields an empty batch, counted optimiser steps, and release at the end."""

    def __init__(self):
        self.steps, self.released = 0, False

    def batches(self, loader, optimizer):
        return loader

    def release(self):
        self.released = True

    def wrap(self, model, optimizer, loader):
        optimizer.register_step_post_hook(lambda *_: setattr(self, "steps", self.steps + 1))
        batches = list(loader)
        empty = {k: v[:0] for k, v in batches[0].items()}
        return model, optimizer, [batches[0], empty, batches[1]]


def test_privacy_hook_wraps_the_same_path(synth_data):
    hook = _PoissonLikeHook()
    model = build_model(NANO)
    res = train_local(model, _data(synth_data), TrainConfig(**{**FAST.__dict__, "max_steps": 3}), privacy=hook, progress=False)
    assert hook.steps == 3 and res.metrics["images"] == 16 and hook.released
    with pytest.raises(ConfigError, match="mosaic"):
        train_local(model, _data(synth_data), TrainConfig(**{**FAST.__dict__, "augment": AugmentConfig(mosaic=0.5)}),
                    privacy=hook, progress=False)
