"""Verdicts -> the site's training pool (client/continual): label rules, the held-out split by patient, versioned
pools, replay in site training, `fracfl site pool`, and forgetting per round in the server's report."""

from __future__ import annotations

import hashlib
import json
import stat

import numpy as np
import pytest
from PIL import Image
from review_support import make_site
from tests_support import GROUP_NANO, NANO, toy_dataset

from client.continual.config import PoolConfig, SiteReplay, pool_config, site_replay
from client.continual.holdout import SALT_FILE, holdout_salt, in_holdout
from client.continual.labels import NEGATIVE, POSITIVE, image_labels, yolo_rows
from client.continual.pool import (
    build_pool,
    current_pool,
    folder_items,
    last_round_pool,
    load_version,
    record_round,
)
from client.continual.replay import replayed, training_parts
from client.feedback.annotations.kos import SOURCE as KOS
from client.feedback.annotations.kos import WITHDRAWN
from client.feedback.store import BOX_KINDS, Box, FeedbackStore
from client.privacy import Budget, privacy_groups
from client.review.images import kept_pixels
from client.task import train_site
from common.cli import main
from common.config import ImbalanceConfig, LocalTrainConfig, PrivacyConfig, ReplayConfig
from common.data.dataset import DetectionDataset
from common.data.spec import load_spec
from common.errors import ConfigError, FracflError
from common.nn.model import build_model
from common.privacy.fingerprint import fingerprint, image_hashes
from common.privacy.patients import read_patients
from common.protocol import NUM_EXAMPLES, SiteJob
from server.forgetting import forgetting
from server.forgetting import summary as forgetting_summary
from server.history import RoundRecord
from server.report import report_facts, write_report

NAMES = ["fracture", "avulsion"]
SIZE = 100  # kept images are SIZE x SIZE pixels


def _site_data(root):
    """A site's training folder with two classes (toy images, patients named in patients.csv)."""
    data = toy_dataset(root, size=SIZE, n=8)
    (data / "data.yaml").write_text("train: images/train\nval: images/val\nnames: {0: fracture, 1: avulsion}\n")
    stems = sorted(p.stem for p in (data / "images").rglob("*.png"))
    (data / "patients.csv").write_text("image,patient\n" + "".join(f"{s},orig-{s}\n" for s in stems))
    return data


class Site:
    """A feedback store whose kept copies are PNG files (the review page and the pool read both PNG and DICOM)."""

    def __init__(self, root):
        self.root = root
        self.store = FeedbackStore(root / "feedback.db", class_names=NAMES)
        self.rng = np.random.default_rng(0)

    def image(self, uid, boxes=(), patient=None):
        (self.root / "keep").mkdir(exist_ok=True)
        path = self.root / "keep" / f"{uid}.png"
        Image.fromarray(self.rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8)).save(path)
        return self.store.record_image(
            sop_uid=uid,
            image_ref=str(path),
            model_version="m1",
            probability=0.5,
            boxes=list(boxes),
            patient=patient if patient is not None else f"pat-{uid}",
        )

    def verdict(self, image_id, kind, box=None, n=0, **kw):
        box_id = self.store.image(image_id).boxes[n].id if kind in BOX_KINDS else None
        return self.store.add_verdict(image_id=image_id, reviewer="rev-1", kind=kind, box_id=box_id, box=box, **kw)

    def labels(self, image_id):
        return image_labels(self.store.image(image_id), self.store.verdicts(image_id))


B1, B2 = Box(10, 10, 30, 40, score=0.9), Box(50, 50, 90, 80, score=0.6)


# --- label rules ----------------------------------------------------------------------------------------------------


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path)


def test_confirmed_and_corrected_boxes_are_labels_at_the_corrected_geometry(site):
    i = site.image("a", [B1, B2])
    site.verdict(i, "confirm", n=0)
    site.verdict(i, "move", box=Box(52, 48, 95, 85), n=1)
    got = site.labels(i)
    assert got.kind == POSITIVE
    assert [b.as_list() for b in got.boxes] == [[10, 10, 30, 40], [52, 48, 95, 85]]


