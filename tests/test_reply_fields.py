"""What crosses the network from a site, and under which name it is recorded (issue 18.3).

The ClientApp's real handlers answer Flower's own Message objects: a reply carries only the fields common/protocol.py
allows, counts rounded and a small validation split's figures withheld. The server records a reply under the name it
bound to the sending node (the name the coordinator registered with the node's key, in Flower's own link state),
never under the name the reply gives.
"""

from __future__ import annotations

import json
from itertools import chain
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from tests_support import GROUP_NANO, NANO, link_grid, toy_dataset

from client.client_app import app
from client.models.requested import request as request_versions
from client.models.store import ModelStore
from client.site_config import write_site_config
from common.config import ImbalanceConfig, LocalTrainConfig, PrivacyConfig
from common.nn.model import build_model
from common.protocol import (
    ARRAYS,
    ASK_ROUND,
    ASK_VERSIONS,
    CONFIG,
    EVALUATE,
    JOB,
    METRICS,
    N_POSITIVE,
    NUM_EXAMPLES,
    PRIVACY_FIELDS,
    QUERY_FIELDS,
    REAL_SITE,
    REPLY_METRICS,
    REPORTED,
    REQUESTED,
    ROUND_REQUEST,
    ROUND_REQUEST_FIELDS,
    SERVER_ROUND,
    SIMULATION_METRICS,
    SITE,
    SITE_FIELDS,
    SITES_MANIFEST,
    TRAIN,
    UNDEFINED,
    VERSION_REQUEST_FIELDS,
    SiteJob,
    SiteReply,
    coarse_count,
    coarse_sample_rate,
)
from common.records import to_record
from server.identity import SiteNames
from server.loop import _read

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Messages are stamped with the run of the process that makes them, as Flower's runtimes set it."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A toy site (6 training, 2 validation images, both with a fracture) and an untrained tiny model."""
    data = toy_dataset(tmp_path_factory.mktemp("site"), n=8, positives=6)
    state = {k: v.numpy() for k, v in build_model(NANO).state_dict().items()}
    return data, state


def _job(min_val_images: int = 0) -> SiteJob:
    train = LocalTrainConfig(local_epochs=1, max_steps=1, batch_size=4, imgsz=64)
    return SiteJob(model=NANO.to_dict(), train=train, min_val_images=min_val_images)


def _ask(phase: str, state, job: SiteJob, node: int = 7, manifest: str | None = None) -> Message:
    config = {JOB: job.to_json(), SERVER_ROUND: 1} | ({SITES_MANIFEST: manifest} if manifest else {})
    content = RecordDict({ARRAYS: to_record(state), CONFIG: ConfigRecord(config)})
    return Message(content, dst_node_id=node, message_type=phase)


def _reply(msg: Message, node_config: dict, node: int = 7) -> Message:
    context = Context(run_id=1, node_id=node, node_config=node_config, state=RecordDict(), run_config={})
    return app(msg, context)


def _own_file(folder: Path, modes: tuple[str, ...] = ("dp_sgd",)) -> str:
    """The site's site.toml as `fracfl site init` writes it, listing `modes`."""
    return str(write_site_config(folder, modes=modes))


def test_a_real_site_trains_only_under_its_own_file_and_modes(setup, tmp_path):
    """Whatever the run asks, a real site without its site.toml does not train, and one whose file lists DP-SGD only
    refuses a run without noise: the reply carries the refusal and no weights."""
    data, state = setup
    for node, why in [
        (
            {"site-name": "st_marys", "data-dir": str(data)},
            "refused: this site has no privacy configuration (node config site-config); it does not train "
            "until its governance sets one",
        ),
        (
            {"site-name": "st_marys", "data-dir": str(data), "site-config": _own_file(tmp_path / "own")},
            "refused: the run asks for privacy mode 'none'; this site trains only under dp_sgd",
        ),
    ]:
        refused = _reply(_ask(TRAIN, state, _job()), node)  # the job's privacy mode is none
        assert dict(refused.content[SITE]) == {"name": "st_marys", "status": why}
        assert ARRAYS not in refused.content and dict(refused.content[METRICS]) == {NUM_EXAMPLES: 0.0}


