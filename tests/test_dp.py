"""DP-SGD at the site: Opacus' per-sample gradients of our loss are each image's own, and training runs with
Poisson sampling, memory-bounded physical batches and empty batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.grad_sample.conv import compute_conv_grad_sample
from test_loss import _alone, _batch
from tests_support import GROUP_NANO as GROUP
from tests_support import NANO, toy_dataset

from common.config import AugmentConfig, ImbalanceConfig, TrainConfig
from common.data.dataset import DetectionDataset
from common.engine.trainer import _optimizer, freeze_parts, train_local
from common.errors import ConfigError
from common.nn.loss import PerImageDetectionLoss
from common.nn.model import build_model
from common.privacy.dp_sgd import DPSGD, MODES, grad_sample_module
from common.privacy.grad_sample import conv2d_grad_sample

PLAIN = AugmentConfig(hflip=0, degrees=0, translate=0, scale=0, brightness=0, contrast=0, gamma=0, noise=0)
CONSTANT = ImbalanceConfig("constant")  # what conf/privacy/dp_sgd.yaml sets: weights fixed per class


@pytest.mark.parametrize("mode", MODES)
def test_opacus_per_sample_gradients_equal_each_image_alone(mode):
    torch.manual_seed(1)
    model = build_model(GROUP).double().train()
    imgs, batch = _batch()
    imgs = imgs.double()
    gsm = grad_sample_module(model, mode)
    crit = PerImageDetectionLoss(model)
    crit.per_image(gsm(imgs), batch)[0].mean().backward()
    params = [p for p in model.parameters() if p.requires_grad]
    if mode == "lean":  # no batch gradients, except in the first layer (its input, the image, carries no gradient)
        assert [n for n, p in model.named_parameters() if p.grad is not None] == ["model.0.conv.weight"]
    samples = [p.grad_sample.detach().clone() for p in params]
    gsm.cleanup()
    for i in range(len(imgs)):
        model.zero_grad()
        crit.per_image(model(imgs[i : i + 1]), _alone(batch, i))[0].sum().backward()
        gap = max((s[i] - p.grad).abs().max().item() for s, p in zip(samples, params))
        scale = max(p.grad.abs().max().item() for p in params)
        assert gap <= 1e-7 * max(scale, 1.0), f"image {i}: per-sample gradient differs by {gap}"


@pytest.mark.parametrize(
    "conv",
    [
        dict(kernel_size=1),
        dict(kernel_size=1, bias=True, stride=2),
        dict(kernel_size=3, padding=1),
        dict(kernel_size=3, stride=2, padding=1, bias=True),
        dict(kernel_size=(3, 5), padding=2, dilation=2, groups=2),
        dict(kernel_size=3, padding="same"),
        dict(kernel_size=3, padding=1, padding_mode="reflect"),
    ],
)
def test_lean_conv_grad_sampler_equals_opacus(conv):
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(4, 6, **{"bias": False, **conv}).double()
    x = torch.randn(3, 4, 11, 9, dtype=torch.float64)
    g = torch.randn_like(layer(x))
    ours, theirs = conv2d_grad_sample(layer, [x], g), compute_conv_grad_sample(layer, [x], g)
    assert ours.keys() == theirs.keys()
    for p in ours:
        torch.testing.assert_close(ours[p], theirs[p], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("frozen_parts", [["backbone"], ["backbone", "neck", "head.box"]])
def test_lean_mode_with_frozen_parts_gives_hooks_per_sample_gradients(frozen_parts):
    """Behind frozen layers no gradient reaches the first trainable ones: lean mode must still hook them."""
    imgs, batch = _batch()
    samples = {}
    for mode in ("hooks", "lean"):
        torch.manual_seed(1)
        model = build_model(GROUP).double().train()
        freeze_parts(model, frozen_parts)
        frozen = [p.requires_grad for p in model.parameters()]
        gsm = grad_sample_module(model, mode)
        PerImageDetectionLoss(model).per_image(gsm(imgs.double()), batch)[0].mean().backward()
        assert [p.requires_grad for p in model.parameters()] == frozen  # lean restores what it switched off
        samples[mode] = [p.grad_sample for p in model.parameters() if p.requires_grad]
        gsm.cleanup()
    assert len(samples["lean"]) == len(samples["hooks"]) > 0
    for lean, hooks in zip(samples["lean"], samples["hooks"]):
        torch.testing.assert_close(lean, hooks, rtol=1e-9, atol=1e-12)


def _data(tmp_path, n=16):
    return DetectionDataset.from_data(toy_dataset(tmp_path, n=n, positives=n), "train", 64, cache=True)


def test_dp_training_counts_logical_steps_and_leaves_the_model_clean(tmp_path):
    data = _data(tmp_path)
    model = build_model(GROUP)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(imgsz=64, batch_size=8, epochs=2, warmup_steps=0, device="cpu", augment=PLAIN, imbalance=CONSTANT)
    hook = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=8 / len(data), max_physical_batch=3)
    result = train_local(model, data, cfg, privacy=hook, progress=False)
    assert result.metrics["steps"] == 2 * int(len(data) / 8)  # logical steps, not physical chunks of 3
    assert any(not torch.equal(before[k], v) for k, v in result.state.items())
    assert all(not hasattr(p, "grad_sample") for p in model.parameters())  # hooks removed: reusable next round
    assert not any(m._forward_pre_hooks or m._forward_hooks or m._backward_hooks for m in model.modules())
    out = model(torch.rand(2, 3, 64, 64))  # and the model still runs normally
    assert out is not None


def test_noise_alone_moves_weights_on_an_empty_batch(tmp_path):
    """A sample rate so low that (almost surely) no image is drawn: every step still adds noise, as the
    accounting assumes."""
    data = _data(tmp_path, n=8)
    model = build_model(GROUP)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(
        imgsz=64, batch_size=8, max_steps=2, warmup_steps=0, device="cpu", augment=PLAIN, imbalance=CONSTANT
    )
    hook = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=1e-9)
    result = train_local(model, data, cfg, privacy=hook, progress=False)
    assert result.metrics["images"] == 0 and result.metrics["steps"] == 2
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_dp_refuses_batch_norm_mosaic_and_fedprox(tmp_path):
    data = _data(tmp_path, n=8)
    cfg = TrainConfig(imgsz=64, batch_size=4, max_steps=1, device="cpu", augment=PLAIN, imbalance=CONSTANT)
    hook = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.5)
    with pytest.raises(ConfigError, match="model.norm=group"):
        train_local(build_model(NANO), data, cfg, privacy=hook, progress=False)
    with pytest.raises(ConfigError, match="proximal"):
        train_local(build_model(GROUP), data, cfg, privacy=hook, progress=False, proximal_mu=0.1)
    mosaic = TrainConfig(imgsz=64, batch_size=4, max_steps=1, device="cpu", augment=AugmentConfig(mosaic=0.5))
    with pytest.raises(ConfigError, match="mosaic"):
        train_local(build_model(GROUP), data, mosaic, privacy=hook, progress=False)
    for mode in ("reweight", "oversample"):  # weights or draws from the site's fracture share couple the images
        coupled = TrainConfig(
            imgsz=64, batch_size=4, max_steps=1, device="cpu", augment=PLAIN, imbalance=ImbalanceConfig(mode)
        )
        with pytest.raises(ConfigError, match="imbalance.mode=constant"):
            train_local(build_model(GROUP), data, coupled, privacy=hook, progress=False)


def test_constant_class_weights_do_not_depend_on_the_other_images():
    """Issue 12.3: with reweight, removing one fracture image of 30 moved every other image's weight (1.5 ->
    1.611, 0.75 -> 0.725); constant weights depend on each image alone."""
    from common.engine.trainer import image_weights

    positive = np.array([True] * 10 + [False] * 20)
    for mode, moves in (("reweight", True), ("constant", False)):
        cfg = ImbalanceConfig(mode)
        full, without = image_weights(positive, cfg), image_weights(positive[1:], cfg)
        assert (not np.allclose(full[1:], without)) == moves


def _released_update(data, noise_multiplier, hook_seed):
    """One DP step from weights the server chose; returns the flat released change of the trainable weights."""
    torch.manual_seed(0)
    model = build_model(GROUP)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    cfg = TrainConfig(
        imgsz=64, batch_size=8, max_steps=1, warmup_steps=0, device="cpu", augment=PLAIN, imbalance=CONSTANT
    )
    hook = DPSGD(noise_multiplier, 1.0, 0.5, max_physical_batch=16, seed=hook_seed)
    train_local(model, data, cfg, privacy=hook, progress=False, seed=7)  # 7: the job seed, which the server sent
    return torch.cat([p.detach().flatten() for p in model.parameters()]) - before, hook.noise_source


def _regenerated_noise(seed_guess: int) -> torch.Tensor:
    """The attack: redraw Opacus' noise from a seed the server knows (one torch.normal per parameter, in the order
    of the optimiser's parameter groups, which the server knows from the code), in the model's parameter order."""
    torch.manual_seed(0)
    model = build_model(GROUP)
    g = torch.Generator().manual_seed(seed_guess)
    drawn = {
        id(p): torch.normal(0.0, 1.0, size=p.shape, generator=g)
        for group in _optimizer(model, TrainConfig()).param_groups
        for p in group["params"]
    }
    return torch.cat([drawn.get(id(p), torch.zeros_like(p)).flatten() for p in model.parameters()])


def test_the_server_cannot_regenerate_and_remove_the_noise(tmp_path):
    """Issue 12.1. The server knows the initial weights, the configuration and the job seed. In research mode
    (noise seeded from the job seed) that is enough to rebuild the noise exactly: the noisy update minus the
    noise-free one is the regenerated noise, up to scale. With the default secure noise the same attack finds
    nothing, and two rounds from identical server-known inputs release different updates."""
    data = _data(tmp_path, n=16)
    job_seed = 7
    clean, _ = _released_update(data, 0.0, job_seed)  # the server can compute this if it knows the images drawn
    noisy, source = _released_update(data, 1.0, job_seed)
    assert source == "seeded (research mode)"
    guess = _regenerated_noise(job_seed + 1)
    cos = torch.nn.functional.cosine_similarity(noisy - clean, guess, dim=0).item()
    assert abs(cos) > 0.999, f"research mode: the attack should recover the noise (cosine {cos})"

    secure_a, source = _released_update(data, 1.0, None)
    secure_b, _ = _released_update(data, 1.0, None)
    assert source == "secure"
    for attempt in (job_seed, job_seed + 1, 0, 1):  # every seed the server could derive from what it sent
        cos = torch.nn.functional.cosine_similarity(secure_a - clean, _regenerated_noise(attempt), dim=0).item()
        assert abs(cos) < 0.05, f"secure noise correlates with noise regenerated from seed {attempt} ({cos})"
    gap = (secure_a - secure_b).norm() / (noisy - clean).norm()
    assert gap > 0.5, "two rounds from identical server-known inputs must draw different noise"