def test_added_boxes_are_new_positives_and_rejected_ones_are_dropped(site):
    i = site.image("a", [B1])
    site.verdict(i, "reject", n=0)
    site.verdict(i, "add", box=Box(5, 5, 20, 20, cls=1))
    got = site.labels(i)
    assert got.kind == POSITIVE and [(b.as_list(), b.cls) for b in got.boxes] == [([5, 5, 20, 20], 1)]


def test_all_boxes_rejected_is_a_hard_negative(site):
    i = site.image("a", [B1, B2])
    site.verdict(i, "reject", n=0)
    site.verdict(i, "reject", n=1)
    assert site.labels(i).kind == NEGATIVE and site.labels(i).boxes == ()


def test_no_fracture_is_a_hard_negative_unless_boxes_are_decided_after_it(site):
    i = site.image("a", [B1, B2])
    site.verdict(i, "confirm", n=0)  # before "no fracture": overruled by it
    site.verdict(i, "no_fracture")
    assert site.labels(i).kind == NEGATIVE  # the proposed box B2 does not keep it out: "no fracture" decides it
    site.verdict(i, "add", box=Box(60, 10, 80, 30))  # the reviewer changed their mind
    got = site.labels(i)
    assert got.kind == POSITIVE and [b.as_list() for b in got.boxes] == [[60, 10, 80, 30]]
    j = site.image("b")  # no model box at all
    site.verdict(j, "no_fracture")
    assert site.labels(j).kind == NEGATIVE


def test_type_verdicts_set_the_class_but_do_not_decide_a_box(site):
    i = site.image("a", [B1])
    site.verdict(i, "set_class", n=0, class_name="avulsion")
    assert site.labels(i).kind == "undecided_boxes"
    site.verdict(i, "confirm", n=0)
    assert [b.cls for b in site.labels(i).boxes] == [1]


def test_only_reviewed_and_fully_decided_images_count(site):
    assert site.labels(site.image("a", [B1])).kind == "unreviewed"
    i = site.image("b", [B1])
    site.verdict(i, "note", note="check the lateral view")
    assert site.labels(i).kind == "unreviewed"  # a note says nothing about a fracture
    j = site.image("c", [B1, B2])
    site.verdict(j, "confirm", n=0)
    assert site.labels(j).kind == "undecided_boxes"  # B2 is still proposed


def test_a_pacs_withdrawal_keeps_an_image_out_whatever_else_was_said(site):
    i = site.image("a", [B1])
    site.verdict(i, "confirm", n=0)
    site.verdict(i, "note", note=f"{WITHDRAWN}: Rejected for Quality Reasons (DCM 113001)", source=KOS)
    assert site.labels(i).kind == "withdrawn" and not site.labels(i).usable
    j = site.image("b", [B1])
    site.verdict(j, "confirm", n=0)
    site.verdict(j, "note", note=f"{WITHDRAWN}: typed by a reviewer")  # review-page notes are free text
    assert site.labels(j).kind == POSITIVE


def test_yolo_rows_are_normalised_and_clipped_to_the_image():
    rows = yolo_rows([Box(10, 20, 30, 60, cls=1), Box(-10, 90, 20, 130), Box(120, 0, 150, 10)], 100, 100)
    assert rows.splitlines() == ["1 0.200000 0.400000 0.200000 0.400000", "0 0.100000 0.950000 0.200000 0.100000"]


# --- held-out split ------------------------------------------------------------------------------------------------


def test_holdout_is_stable_per_patient_keyed_by_the_site_salt(tmp_path):
    salt = holdout_salt(tmp_path)
    assert stat.S_IMODE((tmp_path / SALT_FILE).stat().st_mode) == 0o600
    assert holdout_salt(tmp_path) == salt and len(salt) == 32  # made once, then read back
    patients = [f"p{i}" for i in range(2000)]
    held = {p for p in patients if in_holdout(p, 0.2, salt)}
    assert 300 < len(held) < 500  # about a fifth
    assert held == {p for p in patients if in_holdout(p, 0.2, salt)}  # the same every time
    assert held <= {p for p in patients if in_holdout(p, 0.3, salt)}  # a larger share only adds patients
    other = {p for p in patients if in_holdout(p, 0.2, b"another site salt!!")}
    assert other != held  # another salt, another draw
    assert not any(in_holdout(p, 0.0, salt) for p in patients)
    with pytest.raises(ConfigError, match="below 1"):
        in_holdout("p", 1.0, salt)
    with pytest.raises(FracflError, match="missing"):
        holdout_salt(tmp_path / "elsewhere", create=False)


