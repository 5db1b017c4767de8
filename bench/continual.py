"""Does feedback on missed fractures help? M0 vs M1 on a site's held-out fractures, with DP-SGD at every site.

The real parts, chained as the simulated loop chains them (simulations/continual): the sites' original synthetic
data (`prepare_sites`); a first DP-SGD federated round gives M0, which every site adopts; at the feedback site
radiographs arrive from an acquisition profile the original data did not cover (a drift), M0 reads them, the
simulated radiologist reviews its findings through the site's feedback store (it misses nothing, so every fracture M0
missed is added as a new positive), the pool is built with its held-out split by patient; a warm-started DP-SGD round
on original data + pool gives M1, and the site's gate decides. M0 and M1 are then scored against the ground truth on
the feedback site's held-out patients' arrivals (this period's and a later period's, same profile, never trained
on): image-level fracture images found, a paired patient-level bootstrap interval of the sensitivity difference,
false positives per image, and each site's epsilon from its ledger.

A run starts from a centrally pretrained model on public synthetic data (other seed, profiles the feedback site's
arrivals do not use; no site's data, so no site's privacy) unless `--pretrain-steps 0`: DP-SGD on a few hundred CPU
steps does not learn fractures from random weights (docs/benchmarks.md).

    .venv/bin/python bench/continual.py [--out runs/bench/continual] [--smoke] [--set KEY=VALUE ...]
        [--feedback-set KEY=VALUE ...]   # the feedback round only: e.g. a higher lr than round 0's
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, emit, machine
from shapes import shapes_arrivals, shapes_site

FULL = dict(
    profiles="general_hospital,rural_clinic",
    feedback_site="rural_clinic",
    drift="pediatric_wrist",
    images_per_site=48,
    size=256,
    steps=40,
    arrivals=120,
    eval_arrivals=300,
    holdout=0.3,
    pretrain_images=160,
    pretrain_steps=400,
    epsilon0=4.0,
    epsilon=8.0,
    bootstrap=2000,
)
# The shapes task (bench/shapes.py): bright rectangles at the sites and in the public pretraining, dark ones arriving
# at the feedback site; small images, so DP-SGD gets enough of them and a CPU run takes minutes.
SHAPES = dict(
    FULL,
    images_per_site=240,
    size=64,
    steps=60,
    arrivals=160,
    eval_arrivals=320,
    pretrain_images=320,
    pretrain_steps=200,
)
SMOKE = dict(
    FULL,
    images_per_site=8,
    size=96,
    steps=2,
    arrivals=16,
    eval_arrivals=24,
    holdout=0.5,
    pretrain_images=8,
    pretrain_steps=2,
    bootstrap=200,
)


def image_hits(findings: Sequence, truth: Sequence, iou: float) -> list[bool]:
    """Per image: whether at least one finding matches one of its true fractures at `iou` (scoring.score's match)."""
    from simulations.continual.scoring import score

    return [score([boxes], [true], iou).found > 0 for boxes, true in zip(findings, truth, strict=True)]


def paired_bootstrap(
    m0: Sequence[bool], m1: Sequence[bool], groups: Sequence[str], resamples: int, seed: int
) -> tuple[float, float]:
    """95 % interval of sensitivity(M1) - sensitivity(M0) over fractured images, resampling patients (`groups`)
    with replacement so images of one patient move together; both models are scored on the same draw."""
    keys = sorted(set(groups))
    index = {k: i for i, k in enumerate(keys)}
    g = np.array([index[k] for k in groups])
    per0 = np.bincount(g, weights=np.asarray(m0, float), minlength=len(keys))
    per1 = np.bincount(g, weights=np.asarray(m1, float), minlength=len(keys))
    n = np.bincount(g, minlength=len(keys)).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(keys), size=(resamples, len(keys)))
    total = n[draws].sum(1)
    ok = total > 0
    diff = (per1[draws].sum(1) - per0[draws].sum(1))[ok] / total[ok]
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return float(lo), float(hi)


