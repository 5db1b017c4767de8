"""The one-run membership audit: its statistics against scipy's binomial, and the canary experiment on our detector
(a non-private run is caught; a strongly noised DP-SGD run stays at or below the accountant's epsilon)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from scipy import special, stats

from common.config import ImbalanceConfig, TrainConfig
from common.errors import ConfigError
from common.nn.model import build_model
from common.privacy import one_run
from common.privacy.accounting import Mechanism, epsilons
from common.data.spec import load_spec
from common.privacy.canary_audit import NO_AUGMENT, MiaConfig, draw_members, make_canaries, run_audit
from server.commands.audit_mia import add_mia
from tests_support import GROUP_NANO as GROUP, NANO, save_nano, toy_dataset
STEPS = 48  # the control and the DP run train identically (same seeds, canaries and draw) but for DP-SGD


# --- statistics ------------------------------------------------------------------------------------------------


def test_all_correct_bound_grows_with_the_number_of_guesses():
    bounds = [one_run.epsilon_lower_bound(256, r, r, 0.0, 0.05) for r in (4, 8, 16, 64, 256)]
    assert bounds[0] == 0.0  # 4 of 4 right happens by chance with probability 1/16 > 0.05
    assert all(b < c for b, c in zip(bounds, bounds[1:]))
    # q^r = beta at the boundary: the closed form for all-correct guesses
    assert bounds[-1] == pytest.approx(special.logit(0.05 ** (1 / 256)), abs=1e-5)


@pytest.mark.parametrize("r,v", [(16, 13), (32, 27), (64, 50), (100, 70), (100, 99), (20, 20)])
def test_bound_is_exactly_where_the_binomial_tail_crosses_beta(r, v):
    beta = 0.05
    eps = one_run.epsilon_lower_bound(r, r, v, 0.0, beta)
    assert eps > 0
    assert stats.binom.sf(v - 1, r, special.expit(eps)) <= beta  # refuted at the reported eps ...
    assert stats.binom.sf(v - 1, r, special.expit(eps + 1e-4)) > beta  # ... and not a hair above it


def test_chance_level_guesses_refute_nothing():
    assert one_run.epsilon_lower_bound(64, 64, 32, 0.0, 0.05) == 0.0
    assert one_run.epsilon_lower_bound(64, 64, 38, 0.0, 0.05) == 0.0  # P[Bin(64, 1/2) >= 38] = 0.07
    rng = np.random.default_rng(0)
    found = [one_run.audit(rng.normal(size=500), rng.random(500) < 0.5).epsilon for _ in range(20)]
    assert sum(e > 0 for e in found) <= 3 and max(found) < 0.3  # a level-0.05 test: rarely, and barely, positive


def test_delta_term_is_the_papers_and_only_weakens_the_bound():
    m, r, v, eps, delta = 100, 40, 33, 0.8, 1e-3
    q = special.expit(eps)
    tail = stats.binom.sf(v - 1, r, q)
    alpha = max((stats.binom.sf(v - i - 1, r, q) - tail) / i for i in range(1, v + 1))
    assert one_run.p_value(m, r, v, eps, delta) == pytest.approx(tail + 2 * m * delta * alpha, rel=1e-9)
    assert one_run.p_value(m, r, v, eps, 0.0) == pytest.approx(tail, rel=1e-12)
    assert one_run.epsilon_lower_bound(m, r, v, delta, 0.05) < one_run.epsilon_lower_bound(m, r, v, 0.0, 0.05)


def test_guesses_and_multiple_comparisons():
    scores = np.array([0.1, 5.0, -3.0, 2.0, 0.0, -1.0])
    assert one_run.guesses(scores, 2, 1).tolist() == [0, 1, -1, 1, 0, 0]
    with pytest.raises(ConfigError, match="k\\+"):
        one_run.guesses(scores, 4, 3)
    members = scores > 0.05
    choices = [(1, 1), (2, 2), (3, 3)]
    res = one_run.audit(np.arange(64.0), np.arange(64) >= 32, choices=[(16, 16), (32, 32)])
    assert (res.r, res.correct, res.choices) == (64, 64, 2)
    assert res.epsilon == pytest.approx(one_run.epsilon_lower_bound(64, 64, 64, 0.0, 0.05 / 2), abs=1e-9)
    assert res.epsilon == pytest.approx(one_run.max_bound(64, 0.05, 0.0, 2), abs=1e-9)
    assert one_run.audit(scores, members, choices=choices).choices == 3
    with pytest.raises(ConfigError, match="one score per canary"):
        one_run.audit(scores, members[:3])


# --- the experiment on our detector ----------------------------------------------------------------------------


def _train(**kw) -> TrainConfig:
    return TrainConfig(imgsz=64, batch_size=16, optimizer="adamw", lr=0.01, schedule="constant", warmup_steps=0,
                       device="cpu", augment=NO_AUGMENT, imbalance=ImbalanceConfig(mode="none"), **kw)


@pytest.fixture
def site(tmp_path):
    """A site with 3 training images: most of what it trains on is canaries, so a non-private run memorises them."""
    return toy_dataset(tmp_path / "site", n=4, positives=4) / "data.yaml"


def test_non_private_training_is_caught(site):
    torch.manual_seed(0)
    cfg = MiaConfig(canaries=32, dp=False, seed=0, train=_train(max_steps=STEPS))
    report = run_audit(build_model(GROUP), site, cfg, progress=False)
    a = report.audit
    assert report.accountant is None and report.noise_multiplier is None
    assert len(report.scores) == 32 and report.train_images == 3 + sum(report.members)
    assert a.correct >= 0.9 * a.r
    assert a.epsilon > 0.5  # the audit has power: membership of an unprotected run is visible


def test_dp_run_stays_within_the_accountant_via_the_command(site, tmp_path):
    """The control's training with DP-SGD added: the bound falls from well above 0.5 to about 0, and stays below an
    accountant epsilon small enough for these canaries to refute."""
    torch.manual_seed(0)
    weights = save_nano(tmp_path / "start.safetensors", imgsz=64, spec=GROUP)
    parser = argparse.ArgumentParser()
    add_mia(parser.add_subparsers(dest="command"))
    out = tmp_path / "audit"
    args = parser.parse_args(["mia", "--model", str(weights), "--data", str(site), "--canaries", "32",
                              "--noise-multiplier", "12", "--clip", "1", "--batch-size", "16", "--physical-batch", "16",
                              "--steps", str(STEPS), "--optimizer", "adamw", "--lr", "0.01", "--device", "cpu",
                              "--out", str(out), "--quiet"])
    assert args.func(args) == 0
    report = json.loads((out / "mia_audit.json").read_text())
    assert (out / "mia_audit.png").stat().st_size > 10_000
    acc = epsilons([Mechanism(12.0, report["sample_rate"], STEPS)], report["delta"])
    assert report["steps"] == STEPS and report["accountant"] == pytest.approx(acc)
    assert acc["epsilon"] < report["max_possible"]  # so "at or below the accountant" is a claim this audit can break
    assert report["audit"]["epsilon"] <= min(acc["rdp"], acc["prv"])
    assert report["audit"]["epsilon"] < 0.3


def test_bad_requests_are_refused_before_training(site):
    model = build_model(GROUP)
    with pytest.raises(ConfigError, match="exactly one of --noise-multiplier or --epsilon"):
        run_audit(model, site, MiaConfig(canaries=8, train=_train(max_steps=1)), progress=False)
    with pytest.raises(ConfigError, match="fewer than --canaries 8"):
        run_audit(model, site, MiaConfig(canaries=8, source="val", dp=False, train=_train(max_steps=1)),
                  progress=False)
    with pytest.raises(ConfigError, match="model.norm=group"):
        run_audit(build_model(NANO), site,
                  MiaConfig(canaries=4, noise_multiplier=1.0, train=_train(max_steps=1)), progress=False)


def test_canaries_taken_from_the_training_split_leave_it(tmp_path):
    spec = load_spec(toy_dataset(tmp_path / "site", n=16, positives=16) / "data.yaml")
    work = tmp_path / "work"
    work.mkdir()
    canaries, site = make_canaries(MiaConfig(canaries=5, source="train", labels="own", dp=False), spec, 64, work)
    train = spec.images("train")
    assert len(canaries.images) == 5 and set(canaries.images) <= set(train)
    assert sorted(site + canaries.images) == sorted(train)  # out-canaries are not trained on unless drawn in
    for img, lab in zip(canaries.images, canaries.label_files):
        assert lab.read_text() == spec.label_file(img).read_text()  # own labels, copied under the work dir
    assert draw_members(100_000, 0).mean() == pytest.approx(0.5, abs=0.01)
    assert draw_members(64, 3).tolist() == draw_members(64, 3).tolist()
