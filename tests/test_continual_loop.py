"""Continuous learning end to end at one site (issue 17), through the same steps as the simulated loop
(simulations/continual/steps.py) and with a clinical listener running throughout: a radiologist's verdicts go into the
site's feedback store, become a pool version with a held-out split, a federated round (Flower's simulation engine)
warm-starts from the site's model and trains on the pool, the site's gate accepts the new version on its held-out
reviewed cases, it is approved and promoted, and the running listener switches to it between studies without losing
or repeating one. A deliberately degraded challenger is then refused and the site keeps its model."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from models_support import publish
from test_hot_reload import _send, _versions
from test_listener import journal, wait_for

from client.continual.pool import last_round_pool
from client.feedback.store import FeedbackStore
from client.listener.config import ListenConfig
from client.listener.inference import build_processor
from client.listener.service import ListenerService
from client.models.store import ModelStore
from common.cli import main
from common.config import CONF_DIR, to_typed
from common.synth import get_profile
from simulations.continual import steps
from simulations.continual.arrivals import arrive, read_truth
from simulations.continual.config import ContinualJob, GateMargins, RadiologistConfig
from simulations.continual.loop import salt
from simulations.continual.radiologist import reader_rng, record_review
from simulations.continual.scoring import predict_findings
from simulations.runner import prepare_sites

pytestmark = pytest.mark.slow

LOOSE = GateMargins(sensitivity_margin=0.99, max_fp_per_image=None, max_fp_increase=None, bootstrap=200)
STRICT = GateMargins(sensitivity_margin=0.05, max_fp_per_image=None, max_fp_increase=None, bootstrap=200, conf=0.002)


def _job(tmp_path: Path) -> ContinualJob:
    overrides = [
        "experiment=continual_demo",
        "privacy=none",
        "tracking=disabled",
        "progress=false",
        "augment=none",
        "federation.rounds=1",
        "partition.images_per_site=12",
        "partition.size=96",
        "train.imgsz=96",
        "train.max_steps=2",
        f"registry={tmp_path / 'registry'}",
        f"run_dir={tmp_path / 'run'}",
        "run_id=cl-e2e",
    ]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return to_typed(compose("federated", overrides), ContinualJob)


@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> list[Path]:
    """Six synthetic DX radiographs (distinct studies) arriving at the site's listener."""
    from common.synth import generate_dataset

    out = tmp_path_factory.mktemp("dx") / "site"
    generate_dataset(out, ["general_hospital"], images_per_site=6, size=96, seed=7, dicom=True, progress=False)
    return sorted(out.rglob("dicom/*.dcm"))


def _listener(tmp_path: Path, models: Path, key: Path) -> ListenerService:
    cfg = ListenConfig(
        host="127.0.0.1",
        port=0,
        queue_dir=str(tmp_path / "queue"),
        destination=None,
        models_dir=str(models),
        clinical=True,
        approval_key=str(key),
        threads=1,
        heatmap=False,
        retry_delay=0.2,
    )
    svc = ListenerService(cfg, build_processor(cfg))
    svc.start()
    return svc


