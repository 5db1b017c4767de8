"""The one-run canary audit of our detector: does one training run with the site's DP-SGD let an attacker tell which
canary radiographs were trained on, and how far does that get beyond the accountant's epsilon?

Steps (each a small function): make m canaries; put each in the site's training set with probability 1/2 (seeded);
score every canary's per-image loss with the starting model; train once from that model with the same mechanism the
site uses (DPSGD hook: noise multiplier, clipping, Poisson sample rate, steps), or without DP as a control; score
again; the drop in loss is the membership score; the one-run statistics (`one_run.audit`) turn guesses into an
empirical epsilon lower bound, reported beside the accountant's RDP and PRV figures for the same mechanism, and
judged against the tighter of the two (`outcome`).

Canaries are "mislabelled" by default: an image with a box at a random place, unrelated to its content. The model can
only lower such a canary's loss by memorising it, which makes membership as visible as it gets for an input-space
(black-box loss) attack; a bound from canaries that look like ordinary radiographs is weaker still.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from common.config import AugmentConfig, ImbalanceConfig, TrainConfig
from common.data.dataset import DetectionDataset, collate, model_input
from common.data.spec import DatasetSpec, load_spec
from common.engine.device import select_device
from common.engine.trainer import train_local
from common.errors import ConfigError
from common.nn.loss import PerImageDetectionLoss
from common.privacy import one_run
from common.privacy.accounting import Mechanism, calibrate, default_delta, epsilons, sample_rate, steps_per_round
from common.privacy.dp_sgd import DPSGD

NO_AUGMENT = AugmentConfig(hflip=0, degrees=0, translate=0, scale=0, brightness=0, contrast=0, gamma=0, noise=0)
LABELS = ("random", "own")


@dataclass(frozen=True)
class MiaConfig:
    """One audit run. `source`: "synthetic" (noise images) or a split of the data ("train" takes the canaries out of
    the site's training images). `labels`: "random" (mislabelled canaries) or "own" (the data's labels)."""

    canaries: int = 64
    source: str = "synthetic"
    labels: str = "random"
    dp: bool = True
    noise_multiplier: float | None = None  # None with dp: calibrated to `target_epsilon`
    target_epsilon: float | None = None
    max_grad_norm: float = 1.0
    max_physical_batch: int = 8
    delta: float | None = None  # None: the site's default, min(1e-5, 0.1 / N)
    beta: float = 0.05  # the bound holds with confidence 1 - beta
    seed: int = 0
    grad_sample_mode: str = "lean"
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(augment=NO_AUGMENT, imbalance=ImbalanceConfig(mode="none"))
    )
    setup: str = "the audit's own defaults, not a site's training configuration"  # where `train` came from
    differs: tuple[str, ...] = ()  # known differences from the site's training, named by whoever built `train`

    def check(self) -> None:
        if self.canaries < 2:
            raise ConfigError(f"audit mia: --canaries must be at least 2, got {self.canaries}")
        if self.labels not in LABELS:
            raise ConfigError(f"audit mia: canary labels must be one of {LABELS}, got {self.labels!r}")
        if self.source == "synthetic" and self.labels == "own":
            raise ConfigError("audit mia: synthetic canaries have no labels of their own (use labels=random)")
        if self.dp and (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ConfigError("audit mia: with DP give exactly one of --noise-multiplier or --epsilon")
        if not 0 < self.beta < 1:
            raise ConfigError(f"audit mia: --beta must be in (0, 1), got {self.beta}")


@dataclass
class Canaries:
    images: list[Path]
    label_files: list[Path]


@dataclass
class MiaReport:
    """What governance reads: the empirical bound next to the accountant's claim for the same mechanism."""

    audit: one_run.OneRunResult
    dp: bool
    delta: float
    noise_multiplier: float | None
    max_grad_norm: float | None
    sample_rate: float
    steps: int
    train_images: int  # site images plus the canaries drawn in
    accountant: dict[str, float] | None  # {"rdp", "prv", "epsilon"}; None without DP (no guarantee)
    claimed: float | None  # the tightest accountant figure, min(RDP, PRV): a bound above it is a violation
    max_possible: float  # the bound if every guess were right: what m canaries can show at most
    outcome: str  # violation | inconclusive | consistent | control (see `outcome`)
    setup: str  # where the training configuration came from
    differences: list[str]  # how this training differs from the site's
    members: list[bool]
    scores: list[float]
    source: str
    labels: str
    seed: int

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["audit"] = self.audit.to_dict()
        return out


