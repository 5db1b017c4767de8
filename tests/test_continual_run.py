"""`fracfl simulate experiment=continual_demo`'s loop (simulations.continual.loop.run_continual) end to end, tiny: two
sites, one period after the first round, a drift at that period, DP-SGD at every site. The parts are tested one by one
elsewhere (test_continual_sim, test_continual_loop); this checks that the loop chains them: arrivals are reviewed into
each site's pool, a warm-started round runs, each site's gate decides and the report holds every (period, site)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from common.config import CONF_DIR, to_typed
from common.privacy.ledger import Ledger
from simulations.continual.config import ContinualJob
from simulations.continual.loop import run_continual
from simulations.continual.report import DECISIONS

pytestmark = pytest.mark.slow


def test_the_loop_reviews_trains_gates_and_reports_every_period_and_site(tmp_path: Path):
    overrides = [
        "experiment=continual_demo",
        "tracking=disabled",
        "progress=false",
        "augment=none",
        "partition.images_per_site=12",
        "partition.size=64",
        "train.imgsz=64",
        "train.max_steps=2",
        "continual.periods=1",
        "continual.arrivals_per_period=6",
        "continual.drift=[{site: rural_clinic, period: 1, profile: pediatric_wrist}]",
        f"registry={tmp_path / 'registry'}",
        f"run_dir={tmp_path / 'run'}",
        "run_id=cl-loop",
    ]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        job = to_typed(compose("federated", overrides), ContinualJob)
    files = run_continual(job, tmp_path / "run")

    facts = json.loads(files["json"].read_text())
    rows = {(r["period"], r["site"]): r for r in facts["records"]}
    assert set(rows) == {(p, s) for p in (0, 1) for s in ("general_hospital", "rural_clinic")}
    assert all(r["decision"] in DECISIONS for r in rows.values())
    assert rows[(1, "rural_clinic")]["profile"] == "pediatric_wrist"  # the drift
    assert rows[(1, "general_hospital")]["profile"] == "general_hospital"
    for site in ("general_hospital", "rural_clinic"):
        before, after = rows[(0, site)], rows[(1, site)]
        assert before["arrived"] == 0 and after["arrived"] == 6 and sum(after["verdicts"].values()) > 0
        assert after["pool_version"] is not None and after["holdout_images"] > 0
        # every arrival was reviewed and read by the period-0 model: the rate is over exactly those six
        assert before["disagreement"] is None and after["disagreement_reviewed"] == 6
        assert 0.0 <= after["disagreement"] <= 1.0
        assert 0 < before["epsilon"] < after["epsilon"] <= 4.0 + 1e-6  # 2 per period, from each site's own ledger
        ledger = Ledger(tmp_path / "run" / "site-ledgers" / site / "ledger.jsonl")
        assert len([e for e in ledger.entries() if e["kind"] == "round"]) == 2
    assert files["png"].stat().st_size > 10_000 and "rural_clinic" in files["html"].read_text()