# --- the pool ------------------------------------------------------------------------------------------------------


def _reviewed_site(tmp_path, n=12):
    """n reviewed images of n // 2 patients: even ones confirmed (positive), odd ones rejected (hard negative)."""
    data = _site_data(tmp_path / "D")
    (data / SALT_FILE).write_text((bytes([1]) * 32).hex())  # fixed, so every run splits alike: pat-3..5 held out
    site = Site(tmp_path / "site")
    ids = []
    for k in range(n):
        i = site.image(f"1.2.{k}", [B1], patient=f"pat-{k // 2}")
        site.verdict(i, "confirm" if k % 2 == 0 else "reject", n=0)
        ids.append(i)
    return data, site, ids


def test_a_pool_version_holds_the_reviewed_images_split_by_patient(tmp_path):
    data, site, _ = _reviewed_site(tmp_path)
    site.image("1.9.0", [B1], patient="pat-x")  # unreviewed: not in the pool
    pool = build_pool(site.store, data, PoolConfig(holdout_fraction=0.5))
    assert pool.version == 1 and pool.name == "v0001" and current_pool(data) == pool
    assert json.loads((data / "pool" / "current.json").read_text()) == {"version": 1}
    spec = load_spec(pool.data_yaml)
    assert spec.names == {0: "fracture", 1: "avulsion"}
    train, test = spec.images("train"), spec.images(pool.holdout_split)
    assert len(train) == len(test) == 6
    patients = read_patients(pool.root)
    salt = holdout_salt(data)
    for p in test:
        assert in_holdout(patients[p.stem], 0.5, salt)
    for p in train:
        assert not in_holdout(patients[p.stem], 0.5, salt)
    # labels: positives carry the confirmed box (normalised by the kept image's size), negatives are empty
    for p in train + test:
        text = spec.label_file(p).read_text()
        positive = int(p.stem.split(".")[-1]) % 2 == 0
        assert text == ("0 0.200000 0.250000 0.200000 0.300000\n" if positive else "")
    # the PNG is the kept image as the review page reads it
    assert np.array_equal(
        np.array(Image.open(train[0] if train else test[0])),
        kept_pixels(str(site.root / "keep" / f"{(train or test)[0].stem}.png")),
    )
    info = pool.info
    assert info["counts"]["train"]["images"] + info["counts"]["test"]["images"] == 12
    assert info["counts"]["train"]["positive"] + info["counts"]["test"]["positive"] == 6
    assert info["changes"] == {
        "since": None,
        "added": {"positive": 6, "hard_negative": 6},
        "changed": {"positive": 0, "hard_negative": 0},
        "removed": {"positive": 0, "hard_negative": 0},
    }
    assert info["skipped"] == {"unreviewed": 1}
    # fingerprint: the images' bytes (the ledger's hashing), their split and labels; pool.json names no one
    items = [
        f"{split}/{p.stem}:{h}:{hashlib.sha256(spec.label_file(p).read_bytes()).hexdigest()}"
        for split, images in (("train", train), ("test", test))
        for p, h in zip(images, image_hashes(images), strict=True)
    ]
    assert pool.fingerprint == fingerprint(items)
    text = (pool.root / "pool.json").read_text()
    assert "pat-" not in text and "1.2." not in text


def test_versions_are_made_only_on_change_and_say_what_changed(tmp_path):
    data, site, ids = _reviewed_site(tmp_path)
    first = build_pool(site.store, data, PoolConfig(0.5))
    assert build_pool(site.store, data, PoolConfig(0.5)) == first  # nothing changed: no new version
    site.verdict(ids[1], "add", box=Box(40, 40, 60, 60))  # a negative becomes a positive
    site.verdict(ids[2], "note", note=f"{WITHDRAWN}: x", source=KOS)  # withdrawn: leaves the pool
    k = site.image("1.3.0", patient="pat-new")
    site.verdict(k, "no_fracture")  # a new hard negative
    second = build_pool(site.store, data, PoolConfig(0.5))
    assert second.version == 2 and second.fingerprint != first.fingerprint
    assert second.info["changes"] == {
        "since": 1,
        "added": {"positive": 0, "hard_negative": 1},
        "changed": {"positive": 1, "hard_negative": 0},
        "removed": {"positive": 1, "hard_negative": 0},
    }
    assert second.info["skipped"] == {"withdrawn": 1}
    assert load_version(first.root).fingerprint == first.fingerprint  # the old version is untouched
    assert len(folder_items(first.root)) == 12 and len(folder_items(second.root)) == 12
    # the site's held-out share is fixed once the pool exists
    with pytest.raises(FracflError, match="was split with 0.5"):
        build_pool(site.store, data, PoolConfig(0.2))


