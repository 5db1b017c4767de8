"""A centralised training run: the baseline that federated runs are compared with.

It trains with the same engine the sites use, evaluates on the validation split after every epoch, and leaves
everything in its run folder: weights, metrics JSON, per-epoch history (CSV and PNG), plots and error lists.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from common.config import DataConfig, TrainJob
from common.data.dataset import DetectionDataset
from common.engine.device import select_device
from common.engine.evaluate import evaluate_model
from common.engine.trainer import train_local
from common.metrics import write_report
from common.nn.weights import model_from_config, save_weights

log = logging.getLogger("fracfl.train")


def ensure_data(cfg: DataConfig, seed: int, progress: bool = True) -> Path:
    """The dataset path, generating synthetic radiographs there first when it is missing and `synth` is set."""
    path = Path(cfg.path)
    if not path.exists() and cfg.synth is not None:
        from common.synth import generate_dataset, get_profile

        s = cfg.synth
        log.info("generating synthetic radiographs in %s", path)
        generate_dataset(
            path,
            [get_profile(n) for n in s.sites],
            images_per_site=s.images_per_site,
            size=s.size,
            val_fraction=s.val_fraction,
            seed=seed,
            dicom=s.dicom,
            progress=progress,
        )
    return path


def run_training(job: TrainJob, run_dir: Path) -> dict:
    """Train, evaluate each epoch (the EMA weights when enabled), keep the best epoch's weights (early stopping
    after `train.patience` epochs without improvement), save them with the choice in their metadata, the last
    epoch's beside them, and the report; returns the summary written to metrics.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    data = ensure_data(job.data, job.seed, job.progress)
    m = job.model
    model, spec, report = model_from_config(m.arch, m.names, m.width, m.depth, m.norm, m.init)
    if report is not None:
        log.info("initialised from %s", report.summary())
        (run_dir / "init_report.json").write_text(json.dumps(asdict(report), indent=1, default=list))
    t = job.train
    train_set = DetectionDataset.from_data(
        data, job.data.train_split, t.imgsz, augment=t.augment, cache=job.data.cache_images, seed=job.seed
    )
    val_set = DetectionDataset.from_data(data, job.data.val_split, t.imgsz, cache=job.data.cache_images)
    device = select_device(t.device)
    log.info(
        "training %s (%.2f M parameters) on %d images, validating on %d, device %s",
        spec.arch,
        sum(p.numel() for p in model.parameters()) / 1e6,
        len(train_set),
        len(val_set),
        device,
    )

    history: list[dict] = []
    best = _Best(t.patience)

    def after_epoch(epoch: int, train_metrics: dict, weights: torch.nn.Module) -> bool:
        rep = evaluate_model(weights, val_set, job.eval, device, job.progress)
        row = {
            "epoch": epoch + 1,
            **{k: train_metrics[k] for k in ("loss", "box_loss", "cls_loss", "dfl_loss")},
            "map50": rep.map50,
            "map50_95": rep.map50_95,
            "sensitivity": rep.sensitivity,
            "specificity": rep.specificity,
            "roc_auc": rep.roc_auc,
        }
        history.append(row)
        log.info("epoch %d: %s", epoch + 1, rep.summary_line())
        _write_history(history, run_dir)  # after every epoch: a run stopped early still shows its curve
        return best.offer(epoch + 1, rep, weights)

    result = train_local(model, train_set, t, seed=job.seed, progress=job.progress, on_epoch_end=after_epoch)
    last = save_weights(
        model,
        spec,
        run_dir / "weights" / "last.safetensors",
        {"imgsz": t.imgsz, "epochs": result.metrics["epochs"], "source": "fracfl train (last epoch)"},
    )
    if best.report is None:  # no full epoch (max_steps inside the first): the last weights, evaluated now
        best.offer(int(result.metrics["epochs"]), evaluate_model(model, val_set, job.eval, device, job.progress), model)
    model.load_state_dict(best.state)
    selection = {
        "selected_epoch": best.epoch,
        "epochs_run": result.metrics["epochs"],
        "selection": "highest validation mAP50 (then mAP50-95) over the epochs run",
        "patience": t.patience,
        "stopped_early": best.stopped,
    }
    weights = save_weights(
        model,
        spec,
        run_dir / "weights" / "model.safetensors",
        {"imgsz": t.imgsz, "epochs": best.epoch, "source": "fracfl train", **selection},
    )
    write_report(best.report, run_dir / "eval")
    summary = {
        "weights": str(weights),
        "last_weights": str(last),
        "selection": selection,
        "train": result.metrics,
        "val": best.report.to_dict(),
    }
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1, default=str))
    log.info(
        "selected epoch %d of %d%s: %s",
        best.epoch,
        result.metrics["epochs"],
        " (stopped early: no better validation mAP50 for train.patience epochs)" if best.stopped else "",
        best.report.summary_line(),
    )
    log.info("weights: %s", weights)
    return summary


class _Best:
    """The best epoch so far by validation mAP50 (ties: mAP50-95), its weights kept in memory, and whether
    `patience` epochs without improvement have passed (early stopping; None: never)."""

    def __init__(self, patience: int | None):
        self.patience, self.epoch, self.stopped = patience, 0, False
        self.report, self.state, self.key = None, None, (-1.0, -1.0)

    def offer(self, epoch: int, report, weights: torch.nn.Module) -> bool:
        key = (_num(report.map50), _num(report.map50_95))
        if key > self.key:
            self.key, self.epoch, self.report = key, epoch, report
            self.state = {k: v.detach().clone() for k, v in weights.state_dict().items()}
        self.stopped = self.patience is not None and epoch - self.epoch >= self.patience
        return self.stopped


def _num(x: float | None) -> float:
    return -1.0 if x is None or x != x else float(x)


def _write_history(history: list[dict], run_dir: Path) -> None:
    """Per-epoch loss and validation metrics as CSV and as one PNG of curves."""
    if not history:
        return
    with open(run_dir / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(epochs, [h["loss"] for h in history], marker="o", label="train loss (per image)")
    a.set(xlabel="epoch", ylabel="loss", title="Training loss")
    a.legend()
    for key in ("map50", "map50_95", "sensitivity", "specificity", "roc_auc"):
        b.plot(epochs, [h[key] for h in history], marker="o", label=key)
    b.set(xlabel="epoch", ylabel="value", title="Validation", ylim=(0, 1))
    b.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "history.png", dpi=110)
    plt.close(fig)
