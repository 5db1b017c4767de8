"""The continuous-learning report: per period and per site, how the clinical model did on held-out cases, what it
forgot, what the gate decided and what privacy it cost. JSON (the facts), HTML (the table and curves) and PNG.

Presentation only: it reads `PeriodRecord`s the loop wrote and derives forgetting from them, so it can be tested on
hand-made records.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.config import EvalConfig

# "refused": the gate kept the champion; "rolled back": it kept the champion (or there was no round), which then
# failed its re-check against the version it had replaced, so the site returned to that version; "no round": the
# site got no challenger this period
DECISIONS = ("initial", "promoted", "refused", "rolled back", "no round")
FILES = {"json": "continual.json", "html": "continual.html", "png": "continual.png"}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass(frozen=True)
class PeriodRecord:
    """One site at the end of one period (period 0: the model trained on the original data, before any arrival)."""

    period: int
    site: str
    profile: str  # acquisition profile of this period's arrivals
    decision: str  # one of DECISIONS
    model_version: str  # the site's clinical model after the gate
    holdout_images: int  # held-out arrivals so far (all periods), scored against the ground truth
    sensitivity: float  # image level, on those; NaN when none is fractured
    fp_per_image: float
    original_sensitivity: float  # the clinical model on the site's original validation split
    epsilon: float  # privacy spent by the site so far (its ledger; 0 without DP)
    arrived: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)  # the reader's verdicts this period, by kind
    reader_errors: int = 0
    reader_misses: int = 0
    pool_version: int | None = None
    # The reviewers' disagreement rate with the clinical model after this period's review, as the site's round request
    # computes it (client/continual/disagreement.py: reviewed images of the version now in use, of all periods it
    # read, on which a reviewer rejected, moved or re-classed a box, added one or said "no fracture"); NaN: none.
    disagreement: float = math.nan
    disagreement_reviewed: int = 0  # the reviewed images that rate is over
    operating_point: float = EvalConfig.conf  # the clinical model's score threshold (its approved one, else eval.conf)


def forgetting(records: Iterable[PeriodRecord]) -> dict[tuple[str, int], float]:
    """(site, period) -> the best original-validation sensitivity of an earlier period minus this period's: how much
    the site's clinical model lost on its original data (0 at period 0 and whenever it did not lose)."""
    out: dict[tuple[str, int], float] = {}
    best: dict[str, float] = {}
    for r in sorted(records, key=lambda r: (r.site, r.period)):
        prior = best.get(r.site, math.nan)
        now = r.original_sensitivity
        out[(r.site, r.period)] = max(0.0, prior - now) if math.isfinite(prior) and math.isfinite(now) else 0.0
        if math.isfinite(now):
            best[r.site] = max(now, prior) if math.isfinite(prior) else now
    return out


def _jsonable(o: object) -> object:
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_jsonable(v) for v in o]
    return o


def facts(records: Sequence[PeriodRecord], title: str) -> dict[str, Any]:
    """What the JSON holds: every record with its forgetting, and per site the gate's tally and final figures."""
    for r in records:
        if r.decision not in DECISIONS:
            raise ValueError(f"period {r.period}, site {r.site}: decision {r.decision!r} is not one of {DECISIONS}")
    lost = forgetting(records)
    rows = sorted(records, key=lambda r: (r.period, r.site))
    sites: dict[str, dict[str, Any]] = {}
    for r in rows:
        s = sites.setdefault(r.site, {"promotions": 0, "refusals": 0, "rollbacks": 0})
        s["promotions"] += r.decision == "promoted"
        s["refusals"] += r.decision == "refused"
        s["rollbacks"] += r.decision == "rolled back"
        s.update(final_period=r.period, model_version=r.model_version, sensitivity=r.sensitivity,
                 fp_per_image=r.fp_per_image, forgetting=lost[(r.site, r.period)], epsilon=r.epsilon,
                 disagreement=r.disagreement)  # fmt: skip
    return {
        "title": title,
        "periods": max((r.period for r in rows), default=0),
        "sites": sites,
        "records": [{**asdict(r), "forgetting": lost[(r.site, r.period)]} for r in rows],
        "files": dict(FILES),
    }


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.3f}"
    return "n/a" if v is None else str(v)