def test_patients_in_the_sites_own_test_split_stay_held_out(tmp_path):
    data, site, _ = _reviewed_site(tmp_path)
    (data / "images" / "test").mkdir()
    Image.new("L", (SIZE, SIZE)).save(data / "images" / "test" / "t0.png")
    with open(data / "patients.csv", "a") as f:
        f.write("t0,pat-0\n")  # pat-0 is in D's test split: held out in the pool whatever the hash says
    pool = build_pool(site.store, data, PoolConfig(holdout_fraction=0.0))
    spec = load_spec(pool.data_yaml)
    assert sorted(p.stem for p in spec.images("test")) == ["1.2.0", "1.2.1"]
    assert len(spec.images("train")) == 10


def test_dicom_kept_copies_become_pool_images(tmp_path):
    review = make_site(tmp_path / "site")  # de-identified DICOM kept copies, as the listener keeps them
    data = tmp_path / "D"
    data.mkdir()
    store = review.store
    first = store.image(review.image_ids[0])
    for box in first.boxes:
        store.add_verdict(image_id=first.id, reviewer="rev-1", kind="confirm", box_id=box.id)
    store.add_verdict(image_id=review.image_ids[2], reviewer="rev-1", kind="no_fracture")
    pool = build_pool(store, data, PoolConfig(0.0))
    spec = load_spec(pool.data_yaml)
    assert spec.names == {0: "fracture", 1: "avulsion"}  # from the store, as the folder has no data.yaml
    images = spec.images("train")
    assert len(images) == 2
    png = np.array(Image.open(data / "pool" / "v0001" / "images" / "train" / f"{first.sop_uid}.png"))
    assert np.array_equal(png, kept_pixels(first.image_ref))
    assert read_patients(pool.root)[first.sop_uid] == first.patient
    for phi in review.phi:  # nothing identifying in any file of the pool
        for f in pool.root.rglob("*"):
            if f.is_file():
                assert phi.encode() not in f.read_bytes()


def test_class_names_of_store_and_site_data_must_agree(tmp_path):
    data = toy_dataset(tmp_path / "D", size=SIZE)  # one class
    site = Site(tmp_path / "site")  # two classes
    i = site.image("a", [B1])
    site.verdict(i, "confirm", n=0)
    with pytest.raises(FracflError, match="class names"):
        build_pool(site.store, data, PoolConfig(0.0))


# --- replay and site training ---------------------------------------------------------------------------------------


def test_replay_share_is_chosen_by_image_content(tmp_path):
    images = []
    for k in range(40):
        p = tmp_path / f"{k}.png"
        Image.fromarray(np.full((4, 4), k, np.uint8)).save(p)
        images.append(p)
    half = replayed(images, 0.5)
    assert 10 < len(half) < 30 and replayed(images, 0.5) == half
    assert replayed(list(reversed(images)), 0.5) == list(reversed(half))  # by content, not by position
    assert set(replayed(images, 0.25)) <= set(half) and replayed(images, 1.0) == images and replayed(images, 0) == []
    with pytest.raises(ConfigError, match="original_share"):
        replayed(images, 1.5)


