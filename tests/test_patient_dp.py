"""Patients as the privacy unit (issue 12.5): a patient's summed gradient is clipped as one, patients are sampled,
and the accountant runs on the patient count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_dp import CONSTANT, PLAIN
from tests_support import GROUP_NANO, toy_dataset
from torch import nn

from client.privacy import Budget, PrivacyRefused, guard_round, privacy_groups
from common.config import PrivacyConfig, TrainConfig
from common.data.dataset import DetectionDataset
from common.engine.trainer import train_local
from common.nn.model import build_model
from common.privacy.accounting import Mechanism, default_delta, epsilon_rdp
from common.privacy.dp_sgd import DPSGD, _DPOptimizer, _PatientDPOptimizer, grad_sample_module
from common.privacy.patients import (
    IMAGE_UNIT,
    PATIENT_UNIT,
    PATIENTS_FILE,
    PatientPoissonSampler,
    PatientSplittingSampler,
    patient_groups,
    read_patients,
    write_patients,
)

CLIP = 1.0


def _update(optimizer_cls: type, rows: list[int], groups: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The clipped, noise-free gradient sum of one physical batch made of `rows`."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False)
    gsm = grad_sample_module(model, "hooks")
    extra = {"groups": groups} if optimizer_cls is _PatientDPOptimizer else {}
    opt = optimizer_cls(
        torch.optim.SGD(model.parameters(), lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=CLIP,
        expected_batch_size=1,
        loss_reduction="mean",
        **extra,
    )
    opt.rows = torch.tensor(rows)
    gsm(x[rows]).pow(2).mean().backward()
    opt.pre_step()
    grad = model.weight.grad.detach().clone()
    gsm._close()
    return grad


def test_a_patient_with_many_images_moves_the_update_by_at_most_the_clipping_norm():
    groups = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2, 3])  # patient 0 has six radiographs
    x = torch.ones(9, 3) * 10.0  # every image's gradient points the same way and is far above the clip
    everyone, without = list(range(9)), [6, 7, 8]
    patient = _update(_PatientDPOptimizer, everyone, groups, x) - _update(_PatientDPOptimizer, without, groups, x)
    assert patient.norm() <= CLIP + 1e-6
    # per-image clipping lets the same patient move it six times as far: the test above can fail
    image = _update(_DPOptimizer, everyone, groups, x) - _update(_DPOptimizer, without, groups, x)
    assert image.norm() == pytest.approx(6 * CLIP, rel=1e-5)


def _optimizer() -> _DPOptimizer:
    model = nn.Linear(2, 1)
    return _DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=1
    )


def test_physical_batches_keep_each_patient_whole_and_cap_its_images():
    groups = np.array([0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 3])  # patient 0 has five images, more than a chunk holds
    sampler = PatientPoissonSampler(groups, sample_rate=1.0, max_images=4, generator=torch.Generator().manual_seed(1))
    opt = _optimizer()
    chunks = list(PatientSplittingSampler(sampler, groups, max_batch=4, optimizer=opt))
    assert all(len(c) <= 4 for c in chunks)
    seen = [g for c in chunks for g in set(groups[c].tolist())]
    assert sorted(seen) == [0, 1, 2, 3]  # every patient drawn (q = 1), each in exactly one chunk
    assert sum(groups[np.concatenate(chunks)] == 0) == 4  # the five-image patient contributes four
    assert opt._step_skip_queue == [True] * (len(chunks) - 1) + [False]  # one logical step


def test_patients_are_drawn_independently_at_the_sample_rate():
    groups = np.repeat(np.arange(400), 2)
    sampler = PatientPoissonSampler(groups, sample_rate=0.1, max_images=8, generator=torch.Generator().manual_seed(0))
    drawn = [len(set(groups[b].tolist())) for b in sampler]
    assert len(drawn) == 10 and abs(np.mean(drawn) - 40) < 8  # 40 expected patients a step (sd ~6 / sqrt(10))


def _images(tmp_path: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        p.write_bytes(f"image {i}".encode())
        out.append(p)
    return out


def test_the_accountant_runs_on_the_patient_count(tmp_path):
    images = _images(tmp_path, 12)
    groups = np.repeat(np.arange(4), 3)  # 4 patients of 3 images
    budget = Budget(8.0, 10.0, None, tmp_path / "ledger")
    guard = guard_round(
        "site_a",
        budget,
        PrivacyConfig(mode="dp_sgd"),
        run_id="r",
        rnd=1,
        planned_rounds=2,
        images=images,
        batch_size=2,
        local_epochs=1,
        max_steps=None,
        model_version="v",
        seed=0,
        groups=groups,
    )
    assert guard.hook.sample_rate == pytest.approx(2 / 4)  # 2 patients of 4 a step, not 2 images of 12
    report = guard.commit(steps=2)
    assert report["unit"] == PATIENT_UNIT and report["patients"] == 4 and report["images"] == 12
    expected = epsilon_rdp([Mechanism(guard.hook.noise_multiplier, 0.5, 2)], default_delta(4))
    assert report["epsilon"] == pytest.approx(expected)


def test_the_patient_is_the_default_and_a_real_site_refuses_the_image_unit(tmp_path):
    images = _images(tmp_path, 4)
    (tmp_path / PATIENTS_FILE).write_bytes(write_patients({"img0": "P1", "img1": "P1", "img2": "P2"}))
    assert read_patients(tmp_path) == {"img0": "P1", "img1": "P1", "img2": "P2"}
    simulated, real = Budget(8, 10, None, tmp_path / "l"), Budget(8, 10, None, tmp_path / "l", real=True)
    groups = privacy_groups("s", simulated, PrivacyConfig(mode="dp_sgd"), tmp_path, images)
    assert groups.tolist() == [0, 0, 1, 2]  # img3 has no pseudonym: a patient of its own
    assert privacy_groups("s", simulated, PrivacyConfig(mode="dp_sgd", unit="image"), tmp_path, images) is None
    with pytest.raises(PrivacyRefused, match="only a stronger unit"):
        privacy_groups("s", real, PrivacyConfig(mode="dp_sgd", unit="image"), tmp_path, images)
    (tmp_path / PATIENTS_FILE).unlink()
    assert privacy_groups("s", real, PrivacyConfig(mode="dp_sgd"), tmp_path, images) is None  # nothing names patients


def test_patient_level_training_runs_and_counts_logical_steps(tmp_path):
    data = DetectionDataset.from_data(toy_dataset(tmp_path / "site", n=12), "train", 64, cache=True)
    groups = patient_groups(data.images, {p.stem: f"P{i // 3}" for i, p in enumerate(data.images)})
    model = build_model(GROUP_NANO)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(imgsz=64, batch_size=2, epochs=1, warmup_steps=0, device="cpu", augment=PLAIN, imbalance=CONSTANT)
    patients = int(groups.max()) + 1
    hook = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=2 / patients, max_physical_batch=2, groups=groups)
    result = train_local(model, data, cfg, privacy=hook, progress=False)
    assert result.metrics["steps"] == int(patients / 2)
    assert any(not torch.equal(before[k], v) for k, v in result.state.items())
    assert all(not hasattr(p, "grad_sample") for p in model.parameters())


def test_audit_show_names_the_unit_of_each_site():
    from server.audit import budgets

    entries = [
        {"site": "a", "kind": "round", "epsilon": 1.0, "unit": PATIENT_UNIT},
        {"site": "b", "kind": "round", "epsilon": 1.0, "unit": IMAGE_UNIT},
        {"site": "b", "kind": "round", "epsilon": 2.0, "unit": PATIENT_UNIT},
    ]
    sites = budgets(entries)
    assert sites["a"].unit == "patient" and sites["b"].unit == "image + patient"
