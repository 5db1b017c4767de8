"""What governance staff read from privacy ledgers: per-site spending, verification, and a plain HTML report.

Works on a site's own ledger (`ledger.jsonl`, with its plan entries) and on the server's summary ledger
(`privacy-ledger.jsonl`, one `site-report` per site and round) alike: both carry the same fields.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import DataError
from common.privacy.ledger import SEEDED, Verdict, check_heads, verify

LEDGER_NAMES = ("ledger.jsonl", "privacy-ledger.jsonl")


def find_ledgers(paths: list[str | Path]) -> list[Path]:
    """Ledger files named or found (recursively) under the given folders."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(f for name in LEDGER_NAMES for f in p.rglob(name))
        else:
            raise DataError(p, "no such ledger file or folder")
    if not found:
        raise DataError(", ".join(map(str, paths)), f"no privacy ledger found ({' or '.join(LEDGER_NAMES)})")
    return list(dict.fromkeys(found))


@dataclass
class SiteBudget:
    """One site's position as its ledgers record it."""

    site: str
    spent: float = 0.0
    ceiling: float | None = None
    target: float | None = None
    projected: float | None = None  # if the rounds still planned are run
    rounds_trained: int = 0
    refused: int = 0
    last: str = ""  # kind and time of the latest entry
    over_ceiling: list[int] = field(default_factory=list)  # seq numbers of rounds trained above their ceiling
    history: list[tuple[str, float]] = field(default_factory=list)  # (label, epsilon spent) for the burn-down
    seeded_rounds: list[str] = field(default_factory=list)  # research mode: rounds whose noise the server can remove
    units: list[str] = field(default_factory=list)  # privacy units of its trained rounds, in order of first use

    @property
    def unit(self) -> str:
        """ "patient", "image", or both joined (a patient then has the patient guarantee only for the rounds
        trained in that unit; the others protect them at group level)."""
        return " + ".join(self.units) or "-"

    @property
    def remaining(self) -> float | None:
        return None if self.ceiling is None else max(0.0, self.ceiling - self.spent)


def budgets(entries: list[dict[str, Any]]) -> dict[str, SiteBudget]:
    """Per-site spending from ledger entries in order; plan entries give the projection of their run."""
    out: dict[str, SiteBudget] = {}
    plans: dict[tuple[str, str], dict[str, Any]] = {}
    for e in entries:
        site = str(e.get("site", "?"))
        b = out.setdefault(site, SiteBudget(site))
        kind = e.get("kind", "")
        if kind == "plan":
            plans[(site, e.get("run_id", ""))] = e
        if "ceiling_epsilon" in e:
            b.ceiling, b.target = float(e["ceiling_epsilon"]), float(e.get("target_epsilon", e["ceiling_epsilon"]))
        eps = float(e.get("epsilon", b.spent))
        trained = kind == "round" or (kind == "site-report" and str(e.get("status", "ok")) == "ok")
        refused = kind == "refused" or str(e.get("status", "")).startswith("refused")
        if trained and b.ceiling is not None and eps > b.ceiling + 1e-9:  # only a round spends: a refusal or
            b.over_ceiling.append(int(e.get("seq", 0)))  # plan records what was spent before a lowered ceiling
        b.rounds_trained += trained
        if trained and "unit" in e:
            unit = "patient" if str(e["unit"]).startswith("one patient") else "image"
            if unit not in b.units:
                b.units.append(unit)
        if trained and e.get("noise") == SEEDED:
            b.seeded_rounds.append(f"{e.get('run_id', '?')} r{e.get('round', '?')}")
        b.refused += refused
        b.spent = max(b.spent, eps) if kind != "plan" else b.spent
        b.last = f"{'refused' if refused else kind} {e.get('time', '')}".strip()
        if not b.history:  # the starting point: what was spent before the first entry shown
            b.history.append(("start", float(e.get("epsilon", 0.0)) if kind == "plan" else 0.0))
        if kind != "plan":
            b.history.append((f"r{e.get('round', '?')}" + (" refused" if refused else ""), b.spent))
        plan = plans.get((site, e.get("run_id", ""))) or e
        planned = plan.get("planned_rounds")
        if planned is not None and "projected_epsilon" in plan:
            done = int(e.get("round", 0)) >= int(planned)
            b.projected = b.spent if done or refused else max(b.spent, float(plan["projected_epsilon"]))
        else:
            b.projected = b.spent
    return out


def _is_site_ledger(entries: list[dict[str, Any]]) -> bool:
    return bool(entries) and all(e.get("kind") != "site-report" for e in entries)


def verify_all(files: list[Path]) -> tuple[dict[Path, Verdict], list[dict[str, Any]]]:
    """Verify every ledger, and each site ledger against the heads recorded for its site by the server ledgers
    among `files`; returns the verdicts and the entries of the intact parts."""
    read = {f: verify(f) for f in files}
    reports = [e for _, got in read.values() for e in got if e.get("kind") == "site-report" and "ledger_head" in e]
    servers = any(got and not _is_site_ledger(got) for _, got in read.values())
    verdicts, entries = {}, []
    for f, (verdict, got) in read.items():
        if servers and _is_site_ledger(got):
            names = {e.get("site") for e in got}
            verdict = check_heads(verdict, got, [r for r in reports if r.get("site") in names])
        verdicts[f] = verdict
        entries += got
    return verdicts, entries