def test_site_training_uses_the_pool_and_dp_covers_its_patients(tmp_path):
    data, site, _ = _reviewed_site(tmp_path)
    pool = build_pool(site.store, data, PoolConfig(0.5))
    n_pool_train = pool.info["counts"]["train"]["images"]
    parts = training_parts(data, pool, ReplayConfig())
    originals = load_spec(data).images("train")
    held = {read_patients(pool.root)[p.stem] for p in load_spec(pool.data_yaml).images("test")}
    assert len(parts.images) == len(originals) + n_pool_train
    assert not {read_patients(pool.root).get(p.stem) for p in parts.images} & held  # held out: never trained on
    # a held-out patient's original images are left out too
    with open(data / "patients.csv", "a") as f:
        f.write(f"{originals[0].stem},{sorted(held)[0]}\n")
    assert originals[0] not in training_parts(data, pool, ReplayConfig()).images
    assert training_parts(data, pool, ReplayConfig(use_pool=False)).images == originals

    dataset = DetectionDataset.from_specs(parts.parts, 64)
    budget = Budget(8.0, 10.0, None, tmp_path / "ledger")
    groups = privacy_groups("s", budget, PrivacyConfig(mode="dp_sgd"), parts.roots, dataset.images)
    pool_rows = [k for k, p in enumerate(dataset.images) if p.is_relative_to(pool.root)]
    pool_patients = read_patients(pool.root)
    for a in pool_rows:  # two pool images of one patient share a patient number
        for b in pool_rows:
            same = pool_patients[dataset.images[a].stem] == pool_patients[dataset.images[b].stem]
            assert (groups[a] == groups[b]) == same

    train = LocalTrainConfig(epochs=1, local_epochs=1, max_steps=1, batch_size=4, imgsz=64)
    job = SiteJob(model=NANO.to_dict(), train=train, rounds=1)
    _, metrics, _ = train_site("site_a", data, build_model(NANO).state_dict(), job, 1)
    assert metrics[NUM_EXAMPLES] == len(originals) - 1 + n_pool_train  # the reply says how many, nothing more
    assert set(metrics) == {"loss", "box_loss", "cls_loss", "dfl_loss", "steps", "images_per_s", NUM_EXAMPLES}
    assert last_round_pool(data) == pool


def test_with_dp_the_ledger_charges_originals_and_pool_and_spending_carries_over(tmp_path):
    """A new pool version is a new training set sharing images with the last: its rounds continue the spending."""
    data, site, ids = _reviewed_site(tmp_path)
    build_pool(site.store, data, PoolConfig(0.5))
    train = LocalTrainConfig(
        epochs=1, local_epochs=1, max_steps=1, batch_size=4, imgsz=64, imbalance=ImbalanceConfig(mode="none")
    )
    job = SiteJob(model=GROUP_NANO.to_dict(), train=train, privacy=PrivacyConfig(mode="dp_sgd"), rounds=2, run_id="r")
    budget = Budget(8.0, 10.0, None, tmp_path / "ledger")
    state = build_model(GROUP_NANO).state_dict()
    _, _, first = train_site("s", data, state, job, 1, budget=budget)
    site.verdict(ids[1], "add", box=Box(40, 40, 60, 60))  # a train-split image (pat-0) changes its labels
    k = site.image("1.4.0", patient="pat-0")
    site.verdict(k, "no_fracture")  # and a new image joins the train split
    second_pool = build_pool(site.store, data, PoolConfig(0.5))
    _, metrics, second = train_site("s", data, state, job, 2, budget=budget)
    entries = [json.loads(line) for line in (tmp_path / "ledger" / "ledger.jsonl").read_text().splitlines()]
    rounds = [e for e in entries if e["kind"] == "round"]
    n_originals = len(load_spec(data).images("train"))
    assert [e["images"] for e in rounds] == [n_originals + 6, n_originals + 7] == [first["images"], second["images"]]
    assert rounds[0]["fingerprint"] != rounds[1]["fingerprint"]  # another set ...
    assert second["epsilon"] > first["epsilon"]  # ... whose spending continues from the first round's
    members = (tmp_path / "ledger" / "datasets" / f"{rounds[1]['fingerprint']}.txt").read_text().split()
    pool_train = load_spec(second_pool.data_yaml).images("train")
    assert set(image_hashes(pool_train)) <= set(members)
    assert metrics[NUM_EXAMPLES] == n_originals + 7


