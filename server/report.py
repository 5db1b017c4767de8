"""Per-run report for research coordinators: round history as CSV, learning curves, a Markdown summary and its
facts as JSON.

Presentation only: it reads `RoundRecord`s (server/history.py, which also keeps the JSON Lines history resume
depends on) and writes files people look at. When a round appears twice (a run resumed at a round it had
started), the later record for a (round, site, phase) wins in the curves and the summary; ``rounds.csv`` keeps
every record.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.forgetting import METRICS as FORGETTING_METRICS
from server.forgetting import forgetting, plot_forgetting
from server.forgetting import summary as forgetting_summary
from server.history import RoundRecord

BASE_COLUMNS = ("round", "site", "phase", "examples", "status")
EVAL_METRICS = ("map50", "map50_95", "sensitivity", "specificity", "roc_auc")
TRAIN_METRICS = ("loss",)
KEY_METRICS = EVAL_METRICS + TRAIN_METRICS
LABELS = {
    "map50": "mAP@0.5",
    "map50_95": "mAP@0.5:0.95",
    "sensitivity": "Sensitivity (image level)",
    "specificity": "Specificity (image level)",
    "roc_auc": "ROC AUC (image level)",
    "loss": "Training loss",
}
SHORT = {"map50": "mAP@0.5", "map50_95": "mAP@0.5:0.95", "roc_auc": "ROC AUC"}  # Markdown column headers
FILES = {
    "rounds_csv": "rounds.csv",
    "curves_png": "curves.png",
    "forgetting_png": "forgetting.png",
    "summary_md": "summary.md",
    "facts_json": "facts.json",
}


# --- records ------------------------------------------------------------------------------------------------------


def _value(r: RoundRecord, key: str) -> float:
    """A metric of a record as a float; NaN where it is absent or undefined."""
    v = r.metrics.get(key)
    return math.nan if v is None else float(v)


def _latest(records: list[RoundRecord]) -> list[RoundRecord]:
    """One record per (round, site, phase), the last one written; ordered by round, then input order."""
    last: dict[tuple[int, str, str], RoundRecord] = {}
    for r in records:
        key = (r.round, r.site, r.phase)
        last.pop(key, None)
        last[key] = r
    return sorted(last.values(), key=lambda r: r.round)


def _metric_columns(metrics: Iterable[Mapping[str, object]]) -> list[str]:
    keys = {k for m in metrics for k in m}
    return [k for k in KEY_METRICS if k in keys] + sorted(keys - set(KEY_METRICS))


def _jsonable(o: object) -> object:
    """NaN and infinities as null (standard JSON)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, Mapping):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_jsonable(v) for v in o]
    return o


# --- tables -------------------------------------------------------------------------------------------------------


def _fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ").strip()


