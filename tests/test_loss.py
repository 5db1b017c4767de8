"""The per-image loss: each image's term and gradient are its own, whatever else is in the batch (DP-SGD needs it)."""

from dataclasses import replace

import pytest
import torch
from tests_support import NANO
from torch import nn
from ultralytics.utils.loss import v8DetectionLoss

from common.nn.loss import PerImageDetectionLoss
from common.nn.model import build_model


def _batch():
    torch.manual_seed(0)
    imgs = torch.rand(4, 3, 96, 96)
    batch = {  # image 1 has no fracture; image 0 has two
        "batch_idx": torch.tensor([0.0, 0.0, 2.0, 3.0]),
        "cls": torch.zeros(4, 1),
        "bboxes": torch.tensor(
            [[0.5, 0.5, 0.3, 0.3], [0.25, 0.3, 0.2, 0.15], [0.6, 0.4, 0.35, 0.25], [0.4, 0.6, 0.3, 0.4]]
        ),
    }
    return imgs, batch


def _alone(batch, i):
    sel = batch["batch_idx"] == i
    return {"batch_idx": torch.zeros(int(sel.sum())), "cls": batch["cls"][sel], "bboxes": batch["bboxes"][sel]}


def _model(norm):
    torch.manual_seed(1)
    model = build_model(replace(NANO, norm=norm))
    model.train()
    for m in model.modules():  # BatchNorm in training mode mixes images; frozen statistics do not
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return model


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_terms_equal_ultralytics_loss_of_each_image_alone(norm):
    model = _model(norm)
    imgs, batch = _batch()
    ours, parts = PerImageDetectionLoss(model).per_image(model(imgs), batch)
    stock = v8DetectionLoss(model)
    assert ours.shape == (4,) and parts.shape == (4, 3)
    for i in range(4):
        alone, _ = stock(model(imgs[i : i + 1]), _alone(batch, i))
        assert ours[i].item() == pytest.approx(alone.sum().item(), rel=1e-4, abs=1e-6)
    assert parts[1, 0] == 0 and parts[1, 2] == 0  # no box: only the classification term


def _grads(model, scalar):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([g.flatten() for g in torch.autograd.grad(scalar, params, retain_graph=True)])


def _max_gap(loss_fn_batch, model, imgs, batch):
    """Largest relative gap between image i's gradient taken inside the batch and taken alone."""
    per_image = loss_fn_batch(model(imgs), batch)
    gaps = []
    for i in range(len(imgs)):
        in_batch = _grads(model, per_image[i])
        alone = _grads(model, loss_fn_batch(model(imgs[i : i + 1]), _alone(batch, i))[0])
        gaps.append(((in_batch - alone).norm() / alone.norm().clamp(min=1e-12)).item())
    return max(gaps)


def test_per_sample_gradients_equal_gradients_of_each_image_alone():
    # float64 throughout, so rounding differences between batched and single convolutions stay far below the bound
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = _model("group")
        imgs, batch = _batch()
        crit = PerImageDetectionLoss(model)
        gap = _max_gap(lambda p, b: crit.per_image(p, b)[0], model, imgs, batch)
    finally:
        torch.set_default_dtype(default)
    assert gap < 1e-9


def test_the_check_detects_coupling_through_batch_norm():
    """The same check fails when BatchNorm uses batch statistics (why DP-SGD runs the GroupNorm model)."""
    model = build_model(NANO).train()
    imgs, batch = _batch()
    crit = PerImageDetectionLoss(model)
    assert _max_gap(lambda p, b: crit.per_image(p, b)[0], model, imgs[:3], _first(batch, 3)) > 1e-2


def _first(batch, n):
    keep = batch["batch_idx"] < n
    return {k: v[keep] for k, v in batch.items()}
