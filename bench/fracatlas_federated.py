"""Federated vs centralised, and DP vs non-DP federated, on FracAtlas: the arms of both comparisons in one run.

Every arm trains YOLOv7-tiny from scratch (no pretrained weights can be fetched) with the same image size, batch,
seed and total compute (federated rounds x 1 local epoch = centralised epochs), on one shared data preparation
(the same images, the same three sites by body region, the same validation images):

    central    `fracfl train experiment=fracatlas_baseline`, the centralised yardstick (BatchNorm model)
    fedavg     `fracfl simulate partition=fracatlas_regions`, FedAvg                      (BatchNorm model)
    fedprox    the same with FedProx (strategy.params.proximal_mu from conf unless --mu)  (BatchNorm model)
    fedavg_gn  FedAvg with the GroupNorm model that DP-SGD needs: the like-for-like non-DP reference
    fedavg_dp  fedavg_gn with DP-SGD at every site, target epsilon --epsilon per site (`privacy=dp_sgd`)

All models are scored by the same evaluator on the same validation images (centralised: after each epoch;
federated: the server's pooled evaluation after each round).

Sized from measured speed, not assumed: before the arms, two short probes run on this machine (bench/sizing.py):
`fracfl train` for --probe-steps steps (central images/s, start-up) and a one-round `fracfl simulate privacy=dp_sgd`
(a DP site's images/s, a simulation's start-up). `--epochs auto` (the default) then takes the largest epoch count
whose predicted time for all the arms fits the time limit with a --margin (25%) to spare.

Arms run one after another, each with the whole machine (`--jobs 1`, the default): on the first GPU session, five
arms side by side (13 processes time-slicing one card) ran the central arm at 13 images/s where it alone ran at 199,
and no arm finished. Each arm may use the time left in proportion to its predicted share, so an estimate that is
off cuts every arm alike rather than starving the last; an arm stopped at its share still reports its last
completed epoch (history.csv, else its log) or round (records.jsonl). Results are rewritten as each arm ends.
`--pack DIR` also leaves results.md and every arm's weights as `<arm>.fp16.safetensors` in DIR (bench/outbox.py):
what a GPU device call brings back (bench/gpu/run.sh).

    .venv/bin/python bench/fracatlas_federated.py --device cuda --time-limit 450          # GPU: sized to the limit
    .venv/bin/python bench/fracatlas_federated.py --smoke --data D --meta M               # CPU, tiny, minutes
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FRACATLAS, REPO, emit, machine
from outbox import checkpoint, export_arm
from sizing import Plan, Sizes, Speeds, plan, read_central_probe, read_dp_probe, shares

ARMS: dict[str, list[str]] = {  # arm -> Hydra overrides of its command (central: fracfl train; others: simulate)
    "central": [],
    "fedavg": ["strategy=fedavg", "augment=mosaic"],  # mosaic, as central's FracAtlas recipe has (like for like)
    "fedprox": ["strategy=fedprox", "augment=mosaic"],
    "fedavg_gn": ["strategy=fedavg", "model.norm=group"],  # no mosaic: the like-for-like reference of the DP arm
    "fedavg_dp": ["strategy=fedavg", "privacy=dp_sgd"],  # privacy=dp_sgd sets model.norm=group itself
}
# (numerator, denominator, goal, what it answers)
RATIOS = [
    ("fedavg", "central", 0.95, "issue 3: FedAvg vs centralised"),
    ("fedprox", "central", 0.95, "issue 3: FedProx vs centralised"),
    ("fedavg_dp", "fedavg_gn", 0.8, "issue 4: DP vs non-DP FedAvg, both GroupNorm (like for like)"),
    ("fedavg_dp", "fedavg", None, "DP GroupNorm FedAvg vs the BatchNorm FedAvg (DP and GroupNorm together)"),
    ("fedavg_gn", "fedavg", None, "GroupNorm vs BatchNorm, both non-DP FedAvg (price of GroupNorm alone)"),
]
METRICS = ("map50", "map50_95", "sensitivity", "specificity", "roc_auc", "precision", "recall", "f1")
WEAK = 0.05  # a denominator mAP50 below this makes a ratio mostly noise
STOPPED = "stopped at the time limit"
# --smoke: the same path end to end on a CPU in minutes (tiny images, 1-2 epochs); explicit flags still win
SMOKE = {
    "device": "cpu",
    "imgsz": 64,
    "batch": 4,
    "fraction": 0.02,
    "min_epochs": 2,
    "max_epochs": 2,
    "target_epochs": 2,
    "probe_steps": 2,
    "dp_probe_steps": 1,
    "round_s": 1.0,
}
# a central arm's log line per epoch (common.engine.centralised; read when history.csv is written only at the end)
EPOCH_LINE = re.compile(
    r"epoch (\d+): boxes: mAP50 (\S+) mAP50-95 (\S+) \|.*?images (\d+) \((\d+) pos.*?"
    r"sens (\S+) spec (\S+) AUC (\S+)"
)


@dataclass
class Arm:
    name: str
    cmd: list[str]
    run_dir: Path
    processes: int  # how many busy processes it runs (for thread counts)
    proc: subprocess.Popen | None = None
    started: float = 0.0
    deadline: float = float("inf")
    result: dict = field(default_factory=dict)


def stratified_subset(images: list[Path], positive: list[bool], fraction: float, seed: int) -> list[Path]:
    """`fraction` of the images, fractured and fracture-free ones separately (at least one of each kind present),
    picked by a seeded stable hash of the file name: the same for every arm, process and machine."""
    from simulations.partitioners import stable_key

    if fraction >= 1:
        return list(images)
    out: list[Path] = []
    for kind in (True, False):
        group = sorted((p for p, pos in zip(images, positive) if pos == kind), key=lambda p: stable_key(p.name, seed))
        out += group[: max(1, round(fraction * len(group)))] if group else []
    return sorted(out)


def prepare_data(source: Path, fraction: float, seed: int, out: Path) -> Path:
    """A data.yaml listing the chosen train/val images (absolute paths; labels by the images/ -> labels/ rule)."""
    import yaml

    from common.data.labels import read_labels
    from common.data.spec import load_spec

    spec = load_spec(source)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        images = spec.images(split)
        positive = [len(read_labels(spec.label_file(p), spec.nc)) > 0 for p in images]
        chosen = stratified_subset(images, positive, fraction, seed)
        (out / f"{split}.txt").write_text("".join(f"{p}\n" for p in chosen))
    (out / "data.yaml").write_text(yaml.safe_dump({"train": "train.txt", "val": "val.txt", "names": dict(spec.names)}))
    return out / "data.yaml"


def prepare_sites(partition: list[str], out: Path) -> Path:
    """Partition once with `fracfl simulate`'s own code and config; every federated arm reuses the result."""
    from hydra import compose, initialize_config_dir

    from common.config import CONF_DIR, to_typed
    from simulations.config import SimulationJob
    from simulations.runner import prepare_sites as partition_sites

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("federated", overrides=[*partition, f"run_dir={out}", "progress=false"])
    partition_sites(to_typed(cfg, SimulationJob), out)
    return out


