"""Report plots drawn with matplotlib's object API on Agg (no pyplot state, no GUI, no font downloads)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .report import DetectionReport

DPI = 150
OP_STYLE = dict(marker="o", markersize=9, markerfacecolor="red", markeredgecolor="black", linestyle="none", zorder=5)


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def _figure(width: float = 7.5, height: float = 5.5) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _unit_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)


def _pos_neg(report: DetectionReport) -> tuple[str, str]:
    """Image-level class names: 'fracture' for the usual one-class model, 'finding' when several classes count."""
    return ("fracture", "no fracture") if len(report.names) == 1 else ("any finding", "no finding")


def _empty_note(ax, text: str) -> None:
    ax.text(
        0.5,
        0.5,
        text,
        ha="center",
        va="center",
        wrap=True,
        transform=ax.transAxes,
        bbox=dict(boxstyle="round", facecolor="lightyellow", edgecolor="gray"),
    )


def plot_pr_curve(report: DetectionReport, path: Path) -> Path:
    """Per-class precision envelope at IoU 0.5 (the curve AP50 integrates), with the operating point marked."""
    fig, ax = _figure()
    c = report.curves
    drawn = [k for k in range(len(report.names)) if not np.isnan(c.pr_precision[k]).all()]
    many = len(drawn) > 10
    for k in drawn:
        cm = report.per_class[k]
        ax.plot(
            c.pr_recall,
            c.pr_precision[k],
            linewidth=1 if many else 2,
            color="gray" if many else None,
            label=None if many else f"{cm.name} (AP50 {_fmt(cm.ap50)})",
        )
    if len(drawn) > 1:
        ax.plot(
            c.pr_recall,
            c.pr_precision[drawn].mean(0),
            linewidth=3,
            color="navy",
            label=f"all classes (mAP50 {_fmt(report.map50)})",
        )
    if not (math.isnan(report.precision) or math.isnan(report.recall)):
        ax.plot(
            [report.recall],
            [report.precision],
            **OP_STYLE,
            label=f"operating point: conf {report.conf:g}, IoU {report.iou:g}\n"
            f"P {report.precision:.3f}  R {report.recall:.3f}",
        )
    if not drawn:
        _empty_note(ax, "no PR curve: " + report.undefined.get("map50", "no ground-truth boxes"))
    _unit_axes(
        ax,
        "Recall",
        "Precision",
        f"Box precision-recall at IoU 0.5 (mAP50 {_fmt(report.map50)}, mAP50-95 {_fmt(report.map50_95)})",
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left")
    fig.savefig(path, dpi=DPI)
    return path


def plot_roc_curve(report: DetectionReport, path: Path) -> Path:
    """Image-level ROC of the triage score (max box score) with the chance line and the operating point."""
    fig, ax = _figure(6.5, 6)
    c = report.curves
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="chance (AUC 0.5)")
    if len(c.roc_fpr):
        ax.plot(
            c.roc_fpr,
            c.roc_tpr,
            linewidth=2,
            color="tab:blue",
            drawstyle="default",
            label=f"model (AUC {_fmt(report.roc_auc)})",
        )
        ax.plot(
            [1 - report.specificity],
            [report.sensitivity],
            **OP_STYLE,
            label=f"operating point: score >= {report.conf:g}\n"
            f"sens {report.sensitivity:.3f}  spec {report.specificity:.3f}",
        )
    else:
        _empty_note(ax, "no ROC curve:\n" + report.undefined.get("roc_auc", "no images"))
    _unit_axes(
        ax,
        "False positive rate (1 - specificity)",
        "True positive rate (sensitivity)",
        f"Image-level ROC: {report.n_positive} with {_pos_neg(report)[0].removeprefix('any ')}, "
        f"{report.n_negative} without",
    )
    ax.set_aspect("equal")
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=DPI)
    return path


def _matrix(ax, counts: np.ndarray, labels: list[str], title: str, skip_corner: bool) -> None:
    """Colour = share of each true column (so rare classes stay visible); text = raw count."""
    counts = counts.astype(float)
    col = counts.sum(0, keepdims=True)
    share = np.divide(counts, col, out=np.zeros_like(counts), where=col > 0)
    if skip_corner:
        share[-1, -1] = np.nan
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    n = len(labels)
    for i in range(n):
        for j in range(n):
            if skip_corner and i == j == n - 1:
                ax.text(j, i, "-", ha="center", va="center", color="gray")
                continue
            ax.text(
                j,
                i,
                f"{int(counts[i, j])}",
                ha="center",
                va="center",
                fontsize=13 if n <= 4 else 9,
                color="white" if share[i, j] > 0.6 else "black",
            )
    ax.set_xticks(range(n), labels, rotation=30 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    ax.set_title(title)


def plot_confusion(report: DetectionReport, path: Path) -> Path:
    """Box-level (nc+1)^2 and image-level 2x2 matrices side by side, rows predicted and columns true."""
    nc = len(report.names)
    grow = max(1.0, (nc + 1) / 5)  # past 4 classes the box panel widens so its cells stay legible
    fig = Figure(figsize=(5.5 * (1 + grow), 5.2 * grow**0.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_box, ax_img = fig.subplots(1, 2, width_ratios=[grow, 1])
    _matrix(
        ax_box,
        report.confusion_matrix,
        [report.names[k] for k in range(nc)] + ["background"],
        f"Boxes (score >= {report.conf:g}, IoU >= {report.iou:g})",
        skip_corner=True,
    )
    _matrix(
        ax_img,
        report.image_confusion,
        list(_pos_neg(report)),
        f"Images (max score >= {report.conf:g})\nsens {_fmt(report.sensitivity)}, spec {_fmt(report.specificity)}",
        skip_corner=False,
    )
    fig.suptitle("Confusion matrices (counts; colour = share of the true column)")
    fig.savefig(path, dpi=DPI)
    return path


def plot_f1_curve(report: DetectionReport, path: Path) -> Path:
    """Pooled box F1, precision and recall against the confidence threshold, with the chosen and the best conf."""
    fig, ax = _figure()
    c = report.curves
    if len(report.names) > 1:
        for k in range(len(report.names)):
            if not np.isnan(c.f1_per_class[k]).all():
                ax.plot(c.conf, c.f1_per_class[k], linewidth=1, alpha=0.7, label=f"F1 {report.names[k]}")
    ax.plot(c.conf, c.f1, linewidth=2.5, color="navy", label="F1 (all classes)")
    ax.plot(c.conf, c.precision, linewidth=1.2, linestyle="--", color="tab:green", label="precision")
    ax.plot(c.conf, c.recall, linewidth=1.2, linestyle=":", color="tab:orange", label="recall")
    ax.axvline(report.conf, color="red", linewidth=1, linestyle="--")
    if not math.isnan(report.f1):
        ax.plot(
            [report.conf], [report.f1], **OP_STYLE, label=f"operating point: conf {report.conf:g}, F1 {report.f1:.3f}"
        )
    if not math.isnan(report.best_f1):
        ax.plot(
            [report.best_f1_conf],
            [report.best_f1],
            marker="*",
            markersize=15,
            color="gold",
            markeredgecolor="black",
            linestyle="none",
            zorder=6,
            label=f"best F1 {report.best_f1:.3f} at conf {report.best_f1_conf:.3f}",
        )
    if np.isnan(c.f1).all():
        _empty_note(ax, "no F1 curve: " + report.undefined.get("f1", "no boxes"))
    _unit_axes(
        ax,
        "Confidence threshold (score >= conf)",
        "Score",
        f"Box F1 / precision / recall vs confidence (IoU >= {report.iou:g})",
    )
    ax.legend(loc="lower left", fontsize=9)
    fig.savefig(path, dpi=DPI)
    return path
