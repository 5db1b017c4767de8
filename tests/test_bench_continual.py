"""bench/continual.py: the paired bootstrap on hand-made outcomes, and (slow) the whole chain in --smoke mode on
close-up radiographs (--pixel-spacing): public pretraining, a DP-SGD round, review of drifted arrivals, the pool, a warm-started DP-SGD round, the gate and
the held-out counts, with consistent numbers in its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import continual as bench  # noqa: E402 (bench/ is not a package: found through sys.path)


def test_paired_bootstrap_moves_patients_together_and_brackets_the_difference() -> None:
    m0 = [False] * 20 + [True] * 20
    m1 = [True] * 40  # M1 finds 20 more of 40: +0.5
    patients = [f"p{i // 2}" for i in range(40)]
    lo, hi = bench.paired_bootstrap(m0, m1, patients, 500, seed=0)
    assert 0.1 < lo < 0.5 < hi < 0.9
    by_image = bench.paired_bootstrap(m0, m1, [f"i{i}" for i in range(40)], 500, seed=0)
    assert by_image[1] - by_image[0] < hi - lo  # pairs of images that move together: a wider interval
    assert bench.paired_bootstrap(m0, m1, patients, 500, seed=0) == (lo, hi)  # seeded
    assert bench.paired_bootstrap(m1, m1, patients, 200, seed=1) == (0.0, 0.0)  # no difference, no interval
    worse = bench.paired_bootstrap(m1, m0, patients, 500, seed=0)
    assert worse == pytest.approx((-hi, -lo))


@pytest.mark.slow
def test_smoke_run_writes_consistent_counts(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "continual.py"),
            "--smoke",
            "--out",
            str(out),
            "--feedback-set",
            "train.max_steps=3",
            "--pixel-spacing",
            "0.15",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    r = json.loads((out / "continual.json").read_text())
    assert (out / "continual.png").stat().st_size > 0
    h = r["held_out"]
    assert h["images"] >= h["fractured"] > 0 and h["patients"] <= h["images"]
    for m in ("m0", "m1"):
        assert 0 <= h[f"found_{m}"] <= h["fractured"] and h[f"fp_per_image_{m}"] >= 0
        assert h[f"sensitivity_{m}"] == pytest.approx(h[f"found_{m}"] / h["fractured"])
    assert h["found_by_both"] + h["found_by_m0_only"] == h["found_m0"]
    assert h["found_by_both"] + h["found_by_m1_only"] == h["found_m1"]
    assert h["found_by_both"] + h["found_by_m0_only"] + h["found_by_m1_only"] + h["missed_by_both"] == h["fractured"]
    lo, hi = h["delta_sensitivity_ci95"]
    assert -1 <= lo <= hi <= 1
    assert set(r["epsilon"]) == {"general_hospital", "rural_clinic"} and all(e > 0 for e in r["epsilon"].values())
    assert all(e <= r["settings"]["epsilon"] for e in r["epsilon"].values())  # the sites' total target held
    assert r["arrival_profile"] == "pediatric_wrist" and r["models"] == {"m0": "registry/v0001", "m1": "registry/v0002"}
    verdicts = r["review"]["verdicts"]
    assert verdicts.get("add", 0) > 0  # M0's missed fractures came back as new positives
    assert r["review"]["pool"]["train"]["positive"] > 0 and isinstance(r["gate"]["promoted"], bool)
    assert r["gate"]["figures"]["n_images"] == r["review"]["pool"]["test"]["images"]
    # --pixel-spacing: the sites' radiographs are close-ups (each site's own spacing would be 0.5-0.65 mm at 512 px,
    # and its images' spacing at 96 px at least 2.9 mm).
    for site in ("general_hospital", "rural_clinic"):
        truth = (out / "work" / "run" / "data" / site / "ground_truth.jsonl").read_text().splitlines()
        assert truth and all(json.loads(t)["pixel_spacing_mm"] < 0.15 * 512 * 2 / 96 for t in truth)
    ledger = [json.loads(line) for line in (out / "work" / "site-ledgers" / "rural_clinic" / "ledger.jsonl").open()]
    assert [e["steps"] for e in ledger if "steps" in e] == [2, 3]  # --feedback-set reached round 1 only


def test_a_gpu_run_trains_the_sites_on_the_gpu_too(tmp_path: Path) -> None:
    """--device cuda reaches the sites' rounds, with the GPU shared among them (composed only: no GPU needed)."""
    import argparse

    a = argparse.Namespace(**bench.FULL, privacy="dp_sgd", seed=0, set=[], device="cuda")
    job = bench.compose_job(tmp_path, a)
    assert job.train.device == "cuda" and job.federation.client_gpus == pytest.approx(0.5)
    on_cpu = bench.compose_job(tmp_path, argparse.Namespace(**{**vars(a), "device": "cpu"}))
    assert on_cpu.train.device != "cuda" and on_cpu.federation.client_gpus == 0


def test_shapes_sites_and_arrivals_keep_their_truth(tmp_path: Path) -> None:
    from shapes import shapes_arrivals, shapes_site

    from common.data.spec import load_spec

    data = shapes_site(tmp_path / "site_a", 16, 64, "bright", seed=3)
    spec = load_spec(data)
    train, val = spec.images("train"), spec.images("val")
    assert len(train) == 12 and len(val) == 4 and all(p.stem.startswith("site_a_") for p in train + val)
    patients = (tmp_path / "site_a" / "patients.csv").read_text().splitlines()
    assert patients[0] == "image,patient" and len(patients) == 17  # every image names its patient
    arrived = shapes_arrivals("site_a", "dark", 1, 20, 64, seed=3, patients=5, folder=tmp_path / "arrivals")
    assert len({a.image_id for a, _ in arrived}) == 20 and len({a.patient for a, _ in arrived}) <= 5
    for arrival, truth in arrived:  # a true box is where the image is darker than its background
        from PIL import Image

        pixels = np.asarray(Image.open(arrival.image), dtype=float)
        for box in truth:
            x0, y0, x1, y1 = map(int, box.box)
            assert pixels[y0:y1, x0:x1].mean() < pixels.mean()
    assert shapes_arrivals("site_a", "dark", 1, 20, 64, 3, 5, tmp_path / "again")[0][1] == arrived[0][1]  # seeded
