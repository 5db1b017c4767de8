"""bench/fracatlas_federated.py's own logic: the shared data preparation, the comparison table, the sizing from
measured speed, and (slow) bench/gpu/run.sh --smoke end to end on synthetic data: what a device call brings back."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import fracatlas_federated as bench  # noqa: E402 (bench/ is not a package: found through sys.path)
import sizing  # noqa: E402


def test_subset_is_stratified_and_independent_of_order() -> None:
    images = [Path(f"/d/img{i:03d}.jpg") for i in range(200)]
    positive = [i % 5 == 0 for i in range(200)]  # 40 fractured, 160 not
    chosen = bench.stratified_subset(images, positive, 0.1, seed=0)
    pos = {p for p, f in zip(images, positive) if f}
    assert len(chosen) == 20 and len(pos & set(chosen)) == 4
    pairs = list(zip(images, positive))
    random.Random(1).shuffle(pairs)
    assert bench.stratified_subset([p for p, _ in pairs], [f for _, f in pairs], 0.1, seed=0) == chosen
    assert bench.stratified_subset(images, positive, 0.1, seed=1) != chosen
    tiny = bench.stratified_subset(images, positive, 0.001, seed=0)
    assert len(tiny) == 2 and len(pos & set(tiny)) == 1  # at least one of each kind


def _meta(synth_data: Path, folder: Path) -> Path:
    """A FracAtlas-like meta.csv for the synthetic images: each in one body region, in turn."""
    images = sorted(p.name for p in synth_data.parent.rglob("*.png"))
    regions = ["hand", "leg", "hip", "shoulder", "mixed"]
    meta = folder / "meta.csv"
    with open(meta, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", *regions])
        for i, name in enumerate(images):
            w.writerow([name, *(int(i % 5 == k) for k in range(5))])
    return meta


def test_shared_partition_covers_the_subset_once(synth_data: Path, tmp_path: Path) -> None:
    """The sites every federated arm reuses are built by `fracfl simulate`'s own partition code and config, and
    hold each chosen image exactly once; the pooled validation set is the centralised run's validation set."""
    meta = _meta(synth_data, tmp_path)
    data_yaml = bench.prepare_data(synth_data, 0.5, seed=0, out=tmp_path / "data")
    sites = bench.prepare_sites(
        ["partition=fracatlas_regions", f"partition.source={data_yaml}", f"+partition.meta={meta}"], tmp_path / "sites"
    )
    chosen = {s: set((tmp_path / "data" / f"{s}.txt").read_text().split()) for s in ("train", "val")}
    manifest = json.loads((sites / "sites.json").read_text())
    assert [m["name"] for m in manifest] == ["hand_clinic", "trauma_unit", "hip_shoulder"]
    site_train = [line for m in manifest for line in (Path(m["data"]).parent / "train.txt").read_text().split()]
    assert sorted(site_train) == sorted(chosen["train"])
    assert set((sites / "pooled_val.txt").read_text().split()) == chosen["val"]


def test_ratios_state_goal_and_weak_denominators() -> None:
    ok = lambda m, s: {"status": "ok", "map50": m, "sensitivity": s, "roc_auc": 0.7}
    results = {
        "central": ok(0.40, 0.50),
        "fedavg": ok(0.39, 0.40),
        "fedprox": ok(0.30, 0.50),
        "fedavg_gn": ok(0.02, 0.10),
        "fedavg_dp": {"status": "killed at --time-limit"},
    }
    rows = {r["comparison"]: r for r in bench.ratios(results)}
    assert rows["fedavg / central"]["map50"] == 0.975 and rows["fedavg / central"]["met"] is True
    assert rows["fedprox / central"]["met"] is False and rows["fedprox / central"]["sensitivity"] == 1.0
    assert "note" not in rows["fedavg / central"]
    assert "fedavg_dp / fedavg_gn" not in rows  # an arm that did not finish gives no ratio
    assert "mostly noise" in bench.ratios({"fedavg_dp": ok(0.01, 0), "fedavg_gn": ok(0.02, 0.1)})[0]["note"]


