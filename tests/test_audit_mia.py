"""The one-run membership audit: its statistics against scipy's binomial, and the canary experiment on our detector,
through the command and the site's composed training setup: at epsilon 1 correct DP-SGD is "consistent" and the
same training with its noise removed (the accountant unaware) is a "violation"; at epsilon 8 it says it cannot tell."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy import special, stats
from tests_support import GROUP_NANO as GROUP
from tests_support import NANO, save_nano, toy_dataset

from common.config import ImbalanceConfig, TrainConfig
from common.data.spec import load_spec
from common.errors import ConfigError
from common.nn.model import build_model
from common.privacy import canary_audit, one_run
from common.privacy.accounting import Mechanism, epsilons
from common.privacy.canary_audit import NO_AUGMENT, MiaConfig, draw_members, make_canaries, outcome, run_audit
from common.privacy.dp_sgd import DPSGD
from common.privacy.mia_report import NOT_A_PROOF, canaries_needed
from server.commands.audit_mia import add_mia
from server.job import compose
from server.mia_setup import apply, site_setup

STEPS = 48  # the control and the DP runs train identically (same seeds, canaries and draw) but for DP-SGD
# The site's run: a DP-SGD site of this toy size (augmentation off: see docs/privacy-audit-mia.md on its power).
SITE = "privacy=dp_sgd augment=none train.imgsz=64 train.batch_size=16 train.optimizer=adamw train.lr=0.01"


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
    return TrainConfig(
        imgsz=64,
        batch_size=16,
        optimizer="adamw",
        lr=0.01,
        schedule="constant",
        warmup_steps=0,
        device="cpu",
        augment=NO_AUGMENT,
        imbalance=ImbalanceConfig(mode="none"),
        **kw,
    )


@pytest.fixture
def site(tmp_path):
    """A site with 3 training images: most of what it trains on is canaries, so a non-private run memorises them."""
    return toy_dataset(tmp_path / "site", n=4, positives=4) / "data.yaml"


def test_non_private_training_is_caught(site):
    torch.manual_seed(0)
    cfg = MiaConfig(canaries=32, dp=False, seed=0, train=_train(max_steps=STEPS))
    report = run_audit(build_model(GROUP), site, cfg, progress=False)
    a = report.audit
    assert report.accountant is None and report.noise_multiplier is None and report.outcome == "control"
    assert len(report.scores) == 32 and report.train_images == 3 + sum(report.members)
    assert a.correct >= 0.9 * a.r
    assert a.epsilon > 0.5  # the audit has power: membership of an unprotected run is visible


class _NoiseDropped(DPSGD):
    """The injected bug: the optimiser adds no noise while the accountant is told the planned noise multiplier."""

    def wrap(self, model, optimizer, loader):
        module, dp_opt, logical = super().wrap(model, optimizer, loader)
        dp_opt.noise_multiplier = 0.0
        return module, dp_opt, logical


def _audit(site, tmp_path, *extra: str) -> tuple[int, dict]:
    """`fracfl audit mia` as a site runs it, from a fresh GroupNorm model: exit status and mia_audit.json."""
    torch.manual_seed(0)
    weights = save_nano(tmp_path / "start.safetensors", imgsz=64, spec=GROUP)
    parser = argparse.ArgumentParser()
    add_mia(parser.add_subparsers(dest="command"))
    out = tmp_path / "audit"
    args = parser.parse_args(
        [
            "mia",
            "--model",
            str(weights),
            "--data",
            str(site),
            "--overrides",
            SITE,
            "--device",
            "cpu",
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]
    )
    code = args.func(args)
    return code, json.loads((out / "mia_audit.json").read_text())


def test_correct_dp_at_epsilon_1_is_consistent(site, tmp_path):
    """The control's training with DP-SGD calibrated to epsilon 1: the bound falls from well above 1 to about 0, where
    these canaries could have shown up to 2 (so "consistent" is a claim this audit can break)."""
    code, report = _audit(site, tmp_path, "--canaries", "32", "--epsilon", "1", "--steps", str(STEPS))
    assert code == 0 and report["outcome"] == "consistent"
    assert (tmp_path / "audit" / "mia_audit.png").stat().st_size > 10_000
    acc = epsilons([Mechanism(report["noise_multiplier"], report["sample_rate"], STEPS)], report["delta"])
    assert report["steps"] == STEPS and report["accountant"] == pytest.approx(acc)
    assert acc["rdp"] <= 1.0 and report["claimed"] == pytest.approx(min(acc["rdp"], acc["prv"]))
    assert report["claimed"] < report["max_possible"]
    assert report["audit"]["epsilon"] < 0.3
    assert report["verdict"].startswith("consistent") and report["verdict"].endswith(NOT_A_PROOF)
    assert report["setup"] == f"conf/federated.yaml with overrides '{SITE}'"
    assert report["differences"][0] == "train.max_steps 48 instead of the site's None"  # default: one round's steps
    assert any(d.startswith("sample rate ") for d in report["differences"])


def test_missing_noise_is_caught_at_epsilon_1(site, tmp_path, monkeypatch):
    """The same audit with the noise silently dropped: the accountant still says epsilon 1, the canaries show more."""
    monkeypatch.setattr(canary_audit, "DPSGD", _NoiseDropped)
    code, report = _audit(site, tmp_path, "--canaries", "32", "--epsilon", "1", "--steps", str(STEPS))
    assert code == 1 and report["outcome"] == "violation"
    assert report["noise_multiplier"] > 10  # what the accountant believes
    assert report["audit"]["epsilon"] > report["accountant"]["prv"]
    assert report["verdict"].startswith("VIOLATION") and report["verdict"].endswith(NOT_A_PROOF)


def test_at_a_sites_budget_the_audit_says_it_cannot_tell(site, tmp_path):
    """Epsilon 8 with 8 canaries: even all-correct guesses could not refute it, so exit 3, never "consistent"."""
    code, report = _audit(site, tmp_path, "--canaries", "8", "--epsilon", "8", "--steps", "2")
    assert code == 3 and report["outcome"] == "inconclusive"
    assert report["max_possible"] < report["claimed"] <= 8.0
    assert "cannot detect a violation at this epsilon" in report["verdict"]
    assert report["verdict"].endswith(NOT_A_PROOF)


def test_outcomes_are_judged_against_the_tighter_accountant():
    assert outcome(0.95, min(1.0, 0.9), 2.0) == "violation"  # above PRV 0.9, below RDP 1.0: still a violation
    assert outcome(0.5, 0.9, 2.0) == "consistent"
    assert outcome(0.5, 0.9, 0.9) == "inconclusive"  # the most these canaries can show is not above the claim
    assert outcome(1.5, None, 2.0) == "control"
    # the figure: 256 canaries show at most 4.12 (95 %, three fixed choices, delta 1e-5) ...
    assert one_run.max_bound(256, 0.05, 1e-5, 3) == pytest.approx(4.12, abs=0.01)
    # ... and the all-correct bound needs q^m <= beta / choices: 255 canaries for 4.12, over 12,000 for epsilon 8
    assert canaries_needed(4.12, 0.05, 3) == 255 and canaries_needed(8.0, 0.05, 3) > 12_000


def test_the_site_setup_is_composed_as_the_server_composes_it(tmp_path):
    setup = site_setup()  # default: a DP-SGD site
    assert setup.privacy.mode == "dp_sgd" and setup.train.imbalance.mode == "constant"
    assert setup.train.augment.hflip == 0.5 and setup.train.augment.mosaic == 0.0
    job = tmp_path / "job.yaml"
    OmegaConf.save(compose(["privacy=dp_sgd", "train.batch_size=4", "train.local_epochs=2"]), job)
    own = site_setup(str(job))
    assert (own.train.batch_size, own.train.epochs, own.source) == (4, 2, f"the run configuration {job}")
    train, dp, differs = apply(own, {"batch_size": 4, "lr": 0.5, "imgsz": None}, {"max_grad_norm": 2.0})
    assert (train.batch_size, train.lr, dp["max_grad_norm"]) == (4, 0.5, 2.0)
    assert differs == ["train.lr 0.5 instead of the site's 0.01", "privacy.max_grad_norm 2.0 instead of the site's 1.0"]
    with pytest.raises(ConfigError, match="no such file"):
        site_setup(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="--overrides 'augment=nonexistent'"):
        site_setup(overrides="augment=nonexistent")
    (tmp_path / "other.yaml").write_text("model: {}\n")
    with pytest.raises(ConfigError, match="no 'train' section"):
        site_setup(str(tmp_path / "other.yaml"))


def test_bad_requests_are_refused_before_training(site):
    model = build_model(GROUP)
    with pytest.raises(ConfigError, match="exactly one of --noise-multiplier or --epsilon"):
        run_audit(model, site, MiaConfig(canaries=8, train=_train(max_steps=1)), progress=False)
    with pytest.raises(ConfigError, match="fewer than --canaries 8"):
        run_audit(model, site, MiaConfig(canaries=8, source="val", dp=False, train=_train(max_steps=1)), progress=False)
    with pytest.raises(ConfigError, match="model.norm=group"):
        run_audit(
            build_model(NANO),
            site,
            MiaConfig(canaries=4, noise_multiplier=1.0, train=_train(max_steps=1)),
            progress=False,
        )


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
