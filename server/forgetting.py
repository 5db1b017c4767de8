"""Forgetting per site and round: how far the global model has fallen below its best on the site's original data.

Sites score every round's global model on their own original validation split (the `evaluate` records); training
on feedback (client/continual) must not cost what the model already knew there. Forgetting of a metric at round r
is the best value of an earlier round minus the value at r, floored at 0 (0: as good as ever); None where the site
has no earlier value or no value at r. Computed from the round history alone: nothing new is asked of the sites.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from server.history import RoundRecord

METRICS = ("map50", "sensitivity")
LABELS = {"map50": "mAP@0.5", "sensitivity": "Sensitivity (image level)"}

Table = dict[str, list[dict[str, Any]]]  # site -> [{"round": r, "map50": f | None, "sensitivity": f | None}]


def _latest_evaluations(records: list[RoundRecord]) -> dict[str, dict[int, RoundRecord]]:
    """site -> round -> its ok evaluate record (the last written one, when a resumed run repeated a round)."""
    out: dict[str, dict[int, RoundRecord]] = {}
    for r in records:
        if r.phase == "evaluate":
            out.setdefault(r.site, {}).pop(r.round, None)
            if r.ok:
                out[r.site][r.round] = r
    return out


def forgetting(records: list[RoundRecord]) -> Table:
    """Forgetting of each of METRICS per site and round (rounds where the site evaluated), in round order."""
    table: Table = {}
    for site, by_round in sorted(_latest_evaluations(records).items()):
        best: dict[str, float] = {}
        rows = []
        for rnd in sorted(by_round):
            row: dict[str, Any] = {"round": rnd}
            for m in METRICS:
                v = by_round[rnd].metrics.get(m)
                row[m] = max(0.0, best[m] - v) if v is not None and m in best else None
                if v is not None and math.isfinite(v):
                    best[m] = max(best.get(m, v), v)
            rows.append(row)
        table[site] = rows
    return table


def summary(table: Table) -> dict[str, dict[str, Any]]:
    """Per site: the last round's forgetting and the worst of the run, with its round, for each of METRICS."""
    out: dict[str, dict[str, Any]] = {}
    for site, rows in table.items():
        entry: dict[str, Any] = {"last_round": rows[-1]["round"] if rows else None}
        for m in METRICS:
            scored = [(r[m], r["round"]) for r in rows if r[m] is not None]
            worst = max(scored, key=lambda p: (p[0], -p[1]), default=(None, None))  # the earliest of equals
            entry[m] = {"last": rows[-1][m] if rows else None, "worst": worst[0], "worst_round": worst[1]}
        out[site] = entry
    return out


def plot_forgetting(table: Table, path: Path, title: str) -> Path:
    """One panel per metric, x = round, a line per site; y = forgetting (0 = at its best so far)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(METRICS), sharex=True)
    for ax, m in zip(axes, METRICS, strict=True):
        drawn = False
        for site, rows in table.items():
            pts = [(r["round"], r[m]) for r in rows if r[m] is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", markersize=4, linewidth=1.8, label=site)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_title(f"Forgetting: {LABELS[m]}", fontsize=11)
        ax.set_xlabel("Round")
        ax.set_ylabel("best earlier round minus this round")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if any(table.values()):
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", frameon=False)
    fig.suptitle(f"{title}: forgetting on each site's original validation split", fontsize=13, fontweight="bold")
    fig.savefig(path, dpi=100)
    return path