def test_cuda_sites_without_a_gpu_share_stop_at_start() -> None:
    """Ray hides the GPU from sites with federation.client_gpus=0: train.device=cuda must say so, not fail per site."""
    from common.errors import ConfigError
    from simulations.runner import _check_gpu

    with pytest.raises(ConfigError, match="federation.client_gpus"):
        _check_gpu("cuda", 0.0)
    _check_gpu("cuda", 0.33)
    _check_gpu("cpu", 0.0)


SPEEDS = dict(central_images_per_s=100.0, central_start_s=10.0, dp_images_per_s=20.0, federated_start_s=20.0)
SIZES = sizing.Sizes(train_images=900, val_images=100, largest_site_images=400)


def test_plan_takes_the_most_epochs_that_fit_with_the_margin() -> None:
    s = sizing.Speeds(**SPEEDS, gn_slowdown=1.5, round_s=2.0)
    # per epoch: central 10 s, fedavg 12 s, fedavg_gn 17 s, fedavg_dp 20 + 1.5 + 2 = 23.5 s
    assert sizing.arm_seconds("central", 3, s, SIZES) == 10 + 3 * 10
    assert sizing.arm_seconds("fedavg_gn", 2, s, SIZES) == 20 + 2 * 17
    assert sizing.arm_seconds("fedavg_dp", 1, s, SIZES) == 20 + 23.5
    arms = ["central", "fedavg", "fedavg_dp"]  # starts 50 s, 45.5 s per epoch
    p = sizing.plan(arms, s, SIZES, budget_s=(50 + 4 * 45.5) / 0.75, target=3)
    assert p.epochs == 4 and "target 3 met" in p.note and sum(p.predicted_s.values()) == 50 + 4 * 45.5
    assert sizing.plan(arms, s, SIZES, budget_s=(50 + 4 * 45.5) / 0.75 - 1, target=30).epochs == 3
    assert "below the 30-epoch target" in sizing.plan(arms, s, SIZES, 400, target=30).note
    assert sizing.plan(arms, s, SIZES, 1e9, max_epochs=7).epochs == 7
    cut = sizing.plan(arms, s, SIZES, 60)
    assert cut.epochs == 1 and "arms will be cut" in cut.note
    assert sizing.plan(arms, s, SIZES, 60, min_epochs=2).epochs == 2
    assert sizing.plan(arms, sizing.Speeds(), SIZES, 1e9).epochs == 1  # nothing measured: nothing assumed


def test_dp_speed_falls_back_only_when_not_measured() -> None:
    s = sizing.Speeds(central_images_per_s=100.0, central_start_s=1.0, dp_slowdown=4.0)
    assert s.dp_rate() == 25.0 and s.fed_start() == s.default_federated_start_s
    assert sizing.Speeds(**SPEEDS).dp_rate() == 20.0


def test_shares_split_the_time_left_by_prediction() -> None:
    predicted = {"central": 100.0, "fedavg": 100.0, "fedavg_dp": 200.0}
    assert sizing.shares(predicted, ["central", "fedavg", "fedavg_dp"], 300) == 75.0
    assert sizing.shares(predicted, ["fedavg_dp"], 120) == 120.0
    assert sizing.shares({}, ["a", "b"], 100) == 50.0  # nothing predicted: equal shares


