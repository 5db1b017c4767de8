"""`fracfl audit mia`: the one-run canary audit (Steinke, Nasr, Jagielski 2023) of a site's DP-SGD training,
reporting an empirical epsilon lower bound beside the accountant's figures.

The training setup is the site's, composed as the server composes the run (`server.mia_setup`); options given here
replace single settings and are listed as differences. The exit status separates what the audit can say: 0 consistent
(or the no-DP control), 1 violation, 3 inconclusive (these canaries cannot show the claimed epsilon), 2 bad input.
`add_mia(audit_subparsers)` adds the action to `fracfl audit`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _run(a: argparse.Namespace) -> int:
    from dataclasses import replace

    from rich.console import Console
    from rich.table import Table

    from common.inference.load import weights_path
    from common.nn.weights import load_model
    from common.privacy.canary_audit import MiaConfig, run_audit
    from common.privacy.mia_report import EXIT_CODES, summary_rows, verdict, write_json, write_png
    from server.mia_setup import apply, site_setup

    setup = site_setup(a.run_config, a.overrides)
    model, _, _ = load_model(weights_path(a.model))
    train, dp, differs = apply(
        setup,
        {
            "imgsz": a.imgsz,
            "batch_size": a.batch_size,
            "epochs": a.epochs,
            "max_steps": a.steps,
            "optimizer": a.optimizer,
            "lr": a.lr,
        },
        {"max_grad_norm": a.clip, "max_physical_batch": a.physical_batch},
    )
    if a.no_dp:
        differs.append("no DP-SGD (the control)")
    cfg = MiaConfig(
        canaries=a.canaries,
        source=a.canary_source,
        labels=a.canary_labels,
        dp=not a.no_dp,
        noise_multiplier=a.noise_multiplier,
        target_epsilon=a.epsilon,
        max_grad_norm=dp["max_grad_norm"],
        max_physical_batch=dp["max_physical_batch"],
        grad_sample_mode=setup.privacy.grad_sample_mode,
        delta=a.delta,
        beta=a.beta,
        seed=a.seed,
        train=replace(train, device=a.device),
        setup=setup.source,
        differs=tuple(differs),
    )
    report = run_audit(model, a.data, cfg, progress=not a.quiet)
    out = Path(a.out)
    files = [write_json(report, out), write_png(report, out)]

    console = Console(width=None if sys.stdout.isatty() else 140, highlight=False)
    table = Table(
        title="One-run membership audit (Steinke, Nasr, Jagielski 2023)", title_justify="left", show_header=False
    )
    table.add_column(style="bold")
    table.add_column()
    for key, value in summary_rows(report):
        table.add_row(key, value)
    console.print(table)
    console.print(verdict(report))
    console.print(f"written: {', '.join(str(p) for p in files)}")
    return EXIT_CODES[report.outcome]


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="registry version folder or fracfl weights file to start from")
    p.add_argument(
        "--data", required=True, help="the site's data.yaml or dataset folder (its train split is trained on)"
    )
    setup = p.add_mutually_exclusive_group()
    setup.add_argument(
        "--run-config",
        default=None,
        help="the run's job file (RUN_DIR/job.yaml, which `fracfl simulate` writes, or "
        "RUN_DIR/.hydra/config.yaml): the site's training setup is read from it",
    )
    setup.add_argument(
        "--overrides",
        default=None,
        help="the run's Hydra overrides, composed on conf/federated.yaml as the server does "
        "(default 'privacy=dp_sgd': a DP-SGD site's defaults)",
    )
    p.add_argument("--canaries", type=int, default=64, help="number of canaries m (default 64; more = tighter bound)")
    p.add_argument(
        "--canary-source",
        default="synthetic",
        help="synthetic (noise images), or a split of --data (train: taken out of the training images)",
    )
    p.add_argument(
        "--canary-labels",
        choices=("random", "own"),
        default="random",
        help="random: a box at a random place (mislabelled, the strongest canary); own: the data's labels",
    )
    dp = p.add_mutually_exclusive_group()
    dp.add_argument("--noise-multiplier", type=float, default=None, help="DP-SGD noise multiplier to audit")
    dp.add_argument(
        "--epsilon",
        type=float,
        default=None,
        help="calibrate the noise to this epsilon, as a site plans it (audit at 0.5-1: see the docs)",
    )
    dp.add_argument("--no-dp", action="store_true", help="control: train without DP (the audit's power check)")
    p.add_argument("--delta", type=float, default=None, help="delta (default: min(1e-5, 0.1/N), as sites use)")
    p.add_argument("--beta", type=float, default=0.05, help="the bound holds with confidence 1 - beta (default 0.05)")
    changes = p.add_argument_group("changes to the site's setup (each is listed as a difference)")
    changes.add_argument("--clip", type=float, default=None, help="per-image gradient clipping norm")
    changes.add_argument("--batch-size", type=int, default=None, help="expected logical batch (sample rate = B/N)")
    changes.add_argument("--physical-batch", type=int, default=None, help="memory bound for per-image gradients")
    steps = changes.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=int, default=None, help="optimiser steps (default: one round's)")
    steps.add_argument("--epochs", type=int, default=None, help="epochs of int(1/q) steps each (default: one round's)")
    changes.add_argument("--optimizer", choices=("sgd", "adamw"), default=None)
    changes.add_argument("--lr", type=float, default=None)
    changes.add_argument("--imgsz", type=int, default=None, help="input size")
    p.add_argument("--seed", type=int, default=0, help="seeds canaries, membership draw, sampling and noise")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/audit-mia", help="folder for mia_audit.json and mia_audit.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


_HELP = "one-run canary membership audit: empirical epsilon lower bound beside the accountant's"
_DESCRIPTION = (
    "Trains once from --model on the site's data, with the site's training setup, and m canaries each "
    "included with probability 1/2, using DP-SGD (or none, as a control); guesses membership from each "
    "canary's loss drop and reports the empirical epsilon lower bound of Steinke, Nasr and Jagielski "
    "(2023) beside the RDP and PRV epsilons. Exit status 0 consistent (or the control), 1 violation "
    "(the bound exceeds the tighter accountant figure), 3 inconclusive (these canaries cannot show the "
    "claimed epsilon: audit at --epsilon 1), 2 bad input."
)


def add_mia(sub: argparse._SubParsersAction) -> None:
    """Add `mia` to `fracfl audit`'s actions."""
    _options(sub.add_parser("mia", help=_HELP, description=_DESCRIPTION))