def test_instances_the_pacs_withdrew_are_never_trained_on_again(tmp_path):
    """A KOS rejection note withdraws an original image the site ingested (never analysed, so the store records a
    withdrawal) and an analysed image the pool already trains on (a note verdict). Ingest and the listener name both
    by the pseudonymous SOP Instance UID the site's keys give, so the next round leaves both out, although its pool
    version was built before the withdrawal; the next pool version drops the analysed one."""
    from pydicom import dcmread
    from test_pacs_feedback import kos

    from client.dicom.deid import SiteKeys
    from client.dicom.ingest import ingest
    from client.feedback.annotations.apply import PacsFeedback
    from common.synth import generate_dataset

    synth = tmp_path / "synth"
    generate_dataset(synth, ["general_hospital"], images_per_site=6, size=64, dicom=True, seed=3, progress=False)
    files = sorted((synth / "general_hospital" / "dicom").glob("*.dcm"))
    (synth / "to_ingest").mkdir()
    for f in files[:5]:
        f.rename(synth / "to_ingest" / f.name)
    data, keys = tmp_path / "D", SiteKeys(tmp_path / "deid")
    ingest(synth / "to_ingest", synth / "general_hospital" / "labels", data, keys.root, burned_in="accept",
           val_fraction=0.0)  # fmt: skip
    originals = {p.stem for p in load_spec(data).images("train")}
    ingested, arrived = dcmread(synth / "to_ingest" / files[0].name), dcmread(files[5])
    gone_original, gone_analysed = keys.uid(str(ingested.SOPInstanceUID)), keys.uid(str(arrived.SOPInstanceUID))
    assert gone_original in originals  # the link: ingest names each original by its pseudonymous UID

    store = FeedbackStore(tmp_path / "feedback.db", class_names=["fracture"])
    kept = tmp_path / "kept.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(kept)
    i = store.record_image(sop_uid=gone_analysed, image_ref=str(kept), model_version="m1", probability=0.1, boxes=[],
                           patient="pat-arrived")  # fmt: skip
    store.add_verdict(image_id=i, reviewer="rev-1", kind="no_fracture")
    pool = build_pool(store, data, PoolConfig(0.0))
    assert {p.stem for p in load_spec(pool.data_yaml).images("train")} == {gone_analysed}

    feedback = PacsFeedback(store, keys)
    rejection = kos([ingested, arrived])
    outcome = feedback.apply(rejection)
    assert (outcome.verdicts, outcome.withdrawn, outcome.set_aside) == (1, 1, 0)
    assert store.withdrawn() == {gone_original, gone_analysed}
    again = feedback.apply(rejection)  # the PACS sends the same object again: nothing is recorded twice
    assert (again.verdicts, again.withdrawn, again.already) == (0, 0, 2)

    parts = training_parts(data, pool, ReplayConfig(), store.withdrawn())
    assert {p.stem for p in parts.images} == originals - {gone_original}  # the older pool's image too
    toml = tmp_path / "site.toml"
    toml.write_text(f'[continual]\nfeedback_db = "{store.path}"\n')
    replay = site_replay({"data-dir": str(data), "site-config": str(toml)}, ReplayConfig())
    assert replay.withdrawn == {gone_original, gone_analysed}
    train = LocalTrainConfig(epochs=1, local_epochs=1, max_steps=1, batch_size=4, imgsz=64)
    job = SiteJob(model=NANO.to_dict(), train=train, rounds=1)
    _, metrics, _ = train_site("site_a", data, build_model(NANO).state_dict(), job, 1, replay=replay)
    assert metrics[NUM_EXAMPLES] == len(originals) - 1

    rebuilt = build_pool(store, data, PoolConfig(0.0))
    assert rebuilt.info["skipped"] == {"withdrawn": 1} and rebuilt.info["counts"]["train"]["images"] == 0