def plot(records: Sequence[PeriodRecord], path: Path, title: str) -> Path:
    """Five panels against the period, a line per site: held-out sensitivity (a green triangle where the gate
    promoted, a red one where it refused, a purple diamond where the site rolled back), false positives per image,
    forgetting, privacy spent, the
    reviewers' disagreement rate; a dotted line where a site's acquisition profile changed. The legend takes the
    sixth place."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    lost = forgetting(records)
    sites = sorted({r.site for r in records})
    colour = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(sites)}
    fig = Figure(figsize=(13, 11), layout="constrained")
    FigureCanvasAgg(fig)
    *axes, key_ax = fig.subplots(3, 2, sharex=True).ravel()
    panels = (
        ("sensitivity", "Sensitivity on held-out cases (image level, as the gate counts it)", lambda r: r.sensitivity),
        ("fp_per_image", "False positives per held-out image", lambda r: r.fp_per_image),
        ("forgetting", "Forgetting (original validation sensitivity lost)", lambda r: lost[(r.site, r.period)]),
        ("epsilon", "Privacy spent (epsilon, cumulative)", lambda r: r.epsilon),
        ("disagreement", "Reviewers' disagreement rate with the clinical model", lambda r: r.disagreement),
    )
    marks = {"promoted": ("^", "#2ca02c"), "refused": ("v", "#d62728"), "rolled back": ("D", "#9467bd")}
    for ax, (key, label, value) in zip(axes, panels):
        drawn = False
        for site in sites:
            mine = sorted((r for r in records if r.site == site), key=lambda r: r.period)
            pts = [(r.period, value(r)) for r in mine if math.isfinite(value(r))]
            if pts:
                ax.plot(*zip(*pts), color=colour[site], linewidth=1.8, marker="o", markersize=4, zorder=3)
                drawn = True
            if key == "sensitivity":
                for r in mine:
                    if r.decision in marks and math.isfinite(r.sensitivity):
                        m, c = marks[r.decision]
                        ax.plot([r.period], [r.sensitivity], marker=m, markersize=12, color=c, markeredgecolor="black",
                                linestyle="none", zorder=5)  # fmt: skip
            for before, r in zip(mine, mine[1:]):
                if r.profile != before.profile:  # the site drifted to another acquisition profile
                    ax.axvline(r.period, color=colour[site], linestyle=":", linewidth=1.5, zorder=1)
        if key in ("sensitivity", "forgetting", "disagreement"):
            ax.set_ylim(-0.02, 1.02)
        else:
            ax.set_ylim(bottom=0)
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_title(label, fontsize=11)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelbottom=True)
    for ax in axes[3:]:
        ax.set_xlabel("Period (0 = before any arrival)")
    handles = [Line2D([], [], color=colour[s], linewidth=1.8, marker="o", markersize=4, label=s) for s in sites]
    step = {d: "re-check" if d == "rolled back" else "gate" for d in marks}
    handles += [
        Line2D(
            [], [], marker=m, color=c, markeredgecolor="black", markersize=10, linestyle="none", label=f"{step[d]}: {d}"
        )
        for d, (m, c) in marks.items()
    ]
    handles.append(Line2D([], [], color="gray", linestyle=":", linewidth=1.5, label="site drifts to\nanother profile"))
    key_ax.axis("off")
    key_ax.legend(handles=handles, loc="center", frameon=False, fontsize=10)
    fig.suptitle(title, fontsize=14, fontweight="bold")
    fig.savefig(path, dpi=110)
    return path


def render_html(f: dict[str, Any], png: Path) -> str:
    """The table a coordinator reads: one row per period and site, then the curves (embedded, so one file travels)."""
    cols = ("period", "site", "profile", "arrived", "decision", "model_version", "operating_point", "holdout_images",
            "sensitivity", "fp_per_image", "forgetting", "epsilon", "disagreement", "disagreement_reviewed", "reader_errors",
            "reader_misses")  # fmt: skip
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in cols) + "</tr>" for r in f["records"]
    )
    image = base64.b64encode(png.read_bytes()).decode()
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(f["title"])}</title>
<style>body{{font-family:sans-serif;max-width:80em;margin:2em auto;line-height:1.4}}table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:.3em .6em;text-align:right}}td:nth-child(2),td:nth-child(3){{text-align:left}}
</style></head><body><h1>{html.escape(f["title"])}</h1>
<p>Each period new radiographs arrive at every site, a simulated radiologist reviews the site's findings, the
verdicts join the site's training pool, a federated round runs and each site's gate decides whether the new model
replaces its clinical one. A site that keeps its clinical model re-checks it against the version it replaced on the
grown held-out cases, and rolls back when the gate now refuses it. Sensitivity and false positives are the clinical model's, on the held-out arrivals so far,
against the synthetic ground truth. Forgetting is the best earlier sensitivity on the site's original validation
split minus this period's. Epsilon is what the site's ledger says it has spent. Disagreement is the share of
reviewed images on which the site's reviewers disagreed with its clinical model (over the reviewed images of the
version in use, as the site's round request computes it).</p>
<table><tr>{head}</tr>{body}</table>
<img alt="curves per period and site" style="max-width:100%" src="data:image/png;base64,{image}"></body></html>"""


def write_report(records: Sequence[PeriodRecord], out_dir: Path, title: str) -> dict[str, Path]:
    """continual.json, continual.png and continual.html in `out_dir`; returns {json, html, png: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / name for k, name in FILES.items()}
    f = facts(records, title)
    paths["json"].write_text(json.dumps(_jsonable(f), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    plot(records, paths["png"], title)
    paths["html"].write_text(render_html(_jsonable(f), paths["png"]), encoding="utf-8")  # type: ignore[arg-type]
    return paths