def commands(
    a: argparse.Namespace,
    names: list[str],
    data_yaml: Path,
    meta: Path,
    out: Path,
    epochs: int,
    more: tuple[str, ...] = (),
) -> list[Arm]:
    """One command per arm in `names` (in ARMS order: the yardstick first), each with `more` overrides (probes)."""
    cli = [sys.executable, "-m", "common.cli"]
    common = [
        f"train.imgsz={a.imgsz}",
        f"train.batch_size={a.batch}",
        f"train.device={a.device}",
        f"seed={a.seed}",
        "progress=false",
        *more,
        *a.extra,
    ]
    gpus = round(0.99 / 3, 2) if a.device.startswith("cuda") else 0.0  # 3 sites share the one GPU
    partition = ["partition=fracatlas_regions", f"partition.source={data_yaml}", f"+partition.meta={meta}"]
    fed = [
        *partition,
        f"federation.rounds={epochs}",
        "train.local_epochs=1",
        "federation.fraction_evaluate=0",
        f"federation.publish_every={epochs}",
        "export.enabled=false",
        "tracking=disabled",
        f"federation.client_gpus={gpus}",
        "federation.client_cpus=1",
    ]
    if a.device.startswith("cuda") and not any(x.startswith("train.workers=") for x in a.extra):
        fed.append(f"train.workers={site_workers()}")  # three sites' loaders share the cores
    arms = []
    for name in (n for n in ARMS if n in names):
        run_dir = out / name
        if name == "central":
            cmd = [
                *cli,
                "train",
                "experiment=fracatlas_baseline",
                f"data.path={data_yaml}",
                f"train.epochs={epochs}",
                *common,
                f"run_dir={run_dir}",
            ]
            arms.append(Arm(name, cmd, run_dir, 1))
            continue
        extra = list(ARMS[name])
        if name == "fedprox" and a.mu is not None:
            extra.append(f"strategy.params.proximal_mu={a.mu}")
        if name == "fedavg_dp":  # a fresh ledger: spending on the same images never resets (docs/privacy.md)
            extra += [
                f"privacy.target_epsilon={a.epsilon}",
                f"privacy.ceiling_epsilon={max(10.0, a.epsilon)}",
                f"privacy.ledger_dir={run_dir / 'privacy'}",
                f"privacy.max_physical_batch={a.batch}",
            ]
        cmd = [*cli, "simulate", *extra, *fed, *common, f"run_id={name}", f"run_dir={run_dir}"]
        arms.append(Arm(name, cmd, run_dir, 4))
    return arms


