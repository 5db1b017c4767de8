"""Federated vs centralised, and DP vs non-DP federated, on FracAtlas: the arms of both comparisons in one run.

Every arm trains YOLOv7-tiny from scratch (no pretrained weights can be fetched) with the same image size, batch,
seed and total compute (federated rounds x local epochs = centralised epochs), on one shared data preparation
(the same images, the same three sites by body region, the same validation images):

    central    `fracfl train experiment=fracatlas_baseline`, the centralised yardstick (BatchNorm model)
    fedavg     `fracfl simulate partition=fracatlas_regions`, FedAvg                      (BatchNorm model)
    fedprox    the same with FedProx (strategy.params.proximal_mu from conf unless --mu)  (BatchNorm model)
    fedavg_gn  FedAvg with the GroupNorm model that DP-SGD needs: the like-for-like non-DP reference
    fedavg_dp  fedavg_gn with DP-SGD at every site, target epsilon --epsilon per site (`privacy=dp_sgd`)

All models are scored by the same evaluator on the same validation images (centralised: after its last epoch;
federated: the server's pooled evaluation after the last round). Arms run side by side (`--jobs`): on a GPU each
process is bound by its CPU-side augmentation, so running them together uses the 16 cores. The results do not
depend on that: draws are seeded per image, and no arm's result uses time. Results are written as each arm ends
(`results.json`, `results.md` in --out), so a run stopped by `--time-limit` still reports the arms that finished.

    .venv/bin/python bench/fracatlas_federated.py --device cuda                      # GPU session defaults
    .venv/bin/python bench/fracatlas_federated.py --device cpu --fraction 0.02 --imgsz 96 --epochs 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FRACATLAS, REPO, emit, machine  # noqa: E402

ARMS: dict[str, list[str]] = {  # arm -> Hydra overrides of its command (central: fracfl train; others: simulate)
    "central": [],
    "fedavg": ["strategy=fedavg"],
    "fedprox": ["strategy=fedprox"],
    "fedavg_gn": ["strategy=fedavg", "model.norm=group"],
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


@dataclass
class Arm:
    name: str
    cmd: list[str]
    run_dir: Path
    processes: int  # how many busy processes it runs (for thread counts)
    proc: subprocess.Popen | None = None
    started: float = 0.0
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
        out += group[:max(1, round(fraction * len(group)))] if group else []
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


def commands(a: argparse.Namespace, data_yaml: Path, meta: Path, out: Path) -> list[Arm]:
    """One command per requested arm, the slowest (DP) first."""
    cli = [sys.executable, "-m", "common.cli"]
    common = [f"train.imgsz={a.imgsz}", f"train.batch_size={a.batch}", f"train.device={a.device}", f"seed={a.seed}",
              "progress=false"]
    rounds = a.epochs // a.local_epochs
    gpus = round(0.99 / 3, 2) if a.device.startswith("cuda") else 0.0  # 3 sites share the one GPU
    partition = ["partition=fracatlas_regions", f"partition.source={data_yaml}", f"+partition.meta={meta}"]
    fed = [*partition, f"federation.rounds={rounds}", f"train.local_epochs={a.local_epochs}",
           "federation.fraction_evaluate=0", f"federation.publish_every={rounds}", "export.enabled=false",
           "tracking=disabled", f"federation.client_gpus={gpus}", "federation.client_cpus=1"]
    arms = []
    for name in sorted(a.arms, key=lambda n: (n != "fedavg_dp", n == "central", n)):
        run_dir = out / name
        if name == "central":
            cmd = [*cli, "train", "experiment=fracatlas_baseline", f"data.path={data_yaml}", f"train.epochs={a.epochs}",
                   *common, f"run_dir={run_dir}"]
            arms.append(Arm(name, cmd, run_dir, 1))
            continue
        extra = list(ARMS[name])
        if name == "fedprox" and a.mu is not None:
            extra.append(f"strategy.params.proximal_mu={a.mu}")
        if name == "fedavg_dp":  # a fresh ledger: spending on the same images never resets (docs/privacy.md)
            extra += [f"privacy.target_epsilon={a.epsilon}", f"privacy.ceiling_epsilon={max(10.0, a.epsilon)}",
                      f"privacy.ledger_dir={run_dir / 'privacy'}"]
        cmd = [*cli, "simulate", *extra, *fed, *common, f"run_id={name}", f"run_dir={run_dir}"]
        arms.append(Arm(name, cmd, run_dir, 4))
    return arms


def start(arm: Arm, sites: Path, threads: int) -> None:
    arm.run_dir.mkdir(parents=True)
    if arm.name != "central":
        for f in ("sites.json", "pooled_val.txt", "pooled_val.yaml"):  # the shared partition, reused as on resume
            shutil.copy2(sites / f, arm.run_dir / f)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
           "RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION": "0.05"}  # several Ray clusters may run side by side
    with open(arm.run_dir / "bench.log", "w") as log:  # the child keeps its own handle
        log.write(" ".join(arm.cmd) + "\n\n")
        log.flush()
        arm.proc = subprocess.Popen(arm.cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # its own process group: Ray's processes die with it
    arm.started = time.perf_counter()


def collect(arm: Arm, code: int | None) -> dict:
    """Final metrics, per-epoch/round mAP50 and (DP) the sites' epsilon, from the arm's run folder."""
    wall = time.perf_counter() - arm.started
    status = "ok" if code == 0 else ("killed at --time-limit" if code is None else f"failed (exit {code})")
    res: dict = {"status": status, "wall_s": round(wall, 1), "log": str(arm.run_dir / "bench.log")}
    if code != 0:
        return res
    if arm.name == "central":
        summary = json.loads((arm.run_dir / "metrics.json").read_text())
        val = summary["val"]
        res["curve_map50"] = [round(float(r["map50"]), 4) for r in _csv(arm.run_dir / "history.csv")]
        res["images_per_s"] = summary["train"]["images_per_s"]
    else:
        records = [json.loads(line) for line in (arm.run_dir / "records.jsonl").read_text().splitlines() if line]
        server = sorted((r for r in records if r["phase"] == "server"), key=lambda r: r["round"])
        final = server[-1]
        val = {**final["metrics"], "n_images": final["examples"], "n_positive": final["metrics"]["n-positive"]}
        res["curve_map50"] = [r["metrics"]["map50"] for r in server]  # round 0 = the initial model
        train = [r for r in records if r["phase"] == "train"]
        res["site_status"] = sorted({f"{r['site']}: {r['status']}" for r in train if r["status"] != "ok"})
        last = [r["metrics"]["images_per_s"] for r in train if r["round"] == final["round"] and r["status"] == "ok"]
        res["images_per_s"] = sum(last) / len(last) if last else None  # per site, last round
        eps = {r["site"]: r["privacy"]["epsilon"] for r in train if "privacy" in r and "epsilon" in r["privacy"]}
        if eps:
            res["epsilon_per_site"] = {s: round(e, 3) for s, e in sorted(eps.items())}
    res.update({k: val.get(k) for k in METRICS}, n_images=int(val["n_images"]), n_positive=int(val["n_positive"]))
    return res


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
    c = report["conditions"]
    lines = [f"# FracAtlas: federated vs centralised, DP vs non-DP ({report['machine']})", "",
             f"{c['epochs']} epochs (federated: {c['rounds']} rounds x {c['local_epochs']} local), {c['imgsz']} px, "
             f"batch {c['batch']}, fraction {c['fraction']} ({c['train_images']} train / {c['val_images']} val "
             "images), "
             f"device {c['device']}, DP target epsilon {c['epsilon']} per site, seed {c['seed']}, "
             f"{report['wall_s']:.0f} s wall.", "",
             "| arm | status | mAP50 | mAP50-95 | sensitivity | specificity | ROC AUC | val images (pos) | mAP50 per "
             "epoch/round | train images/s per process | wall s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["arms"].items():
        f = lambda k: "n/a" if r.get(k) is None else f"{r[k]:.4f}"  # noqa: E731
        curve = " ".join(f"{x:.3f}" if x is not None else "n/a" for x in r.get("curve_map50", []))
        lines.append(f"| {name} | {r['status']} | {f('map50')} | {f('map50_95')} | {f('sensitivity')} | "
                     f"{f('specificity')} | {f('roc_auc')} | {r.get('n_images', '')} ({r.get('n_positive', '')}) | "
                     f"{curve} | {'n/a' if r.get('images_per_s') is None else round(r['images_per_s'], 1)} | "
                     f"{r['wall_s']} |")
    lines += ["", "| comparison | mAP50 ratio | sensitivity ratio | AUC ratio | goal (mAP50) | met | what / note |",
              "|---|---|---|---|---|---|---|"]
    for q in report["ratios"]:
        v = {k: "n/a" if q[k] is None else q[k] for k in ("map50", "sensitivity", "roc_auc")}
        note = f"; {q['note']}" if "note" in q else ""
        lines.append(f"| {q['comparison']} | {v['map50']} | {v['sensitivity']} | {v['roc_auc']} | {q['goal'] or '-'} | "
                     f"{'-' if q['met'] is None else q['met']} | {q['what']}{note} |")
    for name, r in report["arms"].items():
        if r.get("site_status"):
            lines += ["", f"{name}: sites that did not train in some round: " + "; ".join(r["site_status"])]
    eps = report["arms"].get("fedavg_dp", {}).get("epsilon_per_site")
    if eps:
        lines += ["", "DP sites' epsilon (RDP) after the last round: " + ", ".join(f"{s} {e}" for s, e in eps.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="train.device of every arm: auto, cpu, cuda, cuda:N")
    p.add_argument("--epochs", type=int, default=6, help="centralised epochs = federated rounds x --local-epochs")
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--fraction", type=float, default=1.0, help="share of FracAtlas train and valid images used")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    p.add_argument("--jobs", type=int, default=0, help="arms run side by side (0: all at once)")
    p.add_argument("--time-limit", type=float, default=0, help="seconds; arms still running then are stopped (0: none)")
    p.add_argument("--epsilon", type=float, default=8.0, help="DP-SGD target epsilon per site")
    p.add_argument("--mu", type=float, default=None, help="FedProx proximal_mu (default: conf/strategy/fedprox.yaml)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=FRACATLAS, help="FracAtlas folder (data.yaml and meta.csv)")
    p.add_argument("--out", type=Path, default=None, help="new folder (default runs/bench/fracatlas_federated/TIME)")
    a = p.parse_args()
    a.arms = [s.strip() for s in a.arms.split(",") if s.strip()]
    unknown = sorted(set(a.arms) - set(ARMS))
    if unknown or not a.arms:
        p.error(f"--arms: unknown {unknown or 'none given'}; choose from {', '.join(ARMS)}")
    if a.epochs < 1 or a.local_epochs < 1 or a.epochs % a.local_epochs:
        p.error("--epochs must be a positive multiple of --local-epochs (rounds x local epochs = epochs)")
    if not 0 < a.fraction <= 1:
        p.error("--fraction must be in (0, 1]")
    if not (a.data / "data.yaml").is_file() or not (a.data / "meta.csv").is_file():
        print(f"skipped: FracAtlas (data.yaml and meta.csv) not found at {a.data} (set FRACATLAS_DIR or --data)")
        return
    out = (a.out or REPO / "runs" / "bench" / "fracatlas_federated" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    if out.exists() and any(out.iterdir()):
        p.error(f"--out {out} is not empty: use a new folder (a DP ledger there would already hold spending)")
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    data_yaml = prepare_data(a.data, a.fraction, a.seed, out / "data")
    sites = out / "sites"
    if set(a.arms) - {"central"}:
        prepare_sites(["partition=fracatlas_regions", f"partition.source={data_yaml}",
                       f"+partition.meta={a.data / 'meta.csv'}", f"seed={a.seed}"], sites)
        print((sites / "data" / "sites.md").read_text())
    counts = {s: sum(1 for _ in open(out / "data" / f"{s}.txt")) for s in ("train", "val")}
    arms = commands(a, data_yaml, a.data / "meta.csv", out)
    jobs = a.jobs if a.jobs > 0 else len(arms)
    busy = sum(arm.processes for arm in arms[:jobs])
    threads = max(1, (os.cpu_count() or 1) // busy)
    print(f"machine: {machine()}\n{len(arms)} arms, {jobs} at a time, {threads} thread(s) per process; logs in "
          f"{out}/<arm>/bench.log")
    report = {"bench": "fracatlas_federated", "machine": machine(), "out": str(out), "wall_s": 0.0,
              "conditions": {"epochs": a.epochs, "rounds": a.epochs // a.local_epochs, "local_epochs": a.local_epochs,
                             "imgsz": a.imgsz, "batch": a.batch, "fraction": a.fraction, "device": a.device,
                             "epsilon": a.epsilon, "seed": a.seed, "jobs": jobs, "train_images": counts["train"],
                             "val_images": counts["val"], "commands": {arm.name: " ".join(arm.cmd) for arm in arms}},
              "arms": {}, "ratios": []}

    def write() -> None:
        report["wall_s"] = time.perf_counter() - t0
        report["ratios"] = ratios(report["arms"])
        (out / "results.json").write_text(json.dumps(report, indent=1))
        (out / "results.md").write_text(markdown(report))

    deadline = t0 + a.time_limit if a.time_limit > 0 else float("inf")
    waiting, running = list(arms), []
    try:
        while waiting or running:
            while waiting and len(running) < jobs and time.perf_counter() < deadline:
                arm = waiting.pop(0)
                start(arm, sites, threads)
                running.append(arm)
                print(f"[{time.perf_counter() - t0:6.0f} s] started {arm.name}", flush=True)
            for arm in list(running):
                code = arm.proc.poll()
                late = code is None and time.perf_counter() > deadline
                if code is None and not late:
                    continue
                if late:
                    os.killpg(arm.proc.pid, signal.SIGKILL)
                    arm.proc.wait()
                running.remove(arm)
                report["arms"][arm.name] = collect(arm, None if late else code)
                write()
                r = report["arms"][arm.name]
                print(f"[{time.perf_counter() - t0:6.0f} s] {arm.name}: {r['status']}, mAP50 {r.get('map50')}, "
                      f"sensitivity {r.get('sensitivity')}", flush=True)
            if waiting and time.perf_counter() > deadline:
                for arm in waiting:
                    report["arms"][arm.name] = {"status": "not started (--time-limit)", "wall_s": 0.0}
                waiting = []
            time.sleep(1.0)
    finally:
        for arm in running:  # interrupted: leave no Ray cluster behind
            if arm.proc and arm.proc.poll() is None:
                os.killpg(arm.proc.pid, signal.SIGKILL)
    write()
    print()
    print((out / "results.md").read_text())
    conditions = {k: v for k, v in report["conditions"].items() if k != "commands"}
    emit({k: report[k] for k in ("bench", "machine", "wall_s", "ratios")} | {"conditions": conditions}
         | {"arms": {n: {k: r.get(k) for k in ("status", "map50", "sensitivity", "specificity", "roc_auc")}
                     for n, r in report["arms"].items()}})


if __name__ == "__main__":
    main()
