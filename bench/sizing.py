"""How many epochs of the FracAtlas benchmark fit a time budget, computed from this machine's measured speed.

Why: the first GPU session ran a fixed epoch count whose estimate was 4x off and finished no arm. Nothing here assumes
a throughput: `read_central_probe` and `read_dp_probe` read the figures of short real runs (`fracfl train` with
`train.max_steps`, and a one-round `fracfl simulate privacy=dp_sgd`) made on the machine itself, and `plan` turns
them into one epoch count for every arm (federated: rounds x 1 local epoch = the same compute) with a safety margin.

The time model per arm, for E epochs (N training images, V validation images, r the central probe's images/s):

    central     start_c + E * (N + V) / r                                    (a validation pass after every epoch)
    fedavg      start_f + E * (N / r + V / r + round_s)                      (three sites share one card: no gain assumed)
    fedprox     the same as fedavg
    fedavg_gn   start_f + E * (gn * (N + V) / r + round_s)                   (GroupNorm: `gn` times slower, an assumption)
    fedavg_dp   start_f + E * (largest site / r_dp + gn * V / r + round_s)   (r_dp: a DP site's images/s, measured while
                                                                              three DP sites share the machine)

start_c and start_f (process and Ray start, data loading, the first evaluation) are measured by the probes; a
validation pass is counted at training speed (it is faster: conservative); round_s is the server's per-round work
besides evaluation (aggregation, screening, the commit), a flag.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

FEDERATED = ("fedavg", "fedprox", "fedavg_gn", "fedavg_dp")


@dataclass
class Speeds:
    """What the probes measured (None: not measured) and the assumptions standing in for the rest."""

    central_images_per_s: float | None = None
    central_start_s: float | None = None  # a `fracfl train` process besides its training steps
    dp_images_per_s: float | None = None  # one DP site's images/s, three DP sites running side by side
    federated_start_s: float | None = None  # a `fracfl simulate` besides its rounds' training and evaluation
    gn_slowdown: float = 1.3  # GroupNorm vs BatchNorm training time (assumed, not probed)
    dp_slowdown: float = 4.0  # used only when the DP probe gave nothing: DP site vs central images/s
    round_s: float = 2.0  # server work per round besides the pooled evaluation
    default_federated_start_s: float = 40.0  # used only when the DP probe gave nothing
    probe_s: float = 0.0  # what the probes took
    notes: list[str] = field(default_factory=list)

    def dp_rate(self) -> float:
        return self.dp_images_per_s or self.central_images_per_s / self.dp_slowdown

    def fed_start(self) -> float:
        return self.federated_start_s if self.federated_start_s is not None else self.default_federated_start_s


@dataclass
class Sizes:
    train_images: int
    val_images: int
    largest_site_images: int  # the slowest DP site's share decides a DP round


@dataclass
class Plan:
    epochs: int
    predicted_s: dict[str, float]  # per arm, at `epochs`
    budget_s: float  # what the arms may use (after the probes), before the margin
    margin: float
    note: str

    def to_dict(self) -> dict:
        return asdict(self)


def read_central_probe(run_dir: Path, wall_s: float, speeds: Speeds) -> None:
    """Central images/s and start-up cost from a probe `fracfl train` run's metrics.json."""
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        speeds.notes.append(f"central probe gave no metrics.json (see {run_dir / 'bench.log'})")
        return
    train = json.loads(metrics.read_text())["train"]
    speeds.central_images_per_s = float(train["images_per_s"])
    speeds.central_start_s = max(0.0, wall_s - float(train["seconds"]))


def read_dp_probe(run_dir: Path, wall_s: float, batch: int, val_images: int, speeds: Speeds) -> None:
    """A DP site's images/s (the slowest site, sharing the machine with the other two) and the simulation's own
    cost from a probe run of one round: its wall time less that round's training, evaluation and server work."""
    records = _records(run_dir)
    train = [r for r in records if r.get("phase") == "train" and r.get("status") == "ok"]
    if not train or speeds.central_images_per_s is None:
        speeds.notes.append(f"DP probe gave no site training records (see {run_dir / 'bench.log'})")
        return
    rates = [float(r["metrics"]["images_per_s"]) for r in train]
    seconds = max(float(r["metrics"]["steps"]) * batch / rate for r, rate in zip(train, rates))
    speeds.dp_images_per_s = min(rates)
    round_eval = speeds.gn_slowdown * val_images / speeds.central_images_per_s
    speeds.federated_start_s = max(0.0, wall_s - seconds - round_eval - speeds.round_s)


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "records.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def arm_seconds(arm: str, epochs: int, s: Speeds, n: Sizes) -> float:
    """Predicted wall time of one arm run alone on the machine for `epochs` epochs (rounds x 1 local epoch)."""
    r, gn = s.central_images_per_s, s.gn_slowdown
    if arm == "central":
        return s.central_start_s + epochs * (n.train_images + n.val_images) / r
    per_round = {
        "fedavg": (n.train_images + n.val_images) / r,
        "fedprox": (n.train_images + n.val_images) / r,
        "fedavg_gn": gn * (n.train_images + n.val_images) / r,
        "fedavg_dp": n.largest_site_images / s.dp_rate() + gn * n.val_images / r,
    }[arm]
    return s.fed_start() + epochs * (per_round + s.round_s)


def plan(
    arms: list[str],
    s: Speeds,
    n: Sizes,
    budget_s: float,
    *,
    margin: float = 0.25,
    target: int = 30,
    min_epochs: int = 1,
    max_epochs: int = 60,
) -> Plan:
    """The largest epoch count (at most `max_epochs`) whose predicted total for the arms, run one after another,
    fits (1 - margin) of the budget; at least `min_epochs`, with a note when that still does not fit or misses
    `target` (arms that overrun are then cut at their share of the time)."""
    usable = (1 - margin) * budget_s
    if s.central_images_per_s is None or s.central_start_s is None:
        return Plan(min_epochs, {}, budget_s, margin, f"no speed measured: {min_epochs} epoch(s), nothing predicted")

    def total(e: int) -> float:
        return sum(arm_seconds(a, e, s, n) for a in arms)

    fit = next((e for e in range(max_epochs, 0, -1) if total(e) <= usable), 0)
    epochs = max(fit, min_epochs)
    if fit < min_epochs:
        note = (
            f"{epochs} epoch(s) (the minimum) are predicted to take {total(epochs):.0f} s of {usable:.0f} s "
            "usable: arms will be cut"
        )
    elif fit < target:
        note = f"{fit} epochs fit (below the {target}-epoch target): predicted {total(fit):.0f} s of {usable:.0f} s"
    else:
        note = f"{fit} epochs fit (target {target} met): predicted {total(fit):.0f} s of {usable:.0f} s usable"
    return Plan(epochs, {a: round(arm_seconds(a, epochs, s, n), 1) for a in arms}, budget_s, margin, note)


def shares(predicted: dict[str, float], remaining: list[str], left_s: float) -> float:
    """The next arm's time allowance when arms run one after another: the time left split in proportion to the
    predicted times of the arms not yet run, so an overrun cuts every arm alike instead of starving the last ones."""
    weights = [predicted.get(a, 1.0) for a in remaining]
    return left_s * weights[0] / max(sum(weights), 1e-9)