def test_the_sites_own_replay_setting_wins_over_the_runs_proposal(tmp_path):
    proposed = ReplayConfig(original_share=0.3, use_pool=True)
    assert site_replay({}, proposed) == SiteReplay(proposed)  # a simulated site takes the run's values; no PACS
    toml = tmp_path / "site.toml"
    toml.write_text("[privacy]\ntarget_epsilon = 1.0\n[continual]\noriginal_share = 0.8\nholdout_fraction = 0.1\n")
    node = {"data-dir": str(tmp_path), "site-config": str(toml)}
    # a real site that names no feedback store cannot know what the PACS withdrew
    assert site_replay(node, proposed) == SiteReplay(ReplayConfig(original_share=0.8, use_pool=True), None)
    assert pool_config(toml) == PoolConfig(0.1) and pool_config(None) == PoolConfig()
    toml.write_text("[continual]\nuse_pool = false\n")
    assert site_replay(node, proposed).mix == ReplayConfig(original_share=0.3, use_pool=False)
    toml.write_text("[continual]\noriginal_share = 2\n")
    with pytest.raises(ConfigError, match=r"site.toml: \[continual\] original_share"):
        site_replay(node, proposed)
    toml.write_text('[continual]\nfeedback_db = "feedback.db"\n')
    with pytest.raises(ConfigError, match=r"site.toml: \[continual\] feedback_db must be the review store's absolute"):
        site_replay(node, proposed)
    # the run proposes through the job it sends
    text = SiteJob(model=NANO.to_dict(), train=LocalTrainConfig(replay=proposed)).to_json()
    assert SiteJob.from_json(text).train.replay == proposed


# --- fracfl site pool --------------------------------------------------------------------------------------------


def test_site_pool_command_shows_changes_and_builds(tmp_path, capsys):
    data, site, ids = _reviewed_site(tmp_path, n=4)
    args = ["site", "pool", "--data", str(data), "--feedback-db", str(site.store.path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "current pool version: none" in out and "added 2 positive, 2 hard negative" in out
    assert "dry run" in out and not (data / "pool" / "current.json").exists()
    assert main([*args, "--build"]) == 0
    out = capsys.readouterr().out
    assert "built v0001" in out and "added 2 positive, 2 hard negative" in out

    record_round(data, current_pool(data))  # as a training round does
    site.verdict(ids[1], "add", box=Box(40, 40, 60, 60))
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "since v0001 (the last round's): added none; changed 1 positive; removed none" in out
    assert main([*args, "--build"]) == 0
    assert "built v0002" in capsys.readouterr().out
    assert main([*args, "--build"]) == 0
    assert "unchanged, still v0002" in capsys.readouterr().out
    assert main(["site", "pool", "--data", str(tmp_path / "nope"), "--feedback-db", str(site.store.path)]) != 0


# --- forgetting ----------------------------------------------------------------------------------------------------


def _evaluations():
    values = {"a": [0.5, 0.7, 0.6, 0.75], "b": [0.4, 0.3, None, 0.2]}  # None: site b failed round 3
    recs = []
    for site, maps in values.items():
        for rnd, m in enumerate(maps, start=1):
            metrics = {} if m is None else {"map50": m, "sensitivity": 1 - m}
            recs.append(RoundRecord(rnd, site, "evaluate", 10, "ok" if m is not None else "failed: x", metrics))
    return recs


def test_forgetting_is_the_best_earlier_value_minus_the_current_one():
    table = forgetting(_evaluations())
    a = {r["round"]: r for r in table["a"]}
    assert a[1]["map50"] is None and a[2]["map50"] == 0.0 and a[3]["map50"] == pytest.approx(0.1)
    assert a[4]["map50"] == 0.0
    assert a[4]["sensitivity"] == pytest.approx(0.25)  # best earlier 0.5 (round 1), now 0.25
    b = {r["round"]: r for r in table["b"]}
    assert 3 not in b and b[4]["map50"] == pytest.approx(0.2)
    s = forgetting_summary(table)
    assert s["a"]["map50"] == {"last": 0.0, "worst": pytest.approx(0.1), "worst_round": 3}
    assert s["b"]["last_round"] == 4 and s["b"]["map50"]["worst"] == pytest.approx(0.2)


def test_the_report_shows_forgetting(tmp_path):
    records = _evaluations()
    paths = write_report(records, tmp_path, "run", {})
    assert paths["forgetting_png"].stat().st_size > 10_000
    facts = json.loads(paths["facts_json"].read_text())
    assert facts["forgetting"]["sites"]["a"]["map50"]["worst_round"] == 3
    assert [r["round"] for r in facts["forgetting"]["per_round"]["b"]] == [1, 2, 4]
    md = paths["summary_md"].read_text()
    assert "## Forgetting" in md and "| a | 4 | 0.000 | 0.100 (round 3) |" in md
    assert report_facts([], "empty", {})["forgetting"] == {"per_round": {}, "sites": {}}
