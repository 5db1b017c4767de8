"""The one local-training engine: centralised training and every federated site call `train_local`.

It starts from the weights already in the model, runs a number of epochs or optimiser steps, and returns new
weights and metrics. DP-SGD plugs in through `PrivacyHook` (which may wrap the model, optimiser and loader, e.g.
with Opacus), so there is no second training path; the per-image loss keeps each image's gradient its own.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler
from ultralytics.utils.torch_utils import ModelEMA

from common.config import ImbalanceConfig, TrainConfig
from common.data.dataset import DetectionDataset, model_input
from common.engine.device import seed_everything, select_device
from common.engine.loader import auto_workers, available_cores, make_loader
from common.engine.precision import StepFormat, memory_format, step_format, to_fp32
from common.errors import ConfigError, FracflError
from common.nn.loss import PerImageDetectionLoss
from common.nn.model import layer_parts
from common.nn.weights import state_to_save
from common.utils.progress import progress_bar

CHECK_EVERY = 25  # steps between divergence checks and progress updates (each waits for the device)


class TrainingDiverged(FracflError):
    """The loss became NaN or infinite: the weights are not returned, so nothing corrupt leaves the site."""


class PrivacyHook(Protocol):
    """What DP-SGD needs from the engine: wrap the pieces before the first step (the returned loader's length is
    the number of optimiser steps per epoch), split its batches for memory, and undo the wrapping at the end."""

    def wrap(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader
    ) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]: ...

    def batches(self, loader: DataLoader, optimizer: torch.optim.Optimizer) -> Iterable[dict]: ...

    def release(self) -> None: ...


@dataclass
class TrainResult:
    state: dict[str, torch.Tensor]  # the EMA weights when train.ema_decay is set, else the last weights
    metrics: dict[str, float] = field(default_factory=dict)


def image_weights(positive: np.ndarray, cfg: ImbalanceConfig) -> np.ndarray:
    """Per-image loss weights. `reweight`: fracture images get `positive_fraction` of the total (mean weight 1),
    so each weight depends on the whole set; `constant`: `positive_weight` for a fracture image, `negative_weight`
    otherwise, so each depends on that image alone (what DP-SGD needs). Under DP-SGD's per-image clipping only a
    weight that brings an image's gradient below the clipping norm counts: fracture images' gradients are far above
    it whatever their weight, so there the balance is set by `negative_weight` (docs/privacy.md)."""
    if cfg.mode == "constant":
        for key in ("positive_weight", "negative_weight"):
            if not getattr(cfg, key) > 0:
                raise ConfigError(f"train.imbalance.{key}: must be > 0, got {getattr(cfg, key)}")
        return np.where(positive, float(cfg.positive_weight), float(cfg.negative_weight))
    p = float(positive.mean()) if len(positive) else 0.0
    if cfg.mode == "none" or p in (0.0, 1.0):
        return np.ones(len(positive), np.float64)
    if not 0 < cfg.positive_fraction < 1:
        raise ConfigError(f"train.imbalance.positive_fraction: must be in (0, 1), got {cfg.positive_fraction}")
    return np.where(positive, cfg.positive_fraction / p, (1 - cfg.positive_fraction) / (1 - p))


def _loader(data: DetectionDataset, cfg: TrainConfig, seed: int, device: torch.device) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    if cfg.imbalance.mode == "oversample":
        w = torch.as_tensor(image_weights(data.positive, cfg.imbalance))
        sampler = WeightedRandomSampler(w, num_samples=len(data), replacement=True, generator=gen)
    elif cfg.imbalance.mode in ("none", "reweight", "constant"):
        sampler = RandomSampler(data, generator=gen)
    else:
        raise ConfigError(
            f"train.imbalance.mode: expected none, oversample, reweight or constant, got {cfg.imbalance.mode!r}"
        )
    workers = auto_workers(device) if cfg.workers is None else cfg.workers
    data.warm_cache(cfg.cache_mb * 2**20, threads=available_cores())  # before the workers fork: they share it
    return make_loader(data, cfg.batch_size, sampler, workers, device)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only, as Ultralytics does (not on biases or normalisation)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_norm = isinstance(module, (nn.BatchNorm2d, nn.GroupNorm))
            (no_decay if name == "bias" or is_norm else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    raise ConfigError(f"train.optimizer: expected sgd or adamw, got {cfg.optimizer!r}")


def _lr_lambda(cfg: TrainConfig, total: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Warmup (`warmup_epochs` of this batch size's epochs, else `warmup_steps`), then constant, cosine or linear
    decay to a tenth; the whole curve is scaled by batch_size / lr_reference_batch when that is set."""
    if cfg.schedule not in ("constant", "cosine", "linear"):
        raise ConfigError(f"train.schedule: expected constant, cosine or linear, got {cfg.schedule!r}")
    warmup = round(cfg.warmup_epochs * steps_per_epoch) if cfg.warmup_epochs is not None else cfg.warmup_steps
    scale = cfg.batch_size / cfg.lr_reference_batch if cfg.lr_reference_batch else 1.0

    def f(step: int) -> float:
        if warmup and step < warmup:
            return scale * (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        shape = {"constant": 1.0, "cosine": 0.5 * (1 + math.cos(math.pi * t)), "linear": 1.0 - t}[cfg.schedule]
        return scale * (1.0 if cfg.schedule == "constant" else 0.1 + 0.9 * shape)

    return f


# The detection head's two branches (Ultralytics' Detect: cv2 regresses boxes, cv3 scores classes). Training only the
# class branch under DP-SGD noises about a tenth of the parameters of the whole network (yolov7_nano: 23 k of 290 k).
HEAD_BRANCHES = {"head.box": "cv2.", "head.cls": "cv3."}


def freeze_parts(model: nn.Module, parts: list[str]) -> None:
    """Keep the named parts (backbone, neck, head, or one head branch: head.box, head.cls) fixed; the DFL projection
    stays frozen as Ultralytics has it."""
    idx = layer_parts(model)
    unknown = set(parts) - set(idx) - set(HEAD_BRANCHES)
    if unknown:
        raise ConfigError(
            f"train.freeze: unknown part(s) {sorted(unknown)}; choose from {sorted(idx) + sorted(HEAD_BRANCHES)}"
        )
    frozen = {i for p in parts if p in idx for i in idx[p]}
    branches = tuple(HEAD_BRANCHES[p] for p in parts if p in HEAD_BRANCHES)
    head = idx["head"]
    for i, layer in enumerate(model.model):
        for name, p in layer.named_parameters():
            in_branch = bool(branches) and i in head and name.startswith(branches)
            p.requires_grad = i not in frozen and not in_branch and ".dfl" not in f".{name}"


def train_local(
    model: nn.Module,
    data: DetectionDataset,
    cfg: TrainConfig,
    *,
    seed: int = 0,
    privacy: PrivacyHook | None = None,
    progress: bool = True,
    description: str = "train",
    on_epoch_end: Callable[[int, dict[str, float], nn.Module], bool | None] | None = None,
    proximal_mu: float = 0.0,
    first_epoch: int = 0,
) -> TrainResult:
    """Train `model` in place on `data` and return its new weights (fp32 state dict) and training metrics. With
    `train.ema_decay` the returned weights (and the model at the end) are the exponential moving average of the
    weights over the steps (Ultralytics' ModelEMA); under DP-SGD that is post-processing, at no privacy cost.

    `on_epoch_end(epoch, metrics, weights)` runs after each full epoch with the weights to validate (the EMA model
    when `train.ema_decay` is set); returning True stops training (early stopping). The model is left in train mode.
    `proximal_mu` > 0 adds FedProx's term mu/2 * ||w - w_start||^2, pulling local weights towards the global model.
    `first_epoch` numbers the augmentation draws, so successive federated rounds see new ones.
    """
    if privacy is not None and cfg.augment.mixes_images:
        raise ConfigError("train.augment.mosaic: mosaic mixes images, which breaks DP-SGD's per-image guarantee")
    if privacy is not None and cfg.imbalance.mode in ("reweight", "oversample"):
        raise ConfigError(
            f"train.imbalance.mode={cfg.imbalance.mode} with DP-SGD: it derives each image's weight or "
            "draw from the site's fracture share, so removing one image changes the others' and the "
            "sensitivity is no longer the clipping norm; use train.imbalance.mode=constant (a fixed "
            "weight per class) or none"
        )
    if privacy is not None and proximal_mu > 0:
        raise ConfigError(
            "strategy=fedprox with privacy=dp_sgd: the DP optimiser does not apply the proximal term; "
            "use fedavg or another strategy without a site-side term"
        )
    seed_everything(seed)
    device = select_device(cfg.device)
    model.to(device).train()
    freeze_parts(model, cfg.freeze)
    fmt = step_format(
        cfg.precision,
        cfg.channels_last,
        device,
        private=privacy is not None,
        group_norm=any(isinstance(m, nn.GroupNorm) for m in model.modules()),
    )
    criterion = PerImageDetectionLoss(model)
    weights = torch.as_tensor(
        image_weights(data.positive, cfg.imbalance) if cfg.imbalance.mode != "oversample" else np.ones(len(data)),
        dtype=torch.float32,
    ).to(device)
    optimizer = _optimizer(model, cfg)
    loader = _loader(data, cfg, seed, device)
    anchors = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    ema = (
        ModelEMA(model, cfg.ema_decay, cfg.ema_tau) if cfg.ema_decay else None
    )  # post-processing: no extra privacy cost
    net, batches = model, loader
    if privacy is not None:
        net, optimizer, loader = privacy.wrap(model, optimizer, loader)
        batches = privacy.batches(loader, optimizer)  # physical batches; several may make one logical step
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, total, len(loader)))

    # Loss sums and the divergence flag stay on the device: reading them waits for the GPU, so that happens
    # every CHECK_EVERY steps and at the end of each epoch, not after every step.
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    finite = torch.ones((), dtype=torch.bool, device=device)
    images, epoch_images, steps, outside, t0 = 0, 0, 0, 0.0, time.perf_counter()
    with progress_bar(progress) as bar, _released(privacy), memory_format(model, fmt):
        task = bar.add_task(description, total=total)
        epoch = 0
        while steps < total:
            data.set_epoch(first_epoch + epoch)
            sums.zero_()
            epoch_images = 0
            for batch in batches:
                if steps >= total:
                    break
                n = len(batch["index"])
                optimizer.zero_grad(set_to_none=True)
                if n == 0:  # Poisson sampling (DP) can draw an empty batch: it still counts as a step
                    optimizer.step()
                else:
                    per_image, parts = _forward(net, criterion, batch, device, fmt)
                    loss = (per_image * weights[batch["index"].to(device, non_blocking=True)]).mean()
                    finite &= torch.isfinite(loss)
                    loss.backward()
                    for p, p0 in zip(model.parameters() if anchors else (), anchors):
                        if p.grad is not None:
                            p.grad.add_(p.detach() - p0, alpha=proximal_mu)
                    if privacy is None and cfg.grad_clip:
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    optimizer.step()
                    sums += torch.cat([per_image.detach().sum().view(1), parts.sum(0)]).double()
                    images += n
                    epoch_images += n
                if getattr(optimizer, "_is_last_step_skipped", False):
                    continue  # DP: gradients of this physical batch were stored; the logical step comes later
                scheduler.step()
                if ema is not None:
                    ema.update(model)
                steps += 1
                if steps % CHECK_EVERY == 0:
                    _check(finite, description, steps)
                    bar.update(
                        task,
                        completed=steps,
                        description=f"{description} loss {float(sums[0]) / max(epoch_images, 1):.3f}",
                    )
            epoch += 1
            _check(finite, description, steps)
            bar.update(task, completed=steps)
            if on_epoch_end is not None:
                t_cb = time.perf_counter()
                done = _metrics(sums, epoch_images, images, steps, epoch, t_cb - t0 - outside)
                stop = on_epoch_end(epoch - 1, done, ema.ema if ema is not None else model)
                model.train()
                outside += time.perf_counter() - t_cb  # validation is not training time
                if stop:
                    break
    if ema is not None:  # the model ends holding the weights that are returned
        model.load_state_dict(ema.ema.state_dict())
    metrics = _metrics(sums, epoch_images, images, steps, epoch, time.perf_counter() - t0 - outside)
    metrics["format"] = fmt.describe()
    return TrainResult(state=state_to_save(model), metrics=metrics)


