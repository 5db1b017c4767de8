"""bench/fracatlas_federated.py's own logic: the shared data preparation and the comparison table (the arms
themselves are full `fracfl train`/`simulate` runs, too slow for the suite; the script is smoke-run by hand)."""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import fracatlas_federated as bench  # noqa: E402


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


def test_shared_partition_covers_the_subset_once(synth_data: Path, tmp_path: Path) -> None:
    """The sites every federated arm reuses are built by `fracfl simulate`'s own partition code and config, and
    hold each chosen image exactly once; the pooled validation set is the centralised run's validation set."""
    images = sorted(p.name for p in synth_data.parent.rglob("*.png"))
    regions = ["hand", "leg", "hip", "shoulder", "mixed"]
    meta = tmp_path / "meta.csv"
    with open(meta, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", *regions])
        for i, name in enumerate(images):
            w.writerow([name, *(int(i % 5 == k) for k in range(5))])
    data_yaml = bench.prepare_data(synth_data, 0.5, seed=0, out=tmp_path / "data")
    sites = bench.prepare_sites(["partition=fracatlas_regions", f"partition.source={data_yaml}",
                                f"+partition.meta={meta}"], tmp_path / "sites")
    chosen = {s: set((tmp_path / "data" / f"{s}.txt").read_text().split()) for s in ("train", "val")}
    manifest = json.loads((sites / "sites.json").read_text())
    assert [m["name"] for m in manifest] == ["hand_clinic", "trauma_unit", "hip_shoulder"]
    site_train = [line for m in manifest for line in (Path(m["data"]).parent / "train.txt").read_text().split()]
    assert sorted(site_train) == sorted(chosen["train"])
    assert set((sites / "pooled_val.txt").read_text().split()) == chosen["val"]


def test_ratios_state_goal_and_weak_denominators() -> None:
    ok = lambda m, s: {"status": "ok", "map50": m, "sensitivity": s, "roc_auc": 0.7}  # noqa: E731
    results = {"central": ok(0.40, 0.50), "fedavg": ok(0.39, 0.40), "fedprox": ok(0.30, 0.50),
               "fedavg_gn": ok(0.02, 0.10), "fedavg_dp": {"status": "killed at --time-limit"}}
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