@pytest.mark.slow
def test_smoke_run_brings_back_what_a_device_call_can(synth_data: Path, tmp_path: Path) -> None:
    """bench/gpu/run.sh --smoke end to end: the probe, the sizing, a central arm that finishes and a FedAvg arm stopped
    after its first round (as the time limit would) that still reports that round and returns its weights, all in a
    flat $OUT of at most 8 files of at most 16 MiB. (No DP arm: its probe and rounds would double the time; the
    probe reader is checked on the FedAvg arm's real round records, which have the same form.)"""
    from safetensors import safe_open

    from common.nn.weights import load_model

    out = tmp_path / "OUT"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "BUDGET": "600"}  # a busy machine cuts no arm
    cmd = [
        "bash",
        str(REPO / "bench" / "gpu" / "run.sh"),
        "--smoke",
        "--data",
        str(synth_data),
        "--meta",
        str(_meta(synth_data, tmp_path)),
        "--fraction",
        "1",
        "--arms",
        "central,fedavg",
        "--stop-early",
        "fedavg",
    ]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=700)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    files = {p.name: p.stat().st_size for p in out.iterdir()}
    assert all(p.is_file() for p in out.iterdir()) and len(files) <= 8 and max(files.values()) <= 16 * 2**20
    assert set(files) == {
        "results.md",
        "results.tgz",
        "bench.log",
        "central.fp16.safetensors",
        "fedavg.fp16.safetensors",
    }
    with tarfile.open(out / "results.tgz") as t:
        t.extractall(tmp_path / "tgz", filter="data")
    report = json.loads(next((tmp_path / "tgz").rglob("results.json")).read_text())
    assert (tmp_path / "tgz" / "meta" / "env.txt").is_file()
    assert report["probe"]["central_images_per_s"] > 0 and report["probe"]["central_start_s"] > 0
    assert report["plan"]["epochs"] == 2 and set(report["plan"]["predicted_s"]) == {"central", "fedavg"}
    central, fed = report["arms"]["central"], report["arms"]["fedavg"]
    assert central["status"] == "ok" and central["completed"] == 2 and len(central["curve_map50"]) == 2
    assert fed["status"] == bench.STOPPED and fed["completed"] == 1 and len(fed["curve_map50"]) == 2  # rounds 0, 1
    assert fed["n_images"] > 0 and "map50" in fed and fed["weights_holds"] == "round 1"
    model, spec, meta = load_model(out / "central.fp16.safetensors")  # the fracfl header survives the cast
    assert meta["source"] == "fracfl train" and sum(p.numel() for p in model.parameters()) > 1e6
    for arm, holds in (("central", "final"), ("fedavg", "round 1")):
        with safe_open(str(out / f"{arm}.fp16.safetensors"), framework="numpy") as f:
            dtypes = {f.get_tensor(k).dtype.name for k in f.keys()}
            assert f.metadata()["arm"] == arm and f.metadata()["holds"] == holds
        assert "float16" in dtypes and "float32" not in dtypes
    assert "| fedavg | stopped at the time limit | 1 of 2 |" in (out / "results.md").read_text()
    speeds = sizing.Speeds(central_images_per_s=report["probe"]["central_images_per_s"])
    sizing.read_dp_probe(next((tmp_path / "tgz").rglob("fedavg/records.jsonl")).parent, 60.0, 4, 12, speeds)
    assert speeds.dp_images_per_s > 0 and speeds.federated_start_s is not None


def test_returned_weights_stay_within_the_device_limits(tmp_path: Path) -> None:
    """YOLOv7-tiny in fp16 fits one returned file (16 MiB); four fit the 64 MiB in all, the fifth is refused."""
    import outbox

    from common.nn.model import ModelSpec, build_model
    from common.nn.weights import load_model, save_weights

    spec = ModelSpec(arch="yolov7-tiny")
    src = save_weights(build_model(spec), spec, tmp_path / "run" / "weights" / "model.safetensors")
    out = tmp_path / "OUT"
    out.mkdir()
    sizes = [outbox.write_fp16(src, out / f"arm{i}.fp16.safetensors", {"arm": f"arm{i}"}) for i in range(4)]
    assert all(15 * 2**20 < s <= outbox.MAX_FILE for s in sizes)
    with pytest.raises(outbox.TooLarge, match="with the other weights"):
        outbox.write_fp16(src, out / "arm4.fp16.safetensors", {})
    assert len(list(out.iterdir())) == 4 and sum(p.stat().st_size for p in out.iterdir()) < 64 * 2**20 - 2**20
    model, _, _ = load_model(out / "arm0.fp16.safetensors")
    assert next(model.parameters()).dtype.is_floating_point
    assert outbox.export_arm("central", tmp_path / "run", out)["weights_error"]  # a fifth file: said, not written
