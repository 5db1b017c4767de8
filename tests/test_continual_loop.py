"""Continuous learning end to end at one site (issue 17), through the same steps as the simulated loop
(simulations/continual/steps.py) and with a clinical listener running throughout: a radiologist's verdicts go into the
site's feedback store, become a pool version with a held-out split, a federated round (Flower's simulation engine)
warm-starts from the site's model and trains on the pool, `fracfl site promote` gates the new version with the site's
default margins on its held-out reviewed cases, approves and promotes it while studies keep arriving and wait in the
listener's queue, and the running listener switches to it between studies without losing or repeating one. A
deliberately degraded challenger is then refused and the site keeps its model."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from models_support import publish
from pydicom import dcmread
from test_hot_reload import _send, _versions
from test_listener import journal, scu, wait_for

from client.continual.pool import last_round_pool
from client.feedback.store import FeedbackStore
from client.listener.config import ListenConfig
from client.listener.inference import build_processor
from client.listener.processor import Processor
from client.listener.queue import pseudonym
from client.listener.service import ListenerService
from client.models.settings import GateConfig
from client.models.store import ModelStore
from common.cli import main
from common.config import CONF_DIR, EvalConfig, to_typed
from common.synth import get_profile
from simulations.continual import steps
from simulations.continual.arrivals import arrive, read_truth
from simulations.continual.config import ContinualJob, GateMargins, RadiologistConfig
from simulations.continual.loop import salt
from simulations.continual.radiologist import reader_rng, record_review
from simulations.continual.scoring import predict_findings
from simulations.runner import prepare_sites

pytestmark = pytest.mark.slow

# Judged by any finding: at 0.002 the tiny model flags every image (it localises none) and the degraded copy none.
STRICT = GateMargins(0.05, None, None, bootstrap=200, conf=0.002, found="any_finding")


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
    """Synthetic DX radiographs (distinct studies) arriving at the site's listener: more than it can read while the
    site's gate runs."""
    from common.synth import generate_dataset

    out = tmp_path_factory.mktemp("dx") / "site"
    generate_dataset(out, ["general_hospital"], images_per_site=24, size=96, seed=7, dicom=True, progress=False)
    return sorted(out.rglob("dicom/*.dcm"))


class Held:
    """The listener's real processor behind a door the test opens and closes: while closed, the reader waits before
    each study, so studies pile up in the queue whatever the speed of this machine (on a quiet one the reader is
    faster than the modality, and the queue would stay empty)."""

    def __init__(self, processor: Processor):
        self.processor, self.open = processor, threading.Event()
        self.open.set()

    def __call__(self, path: Path) -> Sequence[Path]:
        self.open.wait(timeout=120)
        return self.processor(path)


def _listener(tmp_path: Path, models: Path, key: Path) -> tuple[ListenerService, Held]:
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
    reader = Held(build_processor(cfg))
    svc = ListenerService(cfg, reader)
    svc.start()
    return svc, reader