def test_a_real_sites_dp_sgd_reply_holds_the_privacy_report_and_nothing_else(setup, tmp_path):
    data, _ = setup
    state = {k: v.numpy() for k, v in build_model(GROUP_NANO).state_dict().items()}
    site = {"site-name": "st_marys", "data-dir": str(data), "site-config": _own_file(tmp_path / "own")}
    train = LocalTrainConfig(
        local_epochs=1, max_steps=1, batch_size=4, imgsz=64, imbalance=ImbalanceConfig(mode="constant")
    )
    job = SiteJob(model=GROUP_NANO.to_dict(), train=train, privacy=PrivacyConfig(mode="dp_sgd"))
    trained = _reply(_ask(TRAIN, state, job), site)
    assert set(trained.content) == {ARRAYS, METRICS, SITE}
    assert set(trained.content[METRICS]) == {NUM_EXAMPLES, "loss"}
    record = dict(trained.content[SITE])
    assert set(record) == {"name", "status", "privacy"} and record["status"] == "ok"
    report = json.loads(record["privacy"])
    assert set(report) <= set(PRIVACY_FIELDS) and {"epsilon", "ledger_head", "noise"} <= set(report)
    assert report["sample_rate"] == coarse_sample_rate(4 / 6) == 0.67  # batch 4 of 6 images: two figures, not 0.6667
    assert "images" not in report and report["noise"] == "secure"
    assert str(data) not in trained.content[SITE]["privacy"] and str(tmp_path) not in record["privacy"]


def test_a_real_sites_replies_hold_only_the_allowed_fields_counts_rounded(setup, tmp_path):
    data, state = setup
    site = {"site-name": "st_marys", "data-dir": str(data), "site-config": _own_file(tmp_path / "own", ("none",))}

    trained = _reply(_ask(TRAIN, state, _job()), site)
    assert set(trained.content[METRICS]) == {NUM_EXAMPLES, "loss"}  # no speed, steps or loss components
    assert trained.content[METRICS][NUM_EXAMPLES] == 10.0  # 6 training images, sent as 10
    assert dict(trained.content[SITE]) == {"name": "st_marys", "status": "ok"}  # and with DP-SGD, "privacy"
    assert set(trained.content) == {ARRAYS, METRICS, SITE}

    # 2 validation images: below the site's default minimum (20), every figure and the fracture count are withheld.
    small = _reply(_ask(EVALUATE, state, _job()), site).content[METRICS]
    assert set(small) == {NUM_EXAMPLES, N_POSITIVE, *REPORTED}
    assert all(small[k] == UNDEFINED for k in (*REPORTED, N_POSITIVE)) and small[NUM_EXAMPLES] == 10.0

    # A site that allows 2 images reports, its fracture count rounded; a run may raise the minimum, never lower it.
    allowing = {**site, "min-val-images": 2}
    shown = _reply(_ask(EVALUATE, state, _job()), allowing).content[METRICS]
    assert shown[N_POSITIVE] == 10.0 and shown["sensitivity"] != UNDEFINED
    raised = _reply(_ask(EVALUATE, state, _job(min_val_images=3)), allowing).content[METRICS]
    assert raised["sensitivity"] == UNDEFINED and raised[N_POSITIVE] == UNDEFINED

    answer = _reply(
        Message(RecordDict({CONFIG: ConfigRecord({})}), dst_node_id=7, message_type=MessageType.QUERY), site
    )
    assert dict(answer.content[SITE]) == {REAL_SITE: True}  # no name: the server names nodes itself

    # A site without a [continual] feedback store answers a round-request query with its name and "no" only.
    asked = Message(
        RecordDict({CONFIG: ConfigRecord({})}), dst_node_id=7, message_type=f"{MessageType.QUERY}.{ASK_ROUND}"
    )
    request = dict(_reply(asked, site).content[SITE])
    assert set(request) <= set(ROUND_REQUEST_FIELDS) and request[ROUND_REQUEST] is False

    # A site with a model store answers a version-request query with its name and requested version names only.
    models = tmp_path / "models"
    request_versions(ModelStore(models), ["v3"])
    kind = f"{MessageType.QUERY}.{ASK_VERSIONS}"
    wanted = _reply(Message(RecordDict({}), dst_node_id=7, message_type=kind), {**site, "models-dir": str(models)})
    assert dict(wanted.content[SITE]) == {"name": "st_marys", REQUESTED: ["v0003"]}
    assert set(wanted.content[SITE]) <= set(VERSION_REQUEST_FIELDS)