def site_workers() -> int:
    """Loader processes per federated site on a GPU machine: the cores but two, split over the three sites."""
    from common.engine.loader import available_cores

    return max(1, (available_cores() - 2) // 3)


def threads_for(arm: Arm, together: list[Arm]) -> int:
    """Torch threads per process: the cores split over the busy processes of the arms running together."""
    return max(1, (os.cpu_count() or 1) // sum(x.processes for x in together or [arm]))


def start(arm: Arm, sites: Path, threads: int) -> None:
    arm.run_dir.mkdir(parents=True)
    if arm.name != "central":
        for f in ("sites.json", "pooled_val.txt", "pooled_val.yaml"):  # the shared partition, reused as on resume
            shutil.copy2(sites / f, arm.run_dir / f)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
        "RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION": "0.05",
    }  # several Ray clusters may run side by side
    with open(arm.run_dir / "bench.log", "w") as log:  # the child keeps its own handle
        log.write(" ".join(arm.cmd) + "\n\n")
        log.flush()
        arm.proc = subprocess.Popen(
            arm.cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )  # its own process group: Ray's processes die with it
    arm.started = time.perf_counter()


def stop(arm: Arm) -> None:
    """Kill the arm's whole process group (Ray's workers included) and reap it."""
    if arm.proc is not None and arm.proc.poll() is None:
        os.killpg(arm.proc.pid, signal.SIGKILL)
        arm.proc.wait()


def run_probe(arm: Arm, sites: Path, timeout: float) -> float:
    """Run one probe alone with the whole machine, at most `timeout` seconds; its wall time."""
    start(arm, sites, threads_for(arm, [arm]))
    try:
        arm.proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        stop(arm)
    return time.perf_counter() - arm.started


def probe(a: argparse.Namespace, data_yaml: Path, meta: Path, out: Path, sites: Path, val_images: int) -> Speeds:
    """This machine's speed from short real runs of the arms' own commands: central (BatchNorm, non-DP) for
    --probe-steps steps, then (when a DP arm is planned) one DP round of --dp-probe-steps steps per site."""
    s = Speeds(gn_slowdown=a.gn_slowdown, round_s=a.round_s)
    (c,) = commands(a, ["central"], data_yaml, meta, out / "probe", 1, (f"train.max_steps={a.probe_steps}",))
    read_central_probe(c.run_dir, run_probe(c, sites, a.probe_timeout), s)
    if "fedavg_dp" in a.arms and a.dp_probe_steps > 0:
        (d,) = commands(a, ["fedavg_dp"], data_yaml, meta, out / "probe", 1, (f"train.max_steps={a.dp_probe_steps}",))
        read_dp_probe(d.run_dir, run_probe(d, sites, a.probe_timeout), a.batch, val_images, s)
    return s


def site_sizes(sites: Path) -> list[int]:
    """Training images per site of the shared partition."""
    manifest = json.loads((sites / "sites.json").read_text())
    return [len((Path(m["data"]).parent / "train.txt").read_text().split()) for m in manifest]


def central_epochs(run_dir: Path) -> list[dict]:
    """The central arm's completed epochs: history.csv, else (an engine that writes it only at the end) the
    per-epoch validation lines of its log."""
    if (run_dir / "history.csv").is_file():
        return [{k: _num(v) for k, v in r.items()} for r in _csv(run_dir / "history.csv")]
    log = run_dir / "bench.log"
    keys = ("epoch", "map50", "map50_95", "n_images", "n_positive", "sensitivity", "specificity", "roc_auc")
    rows = (
        [dict(zip(keys, map(_num, m.groups()))) for m in EPOCH_LINE.finditer(log.read_text())] if log.is_file() else []
    )
    return rows


def _num(v: str) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):  # "n/a", empty
        return None


