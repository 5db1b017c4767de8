"""What a canary audit leaves behind for governance: a JSON record, a PNG (score histograms and the empirical bound
beside the accountant's epsilon) and the rows of the summary table the command prints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.privacy.canary_audit import MiaReport

JSON_NAME, PNG_NAME = "mia_audit.json", "mia_audit.png"


def verdict(report: MiaReport) -> str:
    """One sentence on how to read the numbers; never claims more than a lower bound shows."""
    a, acc = report.audit, report.accountant
    if acc is None:
        return ("no DP: the accountant makes no claim; a positive bound shows the attack finds members"
                if a.epsilon > 0 else "no DP, yet the attack found no members: the audit had little power here")
    if a.epsilon > acc["epsilon"]:
        return "VIOLATION: the empirical bound exceeds the accountant's epsilon; the DP implementation leaks more than claimed"
    if acc["epsilon"] >= report.max_possible:
        return (f"consistent, but {a.m} canaries cannot show an epsilon above {report.max_possible:.2f}: "
                "more canaries are needed to test this claim closely")
    return "consistent: the attack did not refute the accountant's epsilon (a lower bound, not a proof of privacy)"


def summary_rows(report: MiaReport) -> list[tuple[str, str]]:
    a, acc = report.audit, report.accountant
    rows = [
        ("training", "DP-SGD" if report.dp else "no DP (control)"),
        ("canaries m / drawn in", f"{a.m} / {sum(report.members)} ({report.source}, labels {report.labels})"),
        ("guesses r (k+ / k-)", f"{a.r} ({a.k_plus} / {a.k_minus}), best of {a.choices} fixed choices"),
        ("correct guesses", f"{a.correct} of {a.r}"),
        (f"empirical epsilon >= (confidence {1 - a.beta:.0%})", f"{a.epsilon:.3f}"),
        ("largest bound these canaries can show", f"{report.max_possible:.3f}"),
        ("accountant epsilon RDP / PRV", "n/a (no DP)" if acc is None else f"{acc['rdp']:.3f} / {acc['prv']:.3f}"),
        ("delta", f"{report.delta:.2e}"),
        ("mechanism", (f"noise {report.noise_multiplier:.3f}, clip {report.max_grad_norm}, " if report.dp else "")
         + f"sample rate {report.sample_rate:.4f}, {report.steps} steps, {report.train_images} images"),
    ]
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
    for i, v in enumerate(values):
        right.text(i, v, f"{v:.2f}", ha="center", va="bottom")
    right.set_ylabel(f"epsilon (delta {report.delta:.1e})")
    right.set_title(f"{'DP-SGD' if report.dp else 'no DP'}: confidence {1 - report.audit.beta:.0%}")
    right.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path = out / PNG_NAME
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