def test_a_simulated_site_also_sends_the_diagnostics_benchmarks_read(setup, tmp_path):
    data, state = setup
    manifest = tmp_path / "sites.json"
    manifest.write_text(json.dumps([{"name": "site_0", "data": str(data)}]))
    node = {"partition-id": 0, "num-partitions": 1}
    trained = _reply(_ask(TRAIN, state, _job(), manifest=str(manifest)), node).content[METRICS]
    assert set(trained) == {NUM_EXAMPLES, "loss", *SIMULATION_METRICS}
    shown = _reply(_ask(EVALUATE, state, _job(), manifest=str(manifest)), node).content[METRICS]
    assert shown["sensitivity"] != UNDEFINED  # the coordinator's own data: no minimum unless the run sets one


def test_counts_are_rounded_and_the_privacy_report_keeps_only_its_fields():
    assert [coarse_count(n) for n in (0, 1, 6, 14, 15, 24, 1234)] == [0, 10, 10, 10, 20, 20, 1230]
    assert coarse_count(UNDEFINED) == UNDEFINED
    report = {"epsilon": 2.5, "patients": 4, "images": 12, "ledger_dir": "/data/st_marys", "noise": "secure"}
    sent = json.loads(SiteReply("st_marys", "ok", report).to_record()["privacy"])
    assert sent == {"epsilon": 2.5, "patients": 10.0, "noise": "secure"}  # no image count, no path
    got = SiteReply.from_record({"name": "x", "privacy": json.dumps({**report, "patients": "4"})})
    assert got.privacy == {"epsilon": 2.5, "noise": "secure"}  # what a site sent outside the protocol is dropped


def test_a_reply_is_recorded_under_its_nodes_registered_name(setup):
    data, state = setup
    grid, (marys, county, unnamed) = link_grid(["st_marys", "county_general", None])
    names = SiteNames(grid)
    site = lambda name: {"site-name": name, "data-dir": str(data), "min-val-images": 0}  # noqa: E731
    job = _job()

    honest = _read(_reply(_ask(EVALUATE, state, job, county), site("county_general"), county), EVALUATE, names)
    assert (honest.site, honest.status, honest.examples) == ("county_general", "ok", 10)

    # st_marys' node calls itself county_general: recorded as st_marys, flagged and its figures dropped.
    lying = _read(_reply(_ask(EVALUATE, state, job, marys), site("county_general"), marys), EVALUATE, names)
    assert lying.site == "st_marys" and lying.examples == 0 and lying.metrics == {}
    assert lying.status == "rejected: the reply gives 'county_general', but the node is st_marys"

    # A node that dies answers with an error and no name: it is still named; so is one registered without a name.
    died = _read(
        Message(Error(code=0, reason="ClientApp crashed"), reply_to=_ask(TRAIN, state, job, county)), TRAIN, names
    )
    assert (died.site, died.status) == ("county_general", "failed: ClientApp crashed")
    assert names.of(unnamed) == f"node-{unnamed}"

    # Fields outside the protocol do not reach the records even when a site sends them.
    extra = _reply(_ask(EVALUATE, state, job, county), site("county_general"), county)
    extra.content[METRICS] = MetricRecord({**extra.content[METRICS], "images_per_s": 5.0, "n-patients": 3.0})
    assert set(_read(extra, EVALUATE, names).metrics) == {N_POSITIVE, *REPORTED}


def test_a_simulated_node_is_bound_to_the_first_manifest_name_it_gives(setup, tmp_path):
    data, state = setup
    grid, (first, second) = link_grid([None, None])
    manifest = tmp_path / "sites.json"
    manifest.write_text(json.dumps([{"name": "site_0", "data": str(data)}, {"name": "site_1", "data": str(data)}]))
    names = SiteNames(grid, str(manifest))
    assert names.check(first, "site_0") is None and names.of(first) == "site_0"
    assert names.check(second, "site_0") == f"the reply gives 'site_0', but the node is node-{second}"
    assert names.check(second, "elsewhere") is not None  # not a site of this simulation
    assert names.check(second, "site_1") is None and names.check(first, "site_1") is not None


def test_the_governance_guide_lists_every_field_a_reply_may_carry():
    text = (REPO / "docs" / "governance.md").read_text(encoding="utf-8")
    fields = {
        *chain(*REPLY_METRICS.values()),
        *SIMULATION_METRICS,
        *SITE_FIELDS,
        *PRIVACY_FIELDS,
        *QUERY_FIELDS,
        *ROUND_REQUEST_FIELDS,
        *VERSION_REQUEST_FIELDS,
    }
    assert not [f for f in sorted(fields) if f"`{f}`" not in text]