def read_all(paths: list[str | Path]) -> tuple[dict[Path, Verdict], dict[str, SiteBudget]]:
    """Verify every ledger (site ledgers against the server's recorded heads when both are among `paths`) and
    gather per-site budgets (from the intact part of each)."""
    verdicts, entries = verify_all(find_ledgers(paths))
    # A server's site-report copies a site's round entry (its ledger_head is that entry's hash): count it once.
    site_hashes = {e["hash"] for e in entries if e.get("kind") != "site-report"}
    entries = [e for e in entries if not (e.get("kind") == "site-report" and e.get("ledger_head") in site_hashes)]
    entries.sort(key=lambda e: str(e.get("time", "")))
    return verdicts, budgets(entries)


def _burn_down_png(b: SiteBudget) -> str:
    from common.metrics.plots import _figure

    fig, ax = _figure(6.0, 3.2)
    xs = list(range(len(b.history)))
    remaining = [(b.ceiling - eps) if b.ceiling is not None else -eps for _, eps in b.history]
    ax.step(xs, remaining, where="post", color="#1f77b4", label="budget remaining (ceiling - spent)")
    if b.ceiling is not None:
        ax.axhline(0, color="#d62728", lw=1, ls="--", label="ceiling reached")
        if b.target is not None:
            ax.axhline(b.ceiling - b.target, color="#ff7f0e", lw=1, ls=":", label="planned target")
    ax.set_xticks(xs, [label for label, _ in b.history], rotation=45 if len(xs) > 8 else 0, fontsize=8)
    ax.set_xlabel("training rounds, oldest first")
    ax.set_ylabel("epsilon left")
    ax.set_title(f"{b.site}: privacy budget burn-down")
    ax.legend(fontsize=8, loc="upper right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def render_html(verdicts: dict[Path, Verdict], sites: dict[str, SiteBudget]) -> str:
    """A report for readers who are not engineers: what each site's images have cost and what is left."""
    rows = "".join(
        f"<tr><td>{html.escape(b.site)}</td><td>{_num(b.spent)}</td><td>{_num(b.ceiling)}</td>"
        f"<td>{_num(b.remaining)}</td><td>{_num(b.projected)}</td><td>{html.escape(b.unit)}</td>"
        f"<td>{b.rounds_trained}</td><td>{b.refused}</td>"
        f"<td>{'YES' if b.over_ceiling else 'no'}</td>"
        f"<td>{f'YES ({len(b.seeded_rounds)} rounds)' if b.seeded_rounds else 'no'}</td></tr>"
        for b in sites.values()
    )
    checks = "".join(
        f"<li><code>{html.escape(str(p))}</code>: {'intact' if v.ok else 'BROKEN'} ({html.escape(str(v))})</li>"
        for p, v in verdicts.items()
    )
    charts = "".join(
        f'<h3>{html.escape(b.site)}</h3><img alt="burn-down of {html.escape(b.site)}" '
        f'src="data:image/png;base64,{_burn_down_png(b)}">'
        for b in sites.values()
    )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>fracfl privacy audit</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}}table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:.3em .6em;text-align:right}}td:first-child{{text-align:left}}</style></head><body>
<h1>Privacy audit</h1>
<p>Each hospital site trains on its own radiographs with differential privacy. <b>Epsilon</b> measures how much
the published models can reveal about any single patient (or, where "Protects" says image, any single radiograph):
lower is more private. Every site has a
<b>ceiling</b> it will never cross: before each training round it checks that the round stays under the ceiling,
and refuses to train otherwise. Spending never resets: a new training run on the same images continues from what
they have already cost.</p>
<h2>Budgets</h2>
<table><tr><th>Site</th><th>Spent</th><th>Ceiling</th><th>Remaining</th><th>Projected (if planned rounds run)</th>
<th>Protects</th><th>Rounds trained</th><th>Rounds refused</th><th>Any entry above ceiling</th>
<th>Research mode (seeded noise)</th></tr>{rows}</table>
<p>"Research mode" rounds drew their noise from a seed the coordinating server knows: the server could remove
that noise, so those rounds give <b>no</b> protection against the server, whatever their epsilon says. Real
sites never use it unless their own configuration allows it.</p>
<h2>Ledger integrity</h2>
<p>Every ledger entry is chained to the one before it by a cryptographic hash, so an edited, deleted or reordered
entry is detected. When a site's ledger is audited together with the server's, it is also compared with the ledger
positions the site reported to the server after each round, so a ledger rewritten or restored from an older copy
is detected too.</p><ul>{checks}</ul>
<h2>Burn-down per site</h2>{charts}
<p><small>Epsilon from Opacus' RDP accountant (the figure budgets are checked against); the PRV accountant's figure
is recorded beside it in the ledgers. Privacy unit: per site, in each ledger entry (a patient where the site's
data names patients, else a radiograph).</small></p></body></html>"""


def write_audit_report(paths: list[str | Path], out: Path) -> Path:
    """The HTML audit of the ledgers under `paths`, written to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(*read_all(paths)), encoding="utf-8")
    return out
