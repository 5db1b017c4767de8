"""`fracfl listen` with a model store: a promotion in the middle of a stream of C-STOREs switches the model between
items, every study is processed exactly once and every result (GSPS, SR, SC) names the version that made it; a
clinical listener refuses an unapproved or tampered version, and keeps its approved model when current.json is
replaced by one it cannot verify."""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest
from models_support import publish
from pydicom import dcmread
from test_listener import journal, scu, wait_for

from client.listener.config import ListenConfig
from client.listener.inference import build_processor
from client.listener.queue import pseudonym
from client.listener.service import ListenerService
from client.models.approval import NotApproved
from client.models.fetch import fetch_from_registry
from client.models.lifecycle import promote
from client.models.store import ModelStore
from common.errors import ConfigError
from common.privacy import signing


@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> list:
    """Eight synthetic DX radiographs (distinct studies)."""
    from common.synth import generate_dataset

    out = tmp_path_factory.mktemp("dx") / "site"
    generate_dataset(out, ["general_hospital"], images_per_site=8, size=96, seed=5, dicom=True, progress=False)
    return sorted(out.rglob("dicom/*.dcm"))


@pytest.fixture
def site(tmp_path, tiny_weights):
    """A model store holding v0001 (current, approved) and v0002 (installed, not yet promoted); the site's key."""
    registry = tmp_path / "registry"
    for rnd in (1, 2):
        publish(registry, tiny_weights, rnd)
    store = ModelStore(tmp_path / "models")
    for v in ("v0001", "v0002"):
        fetch_from_registry(store, registry, v)
    key_path = tmp_path / "privacy" / signing.KEY_NAME
    key = signing.load_or_create(key_path)
    promote(store, "v0001", "dr-a", key, force_reason="first clinical model")
    return store, key, key_path


def _listener(tmp_path, store, key_path, **overrides) -> ListenerService:
    cfg = ListenConfig(
        host="127.0.0.1",
        port=0,
        queue_dir=str(tmp_path / "queue"),
        destination=None,
        models_dir=str(store.root),
        clinical=True,
        approval_key=str(key_path),
        threads=1,
        heatmap=False,
        retry_delay=0.2,
        **overrides,
    )
    svc = ListenerService(cfg, build_processor(cfg))
    svc.start()
    return svc


def _send(port: int, files) -> None:
    assoc = scu().associate("127.0.0.1", port, ae_title="FRACFL")
    assert [assoc.send_c_store(f).Status for f in files] == [0] * len(files)
    assoc.release()


def _versions(item) -> set[str]:
    """The model version each result object of an outbox item names (SR, SC: Software Versions; GSPS too)."""
    names = set()
    for f in sorted(item.iterdir()):
        if f.suffix == ".dcm":
            ds = dcmread(f, stop_before_pixels=True)
            names.add(str(ds.SoftwareVersions))
            assert str(ds.SoftwareVersions) in str(ds.SeriesDescription)
    return names


def test_promotion_mid_stream_switches_between_items(tmp_path, site, stream, caplog):
    caplog.set_level(logging.INFO)
    store, key, key_path = site
    svc = _listener(tmp_path, store, key_path)
    try:
        _send(svc.port, stream[:4])
        wait_for(lambda: any(r["event"] == "processed" for r in journal(svc.queue.root)), what="a first result")
        promote(store, "v0002", "dr-b", key, force_reason="test promotion while studies are queued")
        _send(svc.port, stream[4:])  # sent after the promotion: these must be made by v0002
        wait_for(lambda: svc.queue.count("outbox") == len(stream), timeout=120, what="results of every study")
    finally:
        svc.stop(timeout=10)
    events = journal(svc.queue.root)
    processed = [r["item"] for r in events if r["event"] == "processed"]
    assert Counter(r["event"] for r in events)["received"] == len(stream)
    assert len(processed) == len(set(processed)) == len(stream)  # every study exactly once
    refs = {dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in stream}
    outbox = {i.name: i for i in svc.queue.dir("outbox").iterdir()}
    assert {json.loads((i / "meta.json").read_text())["ref"] for i in outbox.values()} == {pseudonym(u) for u in refs}
    made_by = []
    for item in processed:  # in processing order
        versions = _versions(outbox[item])
        assert len(versions) == 1, versions  # GSPS, SR and SC of one study name the same model
        made_by.append(versions.pop())
    v1, v2 = "cl-test/v0001", "cl-test/v0002"
    switch = made_by.index(v2)
    assert made_by[:switch] == [v1] * switch and made_by[switch:] == [v2] * (len(stream) - switch)
    assert 1 <= switch <= 4  # v0001 made at least the first, v0002 at least the four sent after the promotion
    assert "switched model: v0001 -> v0002 (between items)" in caplog.text


def test_clinical_listener_refuses_unapproved_and_tampered_versions(tmp_path, site, stream, caplog):
    store, key, key_path = site
    cfg = dict(host="127.0.0.1", port=0, queue_dir=str(tmp_path / "q"), destination=None, models_dir=str(store.root))
    with pytest.raises(ConfigError, match="config key clinical: set models_dir and approval_key"):
        build_processor(ListenConfig(**{**cfg, "models_dir": None}, model="w", clinical=True))

    # An approval made with another key is not this site's approval.
    stranger = tmp_path / "stranger.pem"
    signing.load_or_create(stranger)
    with pytest.raises(NotApproved, match="clinical listener refuses model v0001 .*not signed with this site's key"):
        build_processor(ListenConfig(**cfg, clinical=True, approval_key=str(stranger)))

    # A running clinical listener does not switch to a version whose current.json was edited by hand.
    caplog.set_level(logging.INFO)
    svc = _listener(tmp_path, store, key_path)
    try:
        forged = {**store.current(), "version": "v0002"}
        store.set_current(forged)
        _send(svc.port, stream[:1])
        wait_for(lambda: svc.queue.count("outbox") == 1, what="a result")
    finally:
        svc.stop(timeout=10)
    assert _versions(next(svc.queue.dir("outbox").iterdir())) == {"cl-test/v0001"}
    assert "clinical listener refuses model v0002" in caplog.text and "still using v0001" in caplog.text

    # Weights changed after approval: refused at start.
    weights = store.folder("v0001") / "model.safetensors"
    store.set_current(store.approval("v0001"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(NotApproved, match="not the weights that were approved"):
        build_processor(ListenConfig(**cfg, clinical=True, approval_key=str(key_path)))
