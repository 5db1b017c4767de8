"""The per-site table a coordinator checks before launching a simulation: sizes and fracture prevalence per site.

Written as CSV (for scripts), Markdown (for reports and docs) and a bar chart (to see the skew at a glance).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

CSV_COLUMNS = (
    "site", "n_train", "n_val", "train_positive", "val_positive", "train_prevalence", "val_prevalence", "data_yaml",
)  # fmt: skip


@dataclass(frozen=True)
class Site:
    """One simulated hospital: its dataset file and how many images (and fractured images) it holds.

    `*_positive` counts images with at least one fracture box; prevalence is what makes sites non-IID.
    """

    name: str
    data_yaml: Path
    n_train: int
    n_val: int
    train_positive: int
    val_positive: int

    @property
    def train_prevalence(self) -> float:
        return self.train_positive / self.n_train if self.n_train else 0.0

    @property
    def val_prevalence(self) -> float:
        return self.val_positive / self.n_val if self.n_val else 0.0


def write_partition_summary(sites: list[Site], out: Path) -> dict[str, Path]:
    """Write `out/sites.csv`, `out/sites.md` and `out/sites.png`; returns them keyed csv/md/png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "sites.csv", "md": out / "sites.md", "png": out / "sites.png"}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for s in sites:
            prevalences = [f"{s.train_prevalence:.4f}", f"{s.val_prevalence:.4f}"]
            counts = [s.n_train, s.n_val, s.train_positive, s.val_positive]
            writer.writerow([s.name, *counts, *prevalences, _display_path(s.data_yaml, out)])
    paths["md"].write_text(markdown_table(sites))
    _plot(sites, paths["png"])
    return paths


def markdown_table(sites: list[Site]) -> str:
    """Sites as a Markdown table with a total row; prevalence = share of images with a fracture."""
    lines = [
        "| site | train images | train fractured | train prevalence | val images | val fractured | val prevalence |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [(s.name, s.n_train, s.train_positive, s.n_val, s.val_positive) for s in sites]
    total = ("**total**", *(sum(r[i] for r in rows) for i in range(1, 5)))
    for name, nt, pt, nv, pv in [*rows, total]:
        lines.append(f"| {name} | {nt} | {pt} | {_pct(pt, nt)} | {nv} | {pv} | {_pct(pv, nv)} |")
    return "\n".join(lines) + "\n"


def _pct(k: int, n: int) -> str:
    return f"{100 * k / n:.1f}%" if n else "n/a"


def _display_path(path: Path, out: Path) -> str:
    """Relative to the output folder when inside it, so the table is the same wherever the run was written."""
    try:
        return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(out))).as_posix()
    except ValueError:  # another drive on Windows
        return str(path)


def _plot(sites: list[Site], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    names = [s.name for s in sites]
    x = list(range(len(sites)))
    w = 0.4
    fig = Figure(figsize=(max(6.0, 1.6 * len(sites) + 3), 3.6), layout="constrained")
    ax_n, ax_p = fig.subplots(1, 2)
    ax_n.bar([i - w / 2 for i in x], [s.n_train for s in sites], w, label="train", color="#4878a8")
    ax_n.bar([i + w / 2 for i in x], [s.n_val for s in sites], w, label="val", color="#e0a040")
    ax_n.set_title("images per site")
    ax_p.bar([i - w / 2 for i in x], [100 * s.train_prevalence for s in sites], w, label="train", color="#4878a8")
    ax_p.bar([i + w / 2 for i in x], [100 * s.val_prevalence for s in sites], w, label="val", color="#e0a040")
    ax_p.set_title("fracture prevalence (% of images)")
    ax_p.set_ylim(0, max([5.0] + [100 * max(s.train_prevalence, s.val_prevalence) for s in sites]) * 1.15)
    for ax in (ax_n, ax_p):
        ax.set_xticks(x, names, rotation=20 if len(sites) > 4 else 0, ha="right" if len(sites) > 4 else "center")
        ax.legend(frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    fig.savefig(path, dpi=110, metadata={"Software": None})