def test_verdicts_a_round_the_gate_and_promotion_reach_a_running_listener(tmp_path, stream, capsys):
    job = _job(tmp_path)
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True)
    manifest, pooled_val = prepare_sites(job, run_dir)
    site = json.loads(manifest.read_text())[0]
    name, data_dir = site["name"], Path(site["data"]).parent
    home = tmp_path / "sites" / name
    models = home / "models"

    # Period 0: the federation's first model becomes the site's clinical model; the clinical listener starts on it.
    first = steps.federated_round(job, run_dir / "periods" / "p000", manifest, pooled_val, warm=False)
    assert first is not None and first.name == "v0001"
    steps.adopt(models, steps.install(models, first), "dr-a")
    svc = _listener(tmp_path, models, models.parent / steps.KEY_FILE)
    try:
        _send(svc.port, stream[:3])
        wait_for(lambda: any(r["event"] == "processed" for r in journal(svc.queue.root)), what="a first result")

        # The radiologist reviews the clinical model's findings on new arrivals, through the site's feedback store.
        store = FeedbackStore(home / "feedback.db", class_names=["fracture"])
        truth_file = home / "truth.jsonl"
        arrivals = arrive(name, get_profile(name), 1, 16, 96, job.seed, 1000, home / "arrivals", truth_file)
        truth = read_truth(truth_file)
        reader = RadiologistConfig(miss_rate=0.0, error_rate=0.0, reviewer="dr-b")
        rng = reader_rng(job.seed, name, 1)
        findings = predict_findings(first, [a.image for a in arrivals], job.eval)
        for a, (boxes, probability) in zip(arrivals, findings, strict=True):
            record_review(store, a, boxes, probability, truth[a.image_id], "v0001", rng, reader)
        cfg = replace(job.continual, holdout_fraction=0.5, gate=LOOSE)
        pool = steps.build_pool(store, data_dir, cfg, salt(job, name))
        counts = pool.info["counts"]
        assert counts["train"]["images"] > 0 and counts["test"]["positive"] > 0, counts

        # A round warm-started from the site's model trains on the original data plus the pool.
        second = steps.federated_round(job, run_dir / "periods" / "p001", manifest, pooled_val, warm=True)
        assert second is not None and second.name == "v0002"
        assert json.loads((second / "card.json").read_text())["parent"] == "v0001"
        assert last_round_pool(data_dir).version == pool.version  # the site's round used this pool version

        # The gate accepts it on the held-out reviewed cases; it is approved and promoted while studies arrive.
        version = steps.install(models, second)
        gated = main(["site", "gate", version, "--models-dir", str(models), "--data", str(data_dir), "--seed", "1"])
        assert gated in (0, 1)  # the site's default margins may refuse an untrained model; the figures are shown
        assert f"held-out: {counts['test']['images']} images" in capsys.readouterr().out  # the current pool's split
        assert steps.gate_and_promote(models, version, pool, cfg, seed=1)
        _send(svc.port, stream[3:])
        wait_for(lambda: svc.queue.count("outbox") == len(stream), timeout=180, what="results of every study")
    finally:
        svc.stop(timeout=10)

    events = journal(svc.queue.root)
    processed = [r["item"] for r in events if r["event"] == "processed"]
    assert Counter(r["event"] for r in events)["received"] == len(stream)
    assert len(processed) == len(set(processed)) == len(stream)  # every study exactly once
    outbox = {i.name: i for i in svc.queue.dir("outbox").iterdir()}
    made_by = [_versions(outbox[item]).pop() for item in processed]
    v1, v2 = "cl-e2e-p000/v0001", "cl-e2e-p001/v0002"
    assert set(made_by[:1]) == {v1} and made_by[-3:] == [v2] * 3  # sent after the promotion: the new model's
    assert made_by == sorted(made_by, key=[v1, v2].index)  # one switch, between studies

    history = ModelStore(models).decisions()
    assert [e["action"] for e in history[-3:]] == ["gate", "approve", "promote"]
    figures = history[-3]["figures"]
    assert figures["n_images"] == counts["test"]["images"] and figures["champion"]["model"].endswith("v0001")
    assert figures["delta_sensitivity_ci"] is not None  # the bootstrap interval shown with the decision

    # A deliberately degraded copy of the clinical model is refused by the gate; the site keeps v0002.
    worse = publish(Path(job.registry), second / "model.safetensors", rnd=2, degrade=True)
    strict = replace(cfg, gate=STRICT)
    assert not steps.gate_and_promote(models, steps.install(models, Path(job.registry) / worse), pool, strict, 1)
    assert steps.clinical_model(models)[0] == "v0002"
    refused = ModelStore(models).decisions()[-1]
    assert refused["action"] == "promote" and not refused["accepted"] and "sensitivity" in " ".join(refused["reasons"])