def _forward(
    net: nn.Module, criterion: PerImageDetectionLoss, batch: dict, device: torch.device, fmt: StepFormat
) -> tuple[torch.Tensor, torch.Tensor]:
    """The network under the step's autocast, the loss in fp32."""
    with fmt.context(device):
        preds = net(model_input(batch["img"], device, fmt.channels_last))
    return criterion.per_image(to_fp32(preds), _to(batch, device))


def _check(finite: torch.Tensor, description: str, steps: int) -> None:
    if not bool(finite):
        raise TrainingDiverged(
            f"{description}: the loss became NaN or infinite before step {steps}; lower train.lr or check the data"
        )


@contextlib.contextmanager
def _released(privacy: PrivacyHook | None) -> Iterator[None]:
    """Undo the privacy wrapping however training ends (models are reused between rounds)."""
    try:
        yield
    finally:
        if privacy is not None:
            privacy.release()


def _metrics(
    sums: torch.Tensor, epoch_images: int, images: int, steps: int, epochs: int, seconds: float
) -> dict[str, Any]:
    """Loss parts are means over the last epoch's images; counts and speed cover the whole call."""
    mean = (sums / max(epoch_images, 1)).cpu().tolist()
    return {
        "loss": mean[0],
        "box_loss": mean[1],
        "cls_loss": mean[2],
        "dfl_loss": mean[3],
        "steps": steps,
        "images": images,
        "epochs": epochs,
        "seconds": seconds,
        "images_per_s": images / max(seconds, 1e-9),
    }


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: batch[k].to(device, non_blocking=True) for k in ("batch_idx", "cls", "bboxes")}