def server_rounds(run_dir: Path) -> list[dict]:
    """A federated arm's pooled evaluations by round (round 0: the initial model), the last record per round."""
    path = run_dir / "records.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []
    return sorted({r["round"]: r for r in records if r["phase"] == "server"}.values(), key=lambda r: r["round"])


def collect(arm: Arm, code: int | None, epochs: int) -> dict:
    """The arm's metrics after its last completed epoch/round (the final ones when it finished), its curve, and
    (federated) its sites' speed and epsilon. `code` None: stopped at the time limit."""
    wall = time.perf_counter() - arm.started
    status = "ok" if code == 0 else (STOPPED if code is None else f"failed (exit {code})")
    res: dict = {
        "status": status,
        "wall_s": round(wall, 1),
        "planned": epochs,
        "completed": 0,
        "log": str(arm.run_dir / "bench.log"),
    }
    res.update(_central(arm.run_dir, code == 0) if arm.name == "central" else _federated(arm.run_dir))
    return res


def _central(run_dir: Path, finished: bool) -> dict:
    rows = central_epochs(run_dir)
    if not rows:
        return {}
    out = {"completed": int(rows[-1]["epoch"]), "curve_map50": [r.get("map50") for r in rows]}
    if finished:
        summary = json.loads((run_dir / "metrics.json").read_text())
        val, out["images_per_s"] = summary["val"], summary["train"]["images_per_s"]
    else:
        val = rows[-1]
    out.update({k: val.get(k) for k in METRICS})
    out.update({k: int(val[k]) for k in ("n_images", "n_positive") if val.get(k) is not None})
    return out


def _federated(run_dir: Path) -> dict:
    server = server_rounds(run_dir)
    if not server or server[-1]["round"] < 1:
        return {}
    final = server[-1]
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines() if line]
    train = [r for r in records if r["phase"] == "train"]
    last = [r["metrics"]["images_per_s"] for r in train if r["round"] == final["round"] and r["status"] == "ok"]
    eps = {r["site"]: r["privacy"]["epsilon"] for r in train if "privacy" in r and "epsilon" in r["privacy"]}
    out = {
        "completed": final["round"],
        "curve_map50": [r["metrics"].get("map50") for r in server],
        "site_status": sorted({f"{r['site']}: {r['status']}" for r in train if r["status"] != "ok"}),
        "images_per_s": sum(last) / len(last) if last else None,  # per site, last round
        "n_images": final["examples"],
        "n_positive": int(final["metrics"]["n-positive"]),
    }
    out.update({k: final["metrics"].get(k) for k in METRICS})
    if eps:
        out["epsilon_per_site"] = {s: round(e, 3) for s, e in sorted(eps.items())}
    return out