def _md_table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _flatten(config: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def write_csv(records: list[RoundRecord], path: Path) -> Path:
    """One row per record; metric columns are the union of keys (key metrics first); blank where absent, nan where
    undefined."""
    columns = _metric_columns(r.metrics for r in records)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([*BASE_COLUMNS, *columns])
        for r in sorted(records, key=lambda r: r.round):  # stable: a round keeps its written order
            w.writerow(
                [
                    r.round,
                    r.site,
                    r.phase,
                    "" if r.examples is None else r.examples,
                    r.status,
                    *(f"{_value(r, k):.6g}" if k in r.metrics else "" for k in columns),
                ]
            )
    return path


def report_facts(records: list[RoundRecord], title: str, config_summary: Mapping[str, object]) -> dict[str, Any]:
    """The facts behind summary.md, also written as facts.json (undefined metrics are NaN here, null there)."""
    latest = _latest(records)
    sites = sorted({r.site for r in latest if r.phase != "server"})
    final: dict[tuple[str, str], RoundRecord] = {}
    for r in latest:
        if r.phase != "server":
            final[(r.site, r.phase)] = r  # rounds ascend: the site's last record per phase
    pooled = [r for r in latest if r.phase == "server"]
    scored = [r for r in pooled if r.ok and math.isfinite(_value(r, "map50"))]
    best = max(scored, key=lambda r: (_value(r, "map50"), -r.round), default=None)
    events = [r for r in latest if not r.ok]
    rounds = sorted({r.round for r in latest})
    table = forgetting(records)

    def rec(r: RoundRecord, *keys: str) -> dict[str, Any]:
        return {k: {m: _value(r, m) for m in r.metrics} if k == "metrics" else getattr(r, k) for k in keys}

    return {
        "title": title,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": dict(config_summary),
        "rounds": {
            "first": rounds[0] if rounds else None,
            "last": rounds[-1] if rounds else None,
            "count": len(rounds),
        },
        "records": len(records),
        "sites": sites,
        "final": [rec(final[k], "site", "phase", "round", "examples", "status", "metrics") for k in sorted(final)],
        "pooled": [rec(r, "round", "examples", "status", "metrics") for r in pooled],
        "best_pooled": None
        if best is None
        else {"round": best.round, "map50": _value(best, "map50"), "metrics": rec(best, "metrics")["metrics"]},
        "events": [rec(r, "round", "site", "phase", "status") for r in events],
        "forgetting": {"per_round": table, "sites": forgetting_summary(table)},
        "files": dict(FILES),
    }


def _markdown(s: dict[str, Any]) -> str:
    out = [f"# {s['title']}", ""]
    r = s["rounds"]
    if r["count"]:
        out += [
            f"{r['count']} rounds ({r['first']} to {r['last']}; round 0 is the initial model), "
            f"{len(s['sites'])} sites, {s['records']} round records. Curves: `{FILES['curves_png']}`; "
            f"every record: `{FILES['rounds_csv']}`.",
            "",
        ]
    else:
        out += ["No round records yet.", ""]

    out += ["## Configuration", ""]
    flat = _flatten(s["config"])
    out += _md_table(["setting", "value"], [[k, v] for k, v in flat.items()]) if flat else ["(none given)"]
    out.append("")

    out += [
        "## Sites at the end of the run",
        "",
        "Each site's last record per phase (a site that dropped out shows the round it was last seen).",
        "",
    ]
    if s["final"]:
        cols = _metric_columns(f["metrics"] for f in s["final"])
        out += _md_table(
            ["site", "phase", "round", "examples", "status", *(SHORT.get(c, c) for c in cols)],
            [
                [
                    f["site"],
                    f["phase"],
                    f["round"],
                    _fmt(f["examples"]),
                    f["status"],
                    *(_fmt(f["metrics"].get(c)) for c in cols),
                ]
                for f in s["final"]
            ],
        )
    else:
        out.append("(no site records)")
    out.append("")

    out += ["## Pooled evaluation of the global model", ""]
    if s["pooled"]:
        cols = _metric_columns(p["metrics"] for p in s["pooled"])
        out += _md_table(
            ["round", "examples", "status", *(SHORT.get(c, c) for c in cols)],
            [
                [p["round"], _fmt(p["examples"]), p["status"], *(_fmt(p["metrics"].get(c)) for c in cols)]
                for p in s["pooled"]
            ],
        )
    else:
        out.append("(no pooled evaluation recorded)")
    out.append("")
    b = s["best_pooled"]
    out += [
        "**Best pooled round by mAP@0.5:** "
        + (f"round {b['round']} (mAP@0.5 {b['map50']:.3f})" if b else "none (no pooled mAP@0.5 recorded)"),
        "",
    ]

    out += [
        "## Forgetting",
        "",
        "On each site's original validation split: the best earlier round minus this round (0: at its best so far). "
        f"Per round: `{FILES['forgetting_png']}` and `{FILES['facts_json']}`.",
        "",
    ]
    sites = s["forgetting"]["sites"]
    out += (
        _md_table(
            ["site", "last round", *(f"{SHORT.get(m, m)} {w}" for m in FORGETTING_METRICS for w in ("last", "worst"))],
            [
                [
                    site,
                    _fmt(f["last_round"]),
                    *(
                        f"{_fmt(f[m][w])}" + (f" (round {f[m]['worst_round']})" if w == "worst" and f[m][w] else "")
                        for m in FORGETTING_METRICS
                        for w in ("last", "worst")
                    ),
                ]
                for site, f in sites.items()
            ],
        )
        if sites
        else ["(no site evaluations)"]
    )
    out.append("")

    out += ["## Events (status other than ok)", ""]
    out += [f"- round {e['round']}, {e['site']} ({e['phase']}): {e['status']}" for e in s["events"]] or ["None."]
    out.append("")
    return "\n".join(out)


# --- curves -------------------------------------------------------------------------------------------------------


def _on_line(pts: list[tuple[int, float]], x: int) -> float:
    """Where the site's line is at round `x`: interpolated between its neighbours, else the nearest end."""
    before = [(a, v) for a, v in pts if a < x]
    after = [(a, v) for a, v in pts if a > x]
    if before and after:
        (x0, y0), (x1, y1) = before[-1], after[0]
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return before[-1][1] if before else after[0][1] if after else math.nan


def plot_curves(records: list[RoundRecord], path: Path, title: str) -> Path:
    """One panel per key metric, x = round: a line per site, a thick black pooled line, an X where a round failed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    latest = _latest(records)
    sites = sorted({r.site for r in latest if r.phase != "server"})
    palette = [
        "#1f77b4",
        "#ff7f0e",
        "#2ca02c",
        "#d62728",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#17becf",
        "#bcbd22",
        "#7f7f7f",
    ]
    colour = {s: palette[i % len(palette)] for i, s in enumerate(sites)}
    rounds = [r.round for r in latest]

    fig = Figure(figsize=(16, 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3, sharex=True).ravel()
    failed_any = pooled_any = False
    best = report_facts(records, title, {})["best_pooled"]

    for ax, metric in zip(axes, KEY_METRICS):
        phases = ("train",) if metric in TRAIN_METRICS else ("evaluate",)
        drawn = False
        for site in sites:
            mine = [r for r in latest if r.site == site and r.phase in phases]
            pts = [(r.round, _value(r, metric)) for r in mine if r.ok and math.isfinite(_value(r, metric))]
            if pts:
                ax.plot(*zip(*pts), color=colour[site], linewidth=1.8, marker="o", markersize=4, zorder=3)
                drawn = True
            for r in mine:
                if r.ok:
                    continue
                y = _value(r, metric)
                if not math.isfinite(y):
                    y = _on_line(pts, r.round)
                cross = {
                    "marker": "X",
                    "markersize": 12,
                    "color": colour[site],
                    "markeredgecolor": "black",
                    "markeredgewidth": 1,
                    "linestyle": "none",
                    "zorder": 6,
                }
                if math.isfinite(y):
                    ax.plot([r.round], [y], **cross)
                elif not any(o.ok for o in mine):  # a site that never got through: mark it on the x axis
                    ax.plot([r.round], [0.02], clip_on=False, transform=ax.get_xaxis_transform(), **cross)
                failed_any = drawn = True
        if metric in EVAL_METRICS:
            pooled = [
                (r.round, _value(r, metric))
                for r in latest
                if r.phase == "server" and r.ok and math.isfinite(_value(r, metric))
            ]
            if pooled:
                ax.plot(
                    *zip(*pooled), color="black", linewidth=4, marker="o", markersize=7, alpha=0.8, zorder=2
                )  # under the site lines, so a site that matches the pool stays visible
                pooled_any = drawn = True
            ax.set_ylim(-0.02, 1.02)
        if metric == "map50" and best is not None:
            ax.plot(
                [best["round"]],
                [best["map50"]],
                marker="*",
                markersize=20,
                color="gold",
                markeredgecolor="black",
                linestyle="none",
                zorder=7,
            )
            low = best["map50"] < 0.75  # label above the star, or below it near the top of the panel
            ax.annotate(
                f"best pooled: round {best['round']}\nmAP@0.5 {best['map50']:.3f}",
                (best["round"], best["map50"]),
                xytext=(0, 14 if low else -16),
                textcoords="offset points",
                ha="right"
                if best["round"] == max(rounds) > min(rounds)
                else "left"
                if best["round"] == min(rounds) < max(rounds)
                else "center",
                va="bottom" if low else "top",
                fontsize=9,
                bbox=dict(boxstyle="round", facecolor="white", alpha=0.85),
            )
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray", fontsize=12)
        scope = "per site" if metric in TRAIN_METRICS else "per site and pooled"
        ax.set_title(f"{LABELS[metric]} ({scope})", fontsize=11)
        ax.set_ylabel(LABELS[metric].split(" (")[0])
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelbottom=True)
    for ax in axes[3:]:
        ax.set_xlabel("Round (0 = initial model)")
    if rounds:
        axes[0].set_xlim(min(rounds) - 0.3, max(rounds) + 0.3)

    handles = [Line2D([], [], color=colour[s], linewidth=1.8, marker="o", markersize=4, label=s) for s in sites]
    if pooled_any:
        handles.append(
            Line2D(
                [],
                [],
                color="black",
                linewidth=4,
                marker="o",
                markersize=7,
                alpha=0.8,
                label="pooled: global model,\nserver evaluation",
            )
        )
    if failed_any:
        handles.append(
            Line2D(
                [],
                [],
                color="lightgray",
                marker="X",
                markersize=11,
                markeredgecolor="black",
                linestyle="none",
                label="round not ok: update rejected,\nsite failed, budget exhausted",
            )
        )
    if best is not None:
        handles.append(
            Line2D(
                [],
                [],
                color="gold",
                marker="*",
                markersize=15,
                markeredgecolor="black",
                linestyle="none",
                label="best pooled round\n(by mAP@0.5)",
            )
        )
    if handles:
        fig.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=10, labelspacing=1.0)
    fig.suptitle(title, fontsize=14, fontweight="bold")
    fig.savefig(path, dpi=110)
    return path


# --- entry point --------------------------------------------------------------------------------------------------


def write_report(
    records: list[RoundRecord], out_dir: Path, title: str, config_summary: Mapping[str, object]
) -> dict[str, Path]:
    """Write rounds.csv, curves.png, forgetting.png, summary.md and facts.json into `out_dir`; returns {kind: path}.

    Keys: ``rounds_csv``, ``curves_png``, ``forgetting_png``, ``summary_md``, ``facts_json``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / name for k, name in FILES.items()}
    write_csv(records, paths["rounds_csv"])
    plot_curves(records, paths["curves_png"], title)
    plot_forgetting(forgetting(records), paths["forgetting_png"], title)
    facts = report_facts(records, title, config_summary)
    paths["summary_md"].write_text(_markdown(facts), encoding="utf-8")
    paths["facts_json"].write_text(
        json.dumps(_jsonable(facts), indent=2, default=str, allow_nan=False) + "\n", encoding="utf-8"
    )
    return paths