def compose_job(work: Path, a: argparse.Namespace, extra: Sequence[str] = ()):
    """The simulation job: conf/experiment/continual_demo.yaml with the bench's settings (and `extra` overrides),
    DP-SGD on."""
    from hydra import compose, initialize_config_dir

    from common.config import CONF_DIR, to_typed
    from simulations.continual.config import ContinualJob

    overrides = [
        "experiment=continual_demo",
        f"privacy={a.privacy}",
        "tracking=disabled",
        "progress=false",
        "federation.rounds=1",
        f"federation.sites={len(a.profiles.split(','))}",
        f"federation.min_sites={len(a.profiles.split(','))}",
        f"partition.profiles=[{a.profiles}]",
        f"partition.images_per_site={a.images_per_site}",
        f"partition.size={a.size}",
        f"train.imgsz={a.size}",
        f"train.max_steps={a.steps}",
        f"continual.holdout_fraction={a.holdout}",
        "continual.radiologist.miss_rate=0.0",
        "continual.radiologist.error_rate=0.0",
        f"continual.drift=[{{site: {a.feedback_site}, period: 1, profile: {a.drift}}}]",
        f"registry={work / 'registry'}",
        f"run_dir={work / 'run'}",
        "run_id=bench-continual",
        f"seed={a.seed}",
        *a.set,
        *extra,
    ]
    if a.privacy == "dp_sgd":
        overrides += [f"privacy.ledger_dir={work / 'site-ledgers'}", f"privacy.target_epsilon={a.epsilon0}"]
    if a.device != "cpu":  # the sites' rounds on the GPU too: Ray hides it from a site given no share of it
        overrides += [f"train.device={a.device}", f"federation.client_gpus={1 / len(a.profiles.split(','))}"]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return to_typed(compose("federated", overrides), ContinualJob)


