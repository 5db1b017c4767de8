"""`fracfl audit mia`: the one-run canary audit (Steinke, Nasr, Jagielski 2023) of the site's DP-SGD mechanism on a
model, reporting an empirical epsilon lower bound beside the accountant's figure.

`add_mia(audit_subparsers)` adds the `mia` action to `fracfl audit`; until that command exists, `register` offers the
same parser as `fracfl audit-mia`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.config import TrainConfig


def _run(a: argparse.Namespace) -> int:
    from dataclasses import replace

    from rich.console import Console
    from rich.table import Table

    from common.inference.load import weights_path
    from common.nn.weights import load_model
    from common.privacy.canary_audit import MiaConfig, run_audit
    from common.privacy.mia_report import summary_rows, verdict, write_json, write_png

    model, _, meta = load_model(weights_path(a.model))
    base = MiaConfig().train
    train = replace(base, imgsz=a.imgsz or int(meta.get("imgsz", base.imgsz)), batch_size=a.batch_size,
                    epochs=a.epochs, max_steps=a.steps, optimizer=a.optimizer, lr=a.lr, device=a.device)
    cfg = MiaConfig(canaries=a.canaries, source=a.canary_source, labels=a.canary_labels, dp=not a.no_dp,
                    noise_multiplier=a.noise_multiplier, target_epsilon=a.epsilon, max_grad_norm=a.clip,
                    max_physical_batch=a.physical_batch, delta=a.delta, beta=a.beta, seed=a.seed, train=train)
    report = run_audit(model, a.data, cfg, progress=not a.quiet)
    out = Path(a.out)
    files = [write_json(report, out), write_png(report, out)]

    console = Console(width=None if sys.stdout.isatty() else 140, highlight=False)
    table = Table(title="One-run membership audit (Steinke, Nasr, Jagielski 2023)", title_justify="left",
                  show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in summary_rows(report):
        table.add_row(key, value)
    console.print(table)
    console.print(verdict(report))
    console.print(f"written: {', '.join(str(p) for p in files)}")
    violated = report.accountant is not None and report.audit.epsilon > report.accountant["epsilon"]
    return 1 if violated else 0


def _options(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--model", required=True, help="registry version folder or fracfl weights file to start from")
    p.add_argument("--data", required=True, help="the site's data.yaml or dataset folder (its train split is trained on)")
    p.add_argument("--canaries", type=int, default=64, help="number of canaries m (default 64; more = tighter bound)")
    p.add_argument("--canary-source", default="synthetic",
                   help="synthetic (noise images), or a split of --data (train: taken out of the training images)")
    p.add_argument("--canary-labels", choices=("random", "own"), default="random",
                   help="random: a box at a random place (mislabelled, the strongest canary); own: the data's labels")
    dp = p.add_mutually_exclusive_group()
    dp.add_argument("--noise-multiplier", type=float, default=None, help="DP-SGD noise multiplier of the site")
    dp.add_argument("--epsilon", type=float, default=None, help="calibrate the noise to this target epsilon")
    dp.add_argument("--no-dp", action="store_true", help="control: train without DP (the audit's power check)")
    p.add_argument("--clip", type=float, default=1.0, help="per-image gradient clipping norm (default 1.0)")
    p.add_argument("--delta", type=float, default=None, help="delta (default: min(1e-5, 0.1/N), as sites use)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="expected logical batch (sample rate = B/N)")
    p.add_argument("--physical-batch", type=int, default=8, help="memory bound for DP-SGD's per-image gradients")
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=int, default=None, help="optimiser steps")
    steps.add_argument("--epochs", type=int, default=1, help="epochs of int(1/q) steps each (default 1)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default=d.optimizer)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--imgsz", type=int, default=None, help="input size (default: the model's training size)")
    p.add_argument("--beta", type=float, default=0.05, help="the bound holds with confidence 1 - beta (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="seeds canaries, membership draw, sampling and noise")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/audit-mia", help="folder for mia_audit.json and mia_audit.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


_HELP = "one-run canary membership audit: empirical epsilon lower bound beside the accountant's"
_DESCRIPTION = ("Trains once from --model on the site's data with m canaries each included with probability 1/2, "
                "using the site's DP-SGD (or none, as a control), guesses membership from each canary's loss drop, and "
                "reports the empirical epsilon lower bound of Steinke, Nasr and Jagielski (2023) beside the RDP and "
                "PRV accountants' epsilon. Exit status 1 if the bound exceeds the accountant's epsilon.")


def add_mia(sub: argparse._SubParsersAction) -> None:
    """Add `mia` to `fracfl audit`'s actions."""
    _options(sub.add_parser("mia", help=_HELP, description=_DESCRIPTION))