class Sender(threading.Thread):
    """A modality sending studies one at a time, keeping at least `waiting` of them in the listener's queue (received,
    not yet claimed), until `stop` is set or the studies run out; C-STORE statuses and send order are kept."""

    def __init__(self, svc: ListenerService, studies: list[Path], waiting: int = 2):
        super().__init__(daemon=True)
        self.svc, self.studies, self.waiting = svc, studies, waiting
        self.stop, self.sent, self.statuses = threading.Event(), list[Path](), list[int]()

    def run(self) -> None:
        assoc = scu().associate("127.0.0.1", self.svc.port, ae_title="FRACFL")
        try:
            for study in self.studies:
                while self.svc.queue.count("incoming") >= self.waiting and not self.stop.is_set():
                    time.sleep(0.005)
                if self.stop.is_set():
                    return
                self.statuses.append(int(assoc.send_c_store(study).Status))
                self.sent.append(study)
        finally:
            assoc.release()


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
    key = models.parent / steps.KEY_FILE
    svc, held = _listener(tmp_path, models, key)
    try:
        _send(svc.port, stream[:2])
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
        cfg = replace(job.continual, holdout_fraction=0.5)
        pool = steps.build_pool(store, data_dir, cfg, salt(job, name))
        counts = pool.info["counts"]
        assert counts["train"]["images"] > 0 and counts["test"]["positive"] > 0, counts

        # A round warm-started from the site's model trains on the original data plus the pool.
        second = steps.federated_round(job, run_dir / "periods" / "p001", manifest, pooled_val, warm=True)
        assert second is not None and second.name == "v0002"
        assert json.loads((second / "card.json").read_text())["parent"] == "v0001"
        assert last_round_pool(data_dir).version == pool.version  # the site's round used this pool version

        # `fracfl site promote` gates it with the site's default margins on the held-out reviewed cases, approves and
        # promotes it, while a modality keeps sending studies that wait in the listener's queue.
        version = steps.install(models, second)
        held.open.clear()  # the reader pauses before its next study, so the modality's studies wait in the queue
        sender = Sender(svc, stream[2:-2])
        sender.start()
        wait_for(lambda: svc.queue.count("incoming") >= 1, what="studies waiting in the queue")
        promoted = main(["site", "promote", version, "--approver", "dr-b", "--models-dir", str(models),
                         "--data", str(data_dir), "--seed", "1", "--key", str(key)])  # fmt: skip
        switched = (models / "current.json").stat().st_mtime  # when the clinical model changed (or not)
        after = time.time()
        held.open.set()  # reading goes on: every study not yet started is read by the promoted model
        sender.stop.set()
        sender.join(timeout=30)
        out = capsys.readouterr().out
        assert promoted == 0, out
        assert f"held-out: {counts['test']['images']} images" in out and "ACCEPTED" in out  # the current pool's split
        assert len(sender.sent) < len(stream) - 4, "the studies ran out before the promotion: make the stream longer"
        _send(svc.port, stream[-2:])  # sent after the promotion: the new model's
        sent = [*stream[:2], *sender.sent, *stream[-2:]]
        wait_for(lambda: svc.queue.count("outbox") == len(sent), timeout=180, what="results of every study")
    finally:
        held.open.set()
        svc.stop(timeout=10)

    assert sender.statuses == [0] * len(sender.sent)
    events = journal(svc.queue.root)
    processed = [r["item"] for r in events if r["event"] == "processed"]
    assert Counter(r["event"] for r in events)["received"] == len(sent)
    assert len(processed) == len(set(processed)) == len(sent)  # every study exactly once
    outbox = {i.name: i for i in svc.queue.dir("outbox").iterdir()}
    refs = {dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in sent}
    assert {json.loads((i / "meta.json").read_text())["ref"] for i in outbox.values()} == {pseudonym(u) for u in refs}
    made_by = {}
    for item in processed:  # each study's results (GSPS, SR, SC) name the one version that made them all
        versions = _versions(outbox[item])
        assert len(versions) == 1, versions
        made_by[item] = versions.pop()
    v1, v2 = "cl-e2e-p000/v0001", "cl-e2e-p001/v0002"
    order = [made_by[item] for item in processed]
    assert order == sorted(order, key=[v1, v2].index) and order[0] == v1 and order[-2:] == [v2] * 2  # one switch
    received = {r["item"]: r["t"] for r in events if r["event"] == "received"}
    done = {r["item"]: r["t"] for r in events if r["event"] == "processed"}
    assert all(made_by[i] == v1 for i in processed if done[i] < switched)  # finished before the switch: the old model
    assert all(made_by[i] == v2 for i in processed if received[i] > after)  # arrived after it: the new one
    queued = [i for i in processed if received[i] < switched and made_by[i] == v2]
    assert queued, "no study waited in the queue across the switch"  # received before, read by the new model

    history = ModelStore(models).decisions()
    assert [e["action"] for e in history[-3:]] == ["gate", "approve", "promote"]
    assert history[-1]["approved_by"] == "dr-b" and not history[-1]["forced"]
    figures = history[-3]["figures"]
    margins = GateConfig()  # the site's defaults, what `fracfl site promote` applies without a [gate] table
    assert (figures["sensitivity_margin"], figures["max_fp_increase"], figures["max_fp_per_image"]) == (
        margins.sensitivity_margin,
        margins.max_fp_increase,
        margins.max_fp_per_image,
    )
    assert figures["bootstrap"] == margins.bootstrap and figures["operating_point"] == EvalConfig().conf
    assert figures["n_images"] == counts["test"]["images"] and figures["champion"]["model"].endswith("v0001")
    # Models this small, after two steps each, find next to nothing at the default operating point (typically no
    # fracture and no false positive for either): the gate accepts a challenger no worse than its champion, as it
    # should; that it refuses a worse one is shown below.
    assert figures["delta_sensitivity"] >= -margins.sensitivity_margin
    assert figures["delta_fp_per_image"] <= margins.max_fp_increase
    assert figures["delta_sensitivity_ci"] is not None  # the bootstrap interval shown with the decision

    # A deliberately degraded copy of the clinical model is refused by the gate; the site keeps v0002.
    worse = publish(Path(job.registry), second / "model.safetensors", rnd=2, degrade=True)
    strict = replace(cfg, gate=STRICT)
    assert not steps.gate_and_promote(models, steps.install(models, Path(job.registry) / worse), pool, strict, 1)
    assert steps.clinical_model(models, EvalConfig())[0] == "v0002"
    refused = ModelStore(models).decisions()[-1]
    assert refused["action"] == "promote" and not refused["accepted"] and "sensitivity" in " ".join(refused["reasons"])