def _csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def ratios(results: dict[str, dict]) -> list[dict]:
    """Each comparison whose two arms finished: mAP50 and sensitivity ratios, the goal, and whether it is met."""
    out = []
    for num, den, goal, what in RATIOS:
        a, b = results.get(num, {}), results.get(den, {})
        if a.get("status") != "ok" or b.get("status") != "ok":
            continue
        row = {"comparison": f"{num} / {den}", "what": what, "goal": goal}
        for k in ("map50", "sensitivity", "roc_auc"):
            x, y = a.get(k), b.get(k)
            row[k] = round(x / y, 3) if x is not None and y else None
        row["met"] = None if goal is None or row["map50"] is None else row["map50"] >= goal
        if (b.get("map50") or 0) < WEAK:
            row["note"] = f"{den} mAP50 {b.get('map50') or 0:.4f} < {WEAK}: the ratio is mostly noise"
        out.append(row)
    return out


def markdown(report: dict) -> str:
    c, pl, sp = report["conditions"], report.get("plan") or {}, report.get("probe") or {}
    rate = lambda x: "not measured" if x is None else f"{x:.1f} images/s"
    secs = lambda x: "not measured" if x is None else f"{x:.1f} s"
    lines = [
        f"# FracAtlas: federated vs centralised, DP vs non-DP ({report['machine']})",
        "",
        f"{c['epochs']} epochs (federated: {c['epochs']} rounds x 1 local), {c['imgsz']} px, "
        f"batch {c['batch']}, fraction {c['fraction']} ({c['train_images']} train / {c['val_images']} val "
        f"images), device {c['device']}, DP target epsilon {c['epsilon']} per site, seed {c['seed']}, "
        f"{c['jobs']} arm(s) at a time, extra overrides {c['extra'] or 'none'}; {report['wall_s']:.0f} s wall "
        f"of a {c['time_limit'] or 'unlimited'} s limit.",
        "",
        f"Probe ({sp.get('probe_s', 0):.0f} s): central {rate(sp.get('central_images_per_s'))}, a DP site "
        f"{rate(sp.get('dp_images_per_s'))} (three sharing the machine); start-up "
        f"{secs(sp.get('central_start_s'))} (train), {secs(sp.get('federated_start_s'))} (simulate). "
        f"Plan: {pl.get('note', c['epochs_source'])}. {' '.join(sp.get('notes', []))}",
        "",
        "| arm | status | epochs/rounds done | mAP50 | mAP50-95 | sensitivity | specificity | ROC AUC | "
        "val images (pos) | mAP50 per epoch/round | train images/s per process | predicted s | wall s | weights |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["arms"].items():
        f = lambda k, r=r: "n/a" if r.get(k) is None else f"{r[k]:.4f}"
        curve = " ".join(f"{x:.3f}" if x is not None else "n/a" for x in r.get("curve_map50", []))
        weights = r.get("weights") or r.get("weights_note", "")
        lines.append(
            f"| {name} | {r['status']} | {r.get('completed', 0)} of {r.get('planned', c['epochs'])} | "
            f"{f('map50')} | {f('map50_95')} | {f('sensitivity')} | {f('specificity')} | {f('roc_auc')} | "
            f"{r.get('n_images', '')} ({r.get('n_positive', '')}) | {curve} | "
            f"{'n/a' if r.get('images_per_s') is None else round(r['images_per_s'], 1)} | "
            f"{pl.get('predicted_s', {}).get(name, 'n/a')} | {r['wall_s']} | {weights} |"
        )
    lines += [
        "",
        "Metrics of an arm that was stopped are those of its last completed epoch/round; ratios use "
        "finished arms only.",
        "",
        "| comparison | mAP50 ratio | sensitivity ratio | AUC ratio | goal (mAP50) | met | what / note |",
        "|---|---|---|---|---|---|---|",
    ]
    for q in report["ratios"]:
        v = {k: "n/a" if q[k] is None else q[k] for k in ("map50", "sensitivity", "roc_auc")}
        note = f"; {q['note']}" if "note" in q else ""
        lines.append(
            f"| {q['comparison']} | {v['map50']} | {v['sensitivity']} | {v['roc_auc']} | {q['goal'] or '-'} | "
            f"{'-' if q['met'] is None else q['met']} | {q['what']}{note} |"
        )
    for name, r in report["arms"].items():
        if r.get("site_status"):
            lines += ["", f"{name}: sites that did not train in some round: " + "; ".join(r["site_status"])]
    eps = report["arms"].get("fedavg_dp", {}).get("epsilon_per_site")
    if eps:
        lines += ["", "DP sites' epsilon (RDP) after the last round: " + ", ".join(f"{s} {e}" for s, e in eps.items())]
    return "\n".join(lines) + "\n"


def poll(arm: Arm, stop_early: set[str]) -> int | None | bool:
    """The arm's exit code; None once it is stopped here (past its deadline, or a --stop-early arm with one epoch or
    round done: evaluated, and for a federated arm committed); False while it runs on."""
    code = arm.proc.poll()
    if code is not None:
        return code
    done = arm.name in stop_early and (
        bool(central_epochs(arm.run_dir))
        if arm.name == "central"
        else (checkpoint(arm.run_dir) or {}).get("round", 0) >= 1
    )
    if time.perf_counter() < arm.deadline and not done:
        return False
    stop(arm)
    return None


def run_arms(
    arms: list[Arm],
    a: argparse.Namespace,
    sites: Path,
    deadline: float,
    predicted: dict[str, float],
    finish: Callable[[Arm, int | str | None], None],
) -> None:
    """Start the arms --jobs at a time (alone: each gets its proportional share of the time left), and `finish`
    each as it ends or is stopped; arms not started by the deadline are reported as such."""
    waiting, running = list(arms), []
    try:
        while waiting or running:
            while waiting and len(running) < a.jobs and time.perf_counter() < deadline:
                arm, left = waiting.pop(0), deadline - time.perf_counter()
                share = shares(predicted, [arm.name, *(w.name for w in waiting)], left) if a.jobs == 1 else left
                arm.deadline = time.perf_counter() + share
                start(arm, sites, threads_for(arm, [*running, arm, *waiting][: a.jobs]))
                running.append(arm)
                print(f"started {arm.name} (may use {share:.0f} s)", flush=True)
            for arm in list(running):
                code = poll(arm, set(a.stop_early))
                if code is not False:
                    running.remove(arm)
                    finish(arm, code)
            if waiting and time.perf_counter() >= deadline:
                for arm in waiting:
                    finish(arm, "not started")
                waiting = []
            time.sleep(0.25)
    finally:
        for arm in running:  # interrupted: leave no Ray cluster behind
            stop(arm)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="train.device of every arm: auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--epochs",
        default="auto",
        help="centralised epochs = federated rounds; auto: the most that fit --time-limit (probed speed)",
    )
    p.add_argument(
        "--min-epochs",
        type=int,
        default=1,
        help="the fewest --epochs auto may choose (even if predicted "
        "not to fit: arms are then cut at their share of the time)",
    )
    p.add_argument("--max-epochs", type=int, default=60, help="the most --epochs auto may choose")
    p.add_argument("--target-epochs", type=int, default=30, help="--epochs auto says when fewer than this fit")
    p.add_argument("--margin", type=float, default=0.25, help="share of the time kept spare by --epochs auto")
    p.add_argument("--probe-steps", type=int, default=64, help="training steps of the central probe")
    p.add_argument("--dp-probe-steps", type=int, default=8, help="steps per site of the DP probe round (0: none)")
    p.add_argument("--probe-timeout", type=float, default=90, help="seconds each probe may take at most")
    p.add_argument("--gn-slowdown", type=float, default=1.3, help="assumed GroupNorm/BatchNorm training time")
    p.add_argument("--round-s", type=float, default=2.0, help="assumed server seconds per round besides evaluation")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--fraction", type=float, default=1.0, help="share of FracAtlas train and valid images used")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    p.add_argument("--jobs", type=int, default=1, help="arms run side by side (1: one after another, sized)")
    p.add_argument(
        "--time-limit",
        type=float,
        default=0,
        help="seconds for everything; arms still running then are stopped (0: none; --epochs auto needs a limit)",
    )
    p.add_argument("--extra", default="", help='Hydra overrides for every arm and probe, e.g. "train.workers=12"')
    p.add_argument("--epsilon", type=float, default=8.0, help="DP-SGD target epsilon per site")
    p.add_argument("--mu", type=float, default=None, help="FedProx proximal_mu (default: conf/strategy/fedprox.yaml)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=FRACATLAS, help="FracAtlas folder or its data.yaml")
    p.add_argument("--meta", type=Path, default=None, help="meta.csv with body regions (default: beside data.yaml)")
    p.add_argument("--out", type=Path, default=None, help="new folder (default runs/bench/fracatlas_federated/TIME)")
    p.add_argument("--pack", type=Path, default=None, help="also write results.md and <arm>.fp16.safetensors here")
    p.add_argument(
        "--weights",
        default="central,fedavg,fedavg_gn,fedavg_dp",
        help="arms whose weights --pack "
        "writes: four 15.5 MiB fp16 files fit a device call's 64 MiB, five do not (fedprox left out)",
    )
    p.add_argument("--smoke", action="store_true", help=f"CPU end-to-end check, defaults {SMOKE}")
    p.add_argument(
        "--stop-early",
        default="",
        help="arms to stop, as the time limit would, after their first epoch/round (to test partial results)",
    )
    if "--smoke" in sys.argv:
        p.set_defaults(**SMOKE)
    a = p.parse_args()
    a.arms = [s.strip() for s in a.arms.split(",") if s.strip()]
    a.stop_early = [s.strip() for s in a.stop_early.split(",") if s.strip()]
    a.weights = [s.strip() for s in a.weights.split(",") if s.strip()]
    a.extra = shlex.split(a.extra)
    unknown = sorted(set(a.arms + a.stop_early + a.weights) - set(ARMS))
    if unknown or not a.arms:
        p.error(f"--arms/--stop-early/--weights: unknown {unknown or 'none given'}; choose from {', '.join(ARMS)}")
    if a.epochs != "auto" and (not a.epochs.isdigit() or int(a.epochs) < 1):
        p.error("--epochs must be auto or a positive integer")
    if a.epochs == "auto" and a.time_limit <= 0:
        p.error("--epochs auto sizes the run to --time-limit: give one, or a fixed --epochs")
    if not 0 < a.fraction <= 1 or a.jobs < 1:
        p.error("--fraction must be in (0, 1] and --jobs at least 1")
    a.data_yaml = a.data if a.data.suffix in (".yaml", ".yml") else a.data / "data.yaml"
    a.meta = a.meta or a.data_yaml.parent / "meta.csv"
    return a


def main() -> None:
    a = parse_args()
    if not a.data_yaml.is_file() or not a.meta.is_file():
        print(
            f"skipped: FracAtlas data.yaml or meta.csv not found ({a.data_yaml}, {a.meta}): set FRACATLAS_DIR or "
            "--data/--meta"
        )
        return
    out = (a.out or REPO / "runs" / "bench" / "fracatlas_federated" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"--out {out} is not empty: use a new folder (a DP ledger there would already hold spending)")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    deadline = t0 + a.time_limit if a.time_limit > 0 else float("inf")
    data_yaml = prepare_data(a.data_yaml, a.fraction, a.seed, out / "data")
    sites = prepare_sites(
        ["partition=fracatlas_regions", f"partition.source={data_yaml}", f"+partition.meta={a.meta}", f"seed={a.seed}"],
        out / "sites",
    )
    print((sites / "data" / "sites.md").read_text())
    counts = {s: len((out / "data" / f"{s}.txt").read_text().splitlines()) for s in ("train", "val")}
    speeds, chosen = size_run(a, data_yaml, out, sites, counts, deadline)
    epochs = chosen.epochs
    arms = commands(a, a.arms, data_yaml, a.meta, out, epochs)
    report = {
        "bench": "fracatlas_federated",
        "machine": machine(),
        "out": str(out),
        "wall_s": 0.0,
        "probe": asdict(speeds),
        "plan": chosen.to_dict(),
        "conditions": {
            "epochs": epochs,
            "epochs_source": "auto (probed)" if a.epochs == "auto" else "--epochs",
            "imgsz": a.imgsz,
            "batch": a.batch,
            "fraction": a.fraction,
            "device": a.device,
            "epsilon": a.epsilon,
            "seed": a.seed,
            "jobs": a.jobs,
            "time_limit": a.time_limit,
            "extra": " ".join(a.extra),
            "train_images": counts["train"],
            "val_images": counts["val"],
            "commands": {arm.name: " ".join(arm.cmd) for arm in arms},
        },
        "arms": {},
        "ratios": [],
    }
    print(
        f"machine: {machine()}\nplan: {chosen.note}\n{len(arms)} arms, {a.jobs} at a time; logs in "
        f"{out}/<arm>/bench.log"
    )

    def write() -> None:
        report["wall_s"] = time.perf_counter() - t0
        report["ratios"] = ratios(report["arms"])
        (out / "results.json").write_text(json.dumps(report, indent=1))
        (out / "results.md").write_text(markdown(report))
        if a.pack:
            shutil.copy2(out / "results.md", a.pack / "results.md")

    def finish(arm: Arm, code: int | None | str) -> None:
        if code == "not started":
            r = {"status": "not started (time limit)", "wall_s": 0.0, "planned": epochs, "completed": 0}
        else:
            r = collect(arm, code, epochs)
            if a.pack and arm.name in a.weights:
                r.update(export_arm(arm.name, arm.run_dir, a.pack))
            elif a.pack:
                r["weights_note"] = "not returned (--weights)"
        report["arms"][arm.name] = r
        write()
        print(
            f"[{time.perf_counter() - t0:6.0f} s] {arm.name}: {r['status']}, {r['completed']} of {epochs} done, "
            f"mAP50 {r.get('map50')}, sensitivity {r.get('sensitivity')}, weights {r.get('weights')}",
            flush=True,
        )

    if a.pack:
        a.pack.mkdir(parents=True, exist_ok=True)
    write()
    run_arms(arms, a, sites, deadline, chosen.predicted_s, finish)
    write()
    print()
    print((out / "results.md").read_text())
    conditions = {k: v for k, v in report["conditions"].items() if k != "commands"}
    emit(
        {k: report[k] for k in ("bench", "machine", "wall_s", "ratios", "plan")}
        | {"conditions": conditions}
        | {
            "arms": {
                n: {k: r.get(k) for k in ("status", "completed", "map50", "sensitivity", "roc_auc", "weights")}
                for n, r in report["arms"].items()
            }
        }
    )
    if any(r.get("weights_error") for r in report["arms"].values()):
        raise SystemExit("some weights were too large to come back (see results.md)")


def size_run(
    a: argparse.Namespace, data_yaml: Path, out: Path, sites: Path, counts: dict[str, int], deadline: float
) -> tuple[Speeds, Plan]:
    """Probe (with --epochs auto) and plan: the speeds measured and the epoch count they allow before `deadline`."""
    left = deadline - time.perf_counter() if deadline < float("inf") else 0.0
    if a.epochs != "auto":
        return Speeds(), Plan(int(a.epochs), {}, left, a.margin, f"--epochs {a.epochs} (fixed: no probe)")
    t = time.perf_counter()
    speeds = probe(a, data_yaml, a.meta, out, sites, counts["val"])
    speeds.probe_s = round(time.perf_counter() - t, 1)
    sizes = Sizes(counts["train"], counts["val"], max(site_sizes(sites)))
    chosen = plan(
        a.arms,
        speeds,
        sizes,
        deadline - time.perf_counter(),
        margin=a.margin,
        target=a.target_epochs,
        min_epochs=a.min_epochs,
        max_epochs=a.max_epochs,
    )
    print(f"probe: {json.dumps(asdict(speeds))}\nplan: {json.dumps(chosen.to_dict())}", flush=True)
    return speeds, chosen


if __name__ == "__main__":
    main()
