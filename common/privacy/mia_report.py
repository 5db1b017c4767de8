"""What a canary audit leaves behind for governance: a JSON record, a PNG (score histograms and the empirical bound
beside the accountant's epsilon), the rows of the summary table the command prints, its verdict and exit code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from common.privacy.canary_audit import MiaReport

JSON_NAME, PNG_NAME = "mia_audit.json", "mia_audit.png"


NOT_A_PROOF = (
    "A low empirical bound does not prove privacy: it is only what this attack, with these canaries, could show."
)
EXIT_CODES = {"consistent": 0, "control": 0, "violation": 1, "inconclusive": 3}  # 2: a usage or input error


def canaries_needed(claimed: float, beta: float, choices: int) -> int:
    """Fewest canaries whose all-correct bound could exceed `claimed` (delta ignored, which only lowers the bound):
    q^m <= beta / choices with q = e^eps / (1 + e^eps), so m >= log(beta / choices) / log(q)."""
    return math.ceil(math.log(beta / choices) / -math.log1p(math.exp(-claimed)))


def verdict(report: MiaReport) -> str:
    """How to read the numbers, by outcome; every verdict ends by saying that a low bound is not a proof."""
    a, c = report.audit, report.claimed
    if c is None:  # the control: no DP, no claim
        head = (
            "no DP: the accountant makes no claim; a positive bound shows the attack finds members"
            if a.epsilon > 0
            else "no DP, yet the attack found no members: the audit had little power here"
        )
    elif report.outcome == "violation":
        head = (
            f"VIOLATION: the empirical bound {a.epsilon:.2f} exceeds the accountant's tightest epsilon {c:.2f}: "
            "the DP implementation leaks more than it claims (rerun with another --seed to confirm; 1 run in "
            f"{round(1 / a.beta)} may exceed by chance)"
        )
    elif report.outcome == "inconclusive":
        head = (
            f"INCONCLUSIVE: cannot detect a violation at this epsilon. {a.m} canaries can show at most "
            f"{report.max_possible:.2f} at {1 - a.beta:.0%} confidence, not above the claimed {c:.2f} (that would "
            f"take more than {canaries_needed(c, a.beta, a.choices):,} canaries). Audit the same setup at a small "
            "epsilon (--epsilon 1), where a missing-noise bug must show"
        )
    else:
        head = (
            f"consistent: the bound {a.epsilon:.2f} does not exceed the accountant's tightest epsilon {c:.2f}, "
            f"and these canaries could have shown up to {report.max_possible:.2f}"
        )
    return f"{head}. {NOT_A_PROOF}"


def summary_rows(report: MiaReport) -> list[tuple[str, str]]:
    a, acc = report.audit, report.accountant
    rows = [
        ("training", "DP-SGD" if report.dp else "no DP (control)"),
        ("outcome", report.outcome),
        ("canaries m / drawn in", f"{a.m} / {sum(report.members)} ({report.source}, labels {report.labels})"),
        ("guesses r (k+ / k-)", f"{a.r} ({a.k_plus} / {a.k_minus}), best of {a.choices} fixed choices"),
        ("correct guesses", f"{a.correct} of {a.r}"),
        (f"empirical epsilon >= (confidence {1 - a.beta:.0%})", f"{a.epsilon:.3f}"),
        ("largest bound these canaries can show", f"{report.max_possible:.3f}"),
        ("accountant epsilon RDP / PRV", "n/a (no DP)" if acc is None else f"{acc['rdp']:.3f} / {acc['prv']:.3f}"),
        ("judged against (the tighter)", "n/a (no DP)" if report.claimed is None else f"{report.claimed:.3f}"),
        ("delta", f"{report.delta:.2e}"),
        (
            "mechanism",
            (f"noise {report.noise_multiplier:.3f}, clip {report.max_grad_norm}, " if report.dp else "")
            + f"sample rate {report.sample_rate:.4f}, {report.steps} steps, {report.train_images} images",
        ),
        ("training setup", report.setup),
    ]
    rows += [("differs from the site" if i == 0 else "", d) for i, d in enumerate(report.differences)]
    return rows


def write_json(report: MiaReport, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / JSON_NAME
    path.write_text(json.dumps({**report.to_dict(), "verdict": verdict(report)}, indent=2) + "\n")
    return path


def write_png(report: MiaReport, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores, members = np.asarray(report.scores), np.asarray(report.members)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    bins = np.histogram_bin_edges(scores, bins=min(30, max(5, len(scores) // 2)))
    left.hist(scores[members], bins=bins, alpha=0.6, label=f"trained on ({members.sum()})", color="tab:red")
    left.hist(scores[~members], bins=bins, alpha=0.6, label=f"held out ({(~members).sum()})", color="tab:blue")
    left.set_xlabel("membership score: canary loss before - after training")
    left.set_ylabel("canaries")
    left.set_title("Canary scores")
    left.legend()

    acc = report.accountant
    names = ["empirical\nlower bound"] + ([] if acc is None else ["accountant\nRDP", "accountant\nPRV"])
    values = [report.audit.epsilon] + ([] if acc is None else [acc["rdp"], acc["prv"]])
    right.bar(names, values, color=["tab:orange"] + ["tab:gray"] * (len(values) - 1))
    right.axhline(report.max_possible, ls="--", color="k", lw=1, label=f"most {report.audit.m} canaries can show")
    if report.claimed is not None:
        right.axhline(report.claimed, ls=":", color="tab:red", lw=1, label="claim judged against (the tighter)")
    for i, v in enumerate(values):
        right.text(i, v, f"{v:.2f}", ha="center", va="bottom")
    right.set_ylabel(f"epsilon (delta {report.delta:.1e})")
    right.set_title(f"{'DP-SGD' if report.dp else 'no DP'}, confidence {1 - report.audit.beta:.0%}: {report.outcome}")
    right.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path = out / PNG_NAME
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
