"""A site's disagreement rate with its model, its own round-request settings, and what leaves the site: the flag and
the rate coarsened to 0.05, nothing below the site's minimum of reviewed images. The wire path (a real Flower query
in a simulation) is tested in test_schedule.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.continual.disagreement import (
    Disagreement,
    coarsened,
    disagreement,
    request_settings,
    requests_round,
    round_request_answer,
)
from client.feedback.store import Box, FeedbackStore
from common.errors import ConfigError
from common.protocol import DISAGREEMENT, NAME, ROUND_REQUEST
from server.requests import RoundRequests, SiteAnswer, coarse_rate


def _case(store: FeedbackStore, uid: str, version: str, verdict: str | None, boxes: int = 1) -> int:
    """One analysed image of `version`, reviewed with `verdict` (None: not reviewed)."""
    image_id = store.record_image(
        sop_uid=uid,
        image_ref=f"/keep/{uid}.png",
        model_version=version,
        probability=0.7,
        boxes=[Box(10, 10, 40, 40, score=0.7)] * boxes,
    )
    box = store.image(image_id).boxes[0].id if boxes else None
    if verdict in ("confirm", "reject"):
        store.add_verdict(image_id=image_id, reviewer="rev-a", kind=verdict, box_id=box)
    elif verdict == "move":
        store.add_verdict(image_id=image_id, reviewer="rev-a", kind="move", box_id=box, box=Box(12, 12, 44, 44))
    elif verdict == "add":
        store.add_verdict(image_id=image_id, reviewer="rev-a", kind="add", box=Box(100, 100, 140, 140))
    elif verdict in ("no_fracture", "note"):
        store.add_verdict(image_id=image_id, reviewer="rev-a", kind=verdict, note="seen" if verdict == "note" else None)
    return image_id


def fill_store(path: Path, version: str = "v0002", reviewed: int = 20, disagreeing: int = 8) -> FeedbackStore:
    """`reviewed` reviewed images of `version`, `disagreeing` of them rejected/moved/added/no-fracture, the rest
    confirmed; plus unreviewed images and images of an older version, which must not count."""
    store = FeedbackStore(path, class_names=["fracture"])
    kinds = ["reject", "move", "add", "no_fracture"]
    for i in range(40):  # the old model: every finding rejected
        _case(store, f"2.25.9{i}", "v0001", "reject")
    for i in range(reviewed):
        _case(store, f"2.25.{i}", version, kinds[i % 4] if i < disagreeing else "confirm")
    for i in range(5):
        _case(store, f"2.25.5{i}", version, None)
    return store


def test_rate_counts_reviewed_images_of_the_current_model_only(tmp_path):
    store = fill_store(tmp_path / "fb.db", reviewed=20, disagreeing=8)
    d = disagreement(store)  # current: the version of the most recent finding
    assert (d.model_version, d.reviewed, d.disagreeing) == ("v0002", 20, 8) and d.rate == pytest.approx(0.4)
    old = disagreement(store, "v0001")
    assert (old.reviewed, old.disagreeing) == (40, 40)
    # "no fracture" where the model drew nothing agrees with it; a note alone is a review without disagreement
    _case(store, "2.25.70", "v0002", "no_fracture", boxes=0)
    _case(store, "2.25.71", "v0002", "note")
    assert disagreement(store) == Disagreement("v0002", 22, 8)
    assert disagreement(FeedbackStore(tmp_path / "empty.db")) == Disagreement(None, 0, 0)


@pytest.mark.parametrize(
    "reviewed,disagreeing,expected",
    [(30, 11, 0.35), (40, 14, 0.35), (40, 16, 0.4), (29, 29, None), (30, 0, 0.0), (100, 1, 0.0), (100, 3, 0.05)],
)
def test_coarsened_rate(reviewed, disagreeing, expected):
    """11/30 = 0.367 and 14/40 = 0.35 both leave as 0.35; below 30 reviewed images nothing leaves."""
    assert coarsened(Disagreement("v1", reviewed, disagreeing), 30) == expected


def _site(tmp_path: Path, continual: str, name: str = "st-marys") -> dict[str, str]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    toml = tmp_path / "site.toml"
    toml.write_text(f"[privacy]\ntarget_epsilon = 8\n\n[continual]\nholdout_fraction = 0.2\n{continual}")
    return {"site-name": name, "data-dir": str(data), "site-config": str(toml)}


def test_settings_are_the_sites_own_and_bad_ones_are_named(tmp_path):
    db = tmp_path / "fb.db"
    FeedbackStore(db)
    node = _site(tmp_path, f'feedback_db = "{db}"\ndisagreement_threshold = 0.3\n')
    s = request_settings(node["site-config"])
    assert (s.feedback_db, s.threshold, s.min_reviewed) == (db, 0.3, 30)
    assert request_settings(_site(tmp_path, f'feedback_db = "{db}"\n')["site-config"]) is None  # takes no part
    for bad, key in [
        ("disagreement_threshold = 1.5", "disagreement_threshold"),
        ("disagreement_threshold = 0.3\ndisagreement_min_reviewed = 3", "disagreement_min_reviewed"),
        ('disagreement_threshold = 0.3\nfeedback_db = "fb.db"', "feedback_db"),
        (f'disagreement_threshold = 0.3\nfeedback_db = "{tmp_path / "none.db"}"', "does not exist"),
    ]:
        toml = _site(tmp_path, bad)["site-config"]
        with pytest.raises(ConfigError, match=key) as e:
            request_settings(toml)
        assert toml in str(e.value)


def test_a_site_requests_a_round_at_its_threshold_and_sends_only_the_coarse_rate(tmp_path):
    db = tmp_path / "fb.db"
    store = fill_store(db, reviewed=30, disagreeing=11)  # 0.367
    node = _site(tmp_path, f'feedback_db = "{db}"\ndisagreement_threshold = 0.35\n')
    assert round_request_answer(node) == {NAME: "st-marys", ROUND_REQUEST: True, DISAGREEMENT: 0.35}
    node = _site(tmp_path, f'feedback_db = "{db}"\ndisagreement_threshold = 0.4\n')
    assert round_request_answer(node) == {NAME: "st-marys", ROUND_REQUEST: False, DISAGREEMENT: 0.35}
    # too few reviewed images for the site's minimum: no request, whatever the rate, and no rate sent
    node = _site(tmp_path, f'feedback_db = "{db}"\ndisagreement_threshold = 0.1\ndisagreement_min_reviewed = 31\n')
    assert round_request_answer(node) == {NAME: "st-marys", ROUND_REQUEST: False}
    assert not requests_round(disagreement(store), request_settings(node["site-config"]))
    # a site without the settings, or with broken ones, answers "no request" and sends nothing else
    assert round_request_answer(_site(tmp_path, "")) == {NAME: "st-marys", ROUND_REQUEST: False}
    assert round_request_answer(_site(tmp_path, "disagreement_threshold = 2")) == {ROUND_REQUEST: False}


def test_server_keeps_rates_as_numbers_on_the_coarse_grid():
    assert [coarse_rate(v) for v in (0.35, 0.349999, 0.33, 1.0, -0.1, 1.2, "0.3", True, float("nan"))] == [
        0.35,
        0.35,
        0.35,
        1.0,
        None,
        None,
        None,
        None,
        None,
    ]
    requests = RoundRequests(4, [SiteAnswer("b", True, 0.4), SiteAnswer("a", False, 0.1), SiteAnswer("c", False, None)])
    assert requests.describe() == (
        "round requests: 3 of 4 sites answered, requesting: b; disagreement rates: a 0.10, b 0.40, c n/a "
        "(mean 0.25, max 0.40)"
    )
    asked = requests.summary()
    assert asked == {
        "asked": 4,
        "answered": 3,
        "requesting": ["b"],
        "disagreement": {"a": 0.1, "b": 0.4, "c": None},
        "disagreement_mean": 0.25,
        "disagreement_max": 0.4,
    }