def outcome(bound: float, claimed: float | None, max_possible: float) -> str:
    """`violation`: the bound exceeds the tightest accountant epsilon (both are valid upper bounds, so exceeding
    either refutes the implementation); `inconclusive`: even all-correct guesses could not exceed it, so no violation
    was detectable at this epsilon; `consistent`: a violation was detectable and not found; `control`: no DP."""
    if claimed is None:
        return "control"
    if bound > claimed:
        return "violation"
    return "inconclusive" if max_possible <= claimed else "consistent"


def random_box_label(rng: np.random.Generator, nc: int) -> str:
    """One YOLO row: a box of 15-40 % of the side at a random place, of a random class."""
    w, h = rng.uniform(0.15, 0.4, 2)
    x, y = rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2)
    return f"{int(rng.integers(nc))} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n"


def make_canaries(cfg: MiaConfig, spec: DatasetSpec, imgsz: int, workdir: Path) -> tuple[Canaries, list[Path]]:
    """The m canaries (labels written under `workdir`; data images are referenced, never copied) and the images of
    the site's training split that are not canaries."""
    rng = np.random.default_rng((cfg.seed, 1))
    train = spec.images("train")
    if cfg.source == "synthetic":
        images = []
        for i in range(cfg.canaries):  # smooth background plus noise: each canary a distinct image
            base = rng.normal(0, 1, (imgsz // 8 + 1, imgsz // 8 + 1))
            big = np.array(Image.fromarray(base.astype(np.float32)).resize((imgsz, imgsz), Image.BICUBIC))
            img = 90 + 25 * big + rng.normal(0, 12, (imgsz, imgsz))
            images.append(workdir / f"canary_{i:04d}.png")
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(images[-1])
        own: list[Path] = []
    else:
        pool = spec.images(cfg.source)
        if len(pool) < cfg.canaries:
            raise ConfigError(
                f"audit mia: split {cfg.source!r} of {spec.source or spec.root} has {len(pool)} images, "
                f"fewer than --canaries {cfg.canaries}"
            )
        images = [pool[i] for i in sorted(rng.choice(len(pool), cfg.canaries, replace=False))]
        own = [spec.label_file(p) for p in images]
    taken = set(images)
    labels = []
    for i in range(len(images)):
        labels.append(workdir / f"canary_{i:04d}.txt")
        labels[-1].write_text(
            random_box_label(rng, spec.nc) if cfg.labels == "random" else own[i].read_text() if own[i].is_file() else ""
        )
    return Canaries(images, labels), [p for p in train if p not in taken]


def draw_members(m: int, seed: int) -> np.ndarray:
    """Each canary in with probability 1/2, independently: the randomness the audit's statistics rest on."""
    return np.random.default_rng((seed, 2)).random(m) < 0.5


@torch.no_grad()
def per_image_losses(
    model: nn.Module, data: DetectionDataset, device: torch.device, batch_size: int = 16
) -> np.ndarray:
    """The training loss of each image, without updating anything (BatchNorm layers use their running statistics)."""
    was_training = model.training
    model.to(device).train()
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.eval()
    criterion = PerImageDetectionLoss(model)
    out = []
    for batch in DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate):
        targets = {k: batch[k].to(device) for k in ("batch_idx", "cls", "bboxes")}
        out.append(criterion.per_image(model(model_input(batch["img"], device)), targets)[0].double().cpu())
    model.train(was_training)
    return torch.cat(out).numpy()


def run_audit(model: nn.Module, data: str | Path, cfg: MiaConfig, *, progress: bool = True) -> MiaReport:
    """Train `model` (in place) once on the site's data with half the canaries, and audit that run."""
    cfg.check()
    spec = load_spec(data)
    imgsz = cfg.train.imgsz
    with tempfile.TemporaryDirectory(prefix="fracfl-mia-") as tmp:
        canaries, site = make_canaries(cfg, spec, imgsz, Path(tmp))
        members = draw_members(cfg.canaries, cfg.seed)
        canary_set = DetectionDataset(canaries.images, spec.nc, imgsz, label_files=canaries.label_files, cache=True)
        drawn = [i for i in range(cfg.canaries) if members[i]]
        images = site + [canaries.images[i] for i in drawn]
        if not images:
            raise ConfigError("audit mia: the training set is empty (no site images and no canary drawn in)")
        labels = [spec.label_file(p) for p in site] + [canaries.label_files[i] for i in drawn]
        train_set = DetectionDataset(
            images, spec.nc, imgsz, augment=cfg.train.augment, cache=True, seed=cfg.seed, label_files=labels
        )
        n = len(train_set)
        q = sample_rate(cfg.train.batch_size, n)  # as the site computes it, from its actual training set
        steps = steps_per_round(cfg.train.epochs, cfg.train.max_steps, q)
        delta = cfg.delta if cfg.delta is not None else default_delta(n)
        sigma, hook = None, None
        if cfg.dp:
            sigma = cfg.noise_multiplier
            if sigma is None:
                sigma = calibrate([], q, steps, float(cfg.target_epsilon), delta)
                if sigma is None:
                    raise ConfigError(
                        f"audit mia: no noise multiplier reaches epsilon {cfg.target_epsilon} "
                        f"in {steps} steps at sample rate {q:.4f}"
                    )
            hook = DPSGD(sigma, cfg.max_grad_norm, q, cfg.max_physical_batch, cfg.grad_sample_mode, seed=cfg.seed)
        device = select_device(cfg.train.device)
        before = per_image_losses(model, canary_set, device)
        result = train_local(
            model,
            train_set,
            replace(cfg.train, max_steps=steps),
            seed=cfg.seed,
            privacy=hook,
            progress=progress,
            description="audit training (DP)" if cfg.dp else "audit training",
        )
        after = per_image_losses(model, canary_set, device)
    scores = before - after  # members' own (memorised) labels gain most; the start model is fixed before the draw
    steps = int(result.metrics["steps"])
    accountant = epsilons([Mechanism(sigma, q, steps)], delta) if cfg.dp else None
    claimed = min(accountant["rdp"], accountant["prv"]) if accountant else None
    audit = one_run.audit(scores, members, beta=cfg.beta, delta=delta)
    most = one_run.max_bound(cfg.canaries, cfg.beta, delta, audit.choices)
    return MiaReport(
        audit=audit,
        dp=cfg.dp,
        delta=delta,
        noise_multiplier=sigma,
        max_grad_norm=cfg.max_grad_norm if cfg.dp else None,
        sample_rate=q,
        steps=steps,
        train_images=n,
        accountant=accountant,
        claimed=claimed,
        max_possible=most,
        outcome=outcome(audit.epsilon, claimed, most),
        setup=cfg.setup,
        differences=[*cfg.differs, *_inherent_differences(cfg, len(spec.images("train")), n, q)],
        members=[bool(b) for b in members],
        scores=[float(s) for s in scores],
        source=cfg.source,
        labels=cfg.labels,
        seed=cfg.seed,
    )


def _inherent_differences(cfg: MiaConfig, site_images: int, n: int, q: float) -> list[str]:
    """What no configuration removes: the canaries change N (so the sample rate), the draws are seeded, and one
    local training stands for the site's rounds."""
    own = (
        f"{sample_rate(cfg.train.batch_size, site_images):.4f} over its {site_images}" if site_images else "n/a over 0"
    )
    out = [
        (
            f"sample rate {q:.4f} = batch / N over {n} images (the site's training images plus the canaries drawn "
            f"in); the site's own would be {own} images"
        )
    ]
    if cfg.dp:
        out.append(
            "noise and Poisson sampling are seeded from --seed so the audit can be repeated; a site draws them "
            "from the operating system's CSPRNG (same distributions)"
        )
    out.append(
        "one local training from --model; the federated rounds around it (other sites' updates, earlier "
        "spending) are not simulated"
    )
    return out