def pretrain(job, a: argparse.Namespace, folder: Path) -> tuple[Path, dict]:
    """A public starting model: central, non-private training on synthetic radiographs of other seeds and profiles
    (`--pretrain-profiles`), never a site's data. Returns the weights file and what was done."""
    import torch

    from common.config import AugmentConfig, ImbalanceConfig, TrainConfig
    from common.data.dataset import DetectionDataset
    from common.engine.trainer import train_local
    from common.nn.weights import model_from_config, save_weights
    from common.synth import generate_dataset, get_profile

    if a.task == "shapes":
        data_yaml = shapes_site(folder / "data", a.pretrain_images, a.size, "bright", a.seed + 1000)
    else:
        profiles = [close_up(get_profile(p), a) for p in a.pretrain_profiles.split(",")]
        data_yaml = generate_dataset(
            folder / "data",
            profiles,
            images_per_site=a.pretrain_images,
            size=a.size,
            seed=a.seed + 1000,
            progress=False,
        )
    data = DetectionDataset.from_data(data_yaml, "train", a.size, cache=True)
    torch.manual_seed(a.seed)
    m = job.model
    model, spec, _ = model_from_config(m.arch, m.names, m.width, m.depth, m.norm)
    cfg = TrainConfig(
        imgsz=a.size,
        batch_size=16,
        epochs=10_000,
        max_steps=a.pretrain_steps,
        optimizer="adamw",
        lr=a.pretrain_lr,
        warmup_steps=min(20, a.pretrain_steps // 5),
        device=a.device,
        augment=AugmentConfig(),
        imbalance=ImbalanceConfig("constant"),
    )
    result = train_local(model, data, cfg, seed=a.seed, progress=not a.smoke, description="public pretraining")
    model.load_state_dict(result.state)
    path = save_weights(
        model, spec, folder / "public.safetensors", {"source": "bench/continual.py pretraining", "imgsz": a.size}
    )
    source = "shapes (bright)" if a.task == "shapes" else a.pretrain_profiles
    return path, {"images": len(data), "profiles": source, "steps": int(result.metrics["steps"])}


def evaluate(model: Path, cases: list, eval_cfg) -> tuple[list[bool], int]:
    """Per held-out case whether `model` found a true fracture, and its false positives in all."""
    from simulations.continual.scoring import predict_findings, score

    findings = [b for b, _ in predict_findings(model, [c.image for c, _ in cases], eval_cfg)]
    truth = [t for _, t in cases]
    return image_hits(findings, truth, eval_cfg.iou), score(findings, truth, eval_cfg.iou).false_positives


def at_gate_point(eval_cfg, figures: dict, role: str):
    """`eval_cfg` at the operating point the site's gate chose for the champion or the challenger, when it chose one
    per model (`continual.gate.target_fp_per_image`): each model is then scored as the site would run it."""
    if figures.get("target_fp_per_image") is None:
        return eval_cfg
    return dataclasses.replace(eval_cfg, conf=figures[role]["conf"])


def close_up(profile, a: argparse.Namespace):
    """`profile` with the bench's close-up field of view (`--pixel-spacing`), else as it is."""
    return profile if a.pixel_spacing is None else dataclasses.replace(profile, pixel_spacing_mm=a.pixel_spacing)


def own_sites(run_dir: Path, sites: dict, job, a: argparse.Namespace) -> None:
    """The sites' data when the bench makes it (shapes, or close-up radiographs), with sites.json and the pooled
    validation list as prepare_sites writes them (it then finds and keeps them)."""
    from common.data.spec import load_spec
    from common.synth import generate_dataset

    if a.task == "radiographs":
        profiles = [close_up(p, a) for p in sites.values()]
        root = run_dir / "data"
        generate_dataset(root, profiles, a.images_per_site, a.size, seed=job.partition.seed, progress=False)
        made = {p.name: root / p.name / "data.yaml" for p in profiles}
    else:
        made = {
            name: shapes_site(run_dir / "data" / name, a.images_per_site, a.size, "bright", a.seed + i)
            for i, name in enumerate(sites)
        }
    entries, val = [], []
    for name, data in made.items():
        entries.append({"name": name, "data": str(data)})
        val += [str(p) for p in load_spec(data).images("val")]
    (run_dir / "sites.json").write_text(json.dumps(entries, indent=1))
    (run_dir / "pooled_val.txt").write_text("\n".join(val) + "\n")
    (run_dir / "pooled_val.yaml").write_text("val: pooled_val.txt\nnames: {0: fracture}\n")


def run(a: argparse.Namespace, out: Path) -> dict:
    from client.feedback.store import FeedbackStore
    from client.models.store import ModelStore
    from server.audit import read_all
    from simulations.continual import steps
    from simulations.continual.arrivals import arrive, read_truth
    from simulations.continual.config import check_continual, profile_at
    from simulations.continual.loop import salt
    from simulations.continual.radiologist import reader_rng, record_review
    from simulations.continual.scoring import predict_findings
    from simulations.partition import synthetic_profiles
    from simulations.runner import prepare_sites

    work = out / "work"
    if work.exists():
        shutil.rmtree(work)  # the bench's own scratch folder: a rerun starts with unspent budgets
    work.mkdir(parents=True)
    job = compose_job(work, a)
    cfg = job.continual
    sites = {p.name: p for p in synthetic_profiles(job.partition)}
    check_continual(cfg, list(sites))
    run_dir = Path(job.run_dir)
    timings: dict[str, float] = {}
    t = time.perf_counter()

    pre = None
    if a.pretrain_steps > 0:
        init, pre = pretrain(job, a, work / "public")
        job = dataclasses.replace(job, model=dataclasses.replace(job.model, init=str(init)))
        timings["pretrain_s"] = time.perf_counter() - t
    if a.task == "shapes" or a.pixel_spacing is not None:
        own_sites(run_dir, sites, job, a)
    manifest, pooled_val = prepare_sites(job, run_dir)
    data = {s["name"]: Path(s["data"]).parent for s in json.loads(manifest.read_text())}
    homes = {name: work / "sites" / name for name in sites}

    # Period 0: a DP-SGD round from the starting model; every site adopts M0.
    t0 = time.perf_counter()
    m0 = steps.federated_round(job, run_dir / "periods" / "p000", manifest, pooled_val, warm=False)
    if m0 is None:
        raise SystemExit("period 0 published nothing (see the run's log under work/run/periods/p000)")
    for home in homes.values():
        steps.adopt(home / "models", steps.install(home / "models", m0), cfg.radiologist.reviewer)
    timings["round0_s"] = time.perf_counter() - t0

    # Period 1 at the feedback site: drifted arrivals, M0 reads them, the radiologist reviews, the pool is built.
    site, home = a.feedback_site, homes[a.feedback_site]
    profile = close_up(profile_at(cfg, sites[site], 1), a)
    key = salt(job, site)
    arrival_profile = "dark shapes" if a.task == "shapes" else profile.name

    def arrivals(period: int, count: int) -> list:
        if a.task == "shapes":
            folder = home / "arrivals" / f"p{period:03d}"
            return shapes_arrivals(site, "dark", period, count, a.size, job.seed, cfg.patients_per_site, folder)
        truth_file = work / "truth" / site / f"p{period:03d}.jsonl"
        got = arrive(site, profile, period, count, job.partition.size, job.seed, cfg.patients_per_site,
                     home / "arrivals" / f"p{period:03d}", truth_file)  # fmt: skip
        truth = read_truth(truth_file)
        return [(x, truth[x.image_id]) for x in got]

    t1 = time.perf_counter()
    reviewed = arrivals(1, a.arrivals)
    store = FeedbackStore(home / "feedback.db", class_names=[str(job.model.names[k]) for k in sorted(job.model.names)])
    rng, kinds = reader_rng(job.seed, site, 1), Counter[str]()
    findings = predict_findings(m0, [x.image for x, _ in reviewed], job.eval)
    for (x, truth), (boxes, probability) in zip(reviewed, findings, strict=True):
        r = record_review(store, x, boxes, probability, truth, m0.name, rng, cfg.radiologist)
        kinds.update(d.kind for d in r.decisions)
    pool = steps.build_pool(store, data[site], cfg, key)

    # Period 1's round: warm-started from M0 on original data + pool, the rest of the sites' budget; the site's gate.
    job1 = compose_job(work, a, a.feedback_set) if a.feedback_set else job
    priv = dataclasses.replace(job1.privacy, target_epsilon=a.epsilon) if a.privacy == "dp_sgd" else job1.privacy
    job1 = dataclasses.replace(job1, model=dataclasses.replace(job.model, init=None), privacy=priv)
    m1 = steps.federated_round(job1, run_dir / "periods" / "p001", manifest, pooled_val, warm=True)
    if m1 is None:
        raise SystemExit("period 1 published nothing (see the run's log under work/run/periods/p001)")
    models = home / "models"
    version = steps.install(models, m1)
    promoted = steps.gate_and_promote(models, version, pool, cfg, steps.gate_seed(job.seed, site, 1))
    gate = next(e for e in reversed(ModelStore(models).decisions()) if e["action"] == "gate")
    timings["feedback_and_round1_s"] = time.perf_counter() - t1

    # Held-out evaluation against the ground truth: held-out patients' arrivals of period 1 and of period 2.
    t2 = time.perf_counter()
    later = arrivals(2, a.eval_arrivals)
    cases = [(x, tr) for x, tr in reviewed + later if steps.held_out(x.patient, cfg, key)]
    eval0, eval1 = (at_gate_point(job.eval, gate.get("figures", {}), role) for role in ("champion", "challenger"))
    hits0, fp0 = evaluate(m0, cases, eval0)
    hits1, fp1 = evaluate(m1, cases, eval1)
    timings["evaluation_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t

    fractured = [i for i, (_, tr) in enumerate(cases) if tr]
    f0, f1 = [hits0[i] for i in fractured], [hits1[i] for i in fractured]
    patients = [cases[i][0].patient for i in fractured]
    lo, hi = paired_bootstrap(f0, f1, patients, a.bootstrap, a.seed) if fractured else (math.nan, math.nan)
    budgets = read_all([job.privacy.ledger_dir])[1] if job.privacy.mode == "dp_sgd" else {}
    n = len(fractured)
    return {
        "bench": "continual",
        "machine": machine(),
        "settings": {k: v for k, v in vars(a).items() if k not in ("out", "func")},
        "pretraining": pre,
        "feedback_site": site,
        "arrival_profile": arrival_profile,
        "review": {"arrivals": len(reviewed), "verdicts": dict(kinds), "pool": pool.info["counts"]},
        "models": {"m0": f"{m0.parent.name}/{m0.name}", "m1": f"{m1.parent.name}/{m1.name}"},
        "gate": {
            "promoted": promoted,
            "reasons": gate.get("reasons", []),
            "figures": gate.get("figures", {}),
        },
        "held_out": {
            "images": len(cases),
            "patients": len({x.patient for x, _ in cases}),
            "fractured": n,
            "found_m0": sum(f0),
            "found_m1": sum(f1),
            "found_by_both": sum(x and y for x, y in zip(f0, f1)),
            "found_by_m1_only": sum(y and not x for x, y in zip(f0, f1)),
            "found_by_m0_only": sum(x and not y for x, y in zip(f0, f1)),
            "missed_by_both": sum(not x and not y for x, y in zip(f0, f1)),
            "sensitivity_m0": sum(f0) / n if n else math.nan,
            "sensitivity_m1": sum(f1) / n if n else math.nan,
            "delta_sensitivity_ci95": [lo, hi],
            "fp_per_image_m0": fp0 / len(cases) if cases else math.nan,
            "fp_per_image_m1": fp1 / len(cases) if cases else math.nan,
            "conf_m0": eval0.conf,
            "conf_m1": eval1.conf,
        },
        "epsilon": {name: budgets[name].spent for name in sorted(budgets)},
        "timings": timings,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = result["held_out"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.5, 3.4), gridspec_kw={"width_ratios": [2, 1]})
    labels = ["M0 (before feedback)", "M1 (after feedback)"]
    found = [h["found_m0"], h["found_m1"]]
    missed = [h["fractured"] - f for f in found]
    left.barh(labels, found, color="#2ca02c", label="found")
    left.barh(labels, missed, left=found, color="#d62728", label="missed")
    left.set_xlabel(f"held-out fracture images ({h['fractured']}) at {result['feedback_site']}")
    left.legend(loc="lower right", fontsize=8)
    lo, hi = h["delta_sensitivity_ci95"]
    d = h["sensitivity_m1"] - h["sensitivity_m0"]
    right.errorbar([0], [d], yerr=[[d - lo], [hi - d]], fmt="o", color="#1f77b4", capsize=6)
    right.axhline(0, color="grey", lw=1, ls="--")
    right.set_xticks([])
    right.set_ylabel("sensitivity M1 - M0 (95 % CI)")
    eps = ", ".join(f"{s} {e:.2f}" for s, e in result["epsilon"].items())
    fig.suptitle(f"Feedback on missed fractures; gate: {'promoted' if result['gate']['promoted'] else 'refused'}; "
                 f"epsilon {eps}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(r: dict) -> None:
    h, s = r["held_out"], r["settings"]
    print(f"machine: {r['machine']}")
    print(
        f"sites {s['profiles']} ({s['task']}); feedback site {r['feedback_site']} receives {r['arrival_profile']}; "
        f"{s['images_per_site']} images per site at {s['size']} px, {s['steps']} DP-SGD steps per round, "
        f"epsilon {s['epsilon0']} for round 0, {s['epsilon']} in all"
    )
    print(f"review of {r['review']['arrivals']} arrivals: {r['review']['verdicts']}; pool {r['review']['pool']}")
    print(f"gate: {'promoted' if r['gate']['promoted'] else 'refused'} {r['models']['m1']} {r['gate']['reasons']}")
    print(f"held-out: {h['images']} images of {h['patients']} patients, {h['fractured']} with a fracture")
    print(f"{'model':6s} {'found':>6s} {'missed':>7s} {'sensitivity':>12s} {'FP/image':>9s} {'conf':>7s}")
    for m in ("m0", "m1"):
        found = h[f"found_{m}"]
        print(f"{m.upper():6s} {found:6d} {h['fractured'] - found:7d} {h[f'sensitivity_{m}']:12.3f} "
              f"{h[f'fp_per_image_{m}']:9.3f} {h[f'conf_{m}']:7.4f}")  # fmt: skip
    lo, hi = h["delta_sensitivity_ci95"]
    print(
        f"found by M1 only {h['found_by_m1_only']}, by M0 only {h['found_by_m0_only']}, by both "
        f"{h['found_by_both']}, by neither {h['missed_by_both']}; sensitivity M1 - M0 95 % CI [{lo:+.3f}, {hi:+.3f}]"
    )
    spent = ", ".join(f"{k} {v:.2f}" for k, v in r["epsilon"].items())
    print("epsilon spent: " + (spent or "none recorded (privacy=none: no DP, no privacy guarantee)"))
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in r["timings"].items()))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "continual")
    p.add_argument(
        "--smoke", action="store_true", help="tiny settings (about a minute): checks the chain, not learning"
    )
    p.add_argument(
        "--task",
        choices=("radiographs", "shapes"),
        default="radiographs",
        help="synthetic radiographs (a drifted profile arrives) or shapes (dark rectangles arrive; bench/shapes.py)",
    )
    p.add_argument(
        "--privacy",
        choices=("dp_sgd", "none"),
        default="dp_sgd",
        help="DP-SGD at every site (the default), or none: the same chain without DP, to tell the feedback's effect "
        "from what DP-SGD at this data size allows",
    )
    p.add_argument("--profiles", help="the sites' acquisition profiles (their original data)")
    p.add_argument("--feedback-site")
    p.add_argument("--drift", help="profile of the radiographs arriving at the feedback site")
    p.add_argument(
        "--pixel-spacing",
        type=float,
        help="radiographs only: every profile's base pixel spacing in mm (a close-up field of view; 0.15 at 128 px "
        "makes fractures about 25 x 16 px instead of 8 x 5)",
    )
    p.add_argument("--images-per-site", type=int)
    p.add_argument("--size", type=int, help="image size (data and training)")
    p.add_argument("--steps", type=int, help="DP-SGD steps per site per round")
    p.add_argument("--arrivals", type=int, help="radiographs M0 reads and the radiologist reviews")
    p.add_argument("--eval-arrivals", type=int, help="a later period's arrivals; their held-out patients' are scored")
    p.add_argument("--holdout", type=float, help="share of patients held out (continual.holdout_fraction)")
    p.add_argument("--pretrain-profiles", default="general_hospital,trauma_center")
    p.add_argument("--pretrain-images", type=int, help="public images per profile (0 steps: no pretraining)")
    p.add_argument("--pretrain-steps", type=int)
    p.add_argument("--pretrain-lr", type=float, default=0.003)
    p.add_argument("--epsilon0", type=float, help="each site's target epsilon for round 0")
    p.add_argument("--epsilon", type=float, help="each site's target epsilon for both rounds together")
    p.add_argument("--bootstrap", type=int, help="paired bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu, or cuda for a GPU session: the public pretraining and every site's rounds (the sites share the GPU)",
    )
    p.add_argument(
        "--set", action="append", default=[], help="a Hydra override of the job, e.g. train.replay.original_share=0.5"
    )
    p.add_argument(
        "--feedback-set",
        action="append",
        default=[],
        help="a Hydra override for the feedback round only (after --set), e.g. train.lr=0.02",
    )
    a = p.parse_args(argv)
    for k, v in (SMOKE if a.smoke else SHAPES if a.task == "shapes" else FULL).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.out.mkdir(parents=True, exist_ok=True)
    result = run(a, a.out.resolve())
    (a.out / "continual.json").write_text(json.dumps(result, indent=1, default=str))
    plot(result, a.out / "continual.png")
    report(result)
    emit(result)


if __name__ == "__main__":
    main()
