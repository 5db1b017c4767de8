"""The site's model store: fetching a published version (registry folder, or delivered over Flower into the inbox),
hashes checked on the way; keeping the last round's global model; site.toml settings; signed approval records;
the `fracfl site` commands."""

from __future__ import annotations

import json
import shutil

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from models_support import publish

from client.client_app import app as client_app
from client.models.approval import check_approval, sign_approval
from client.models.fetch import fetch_from_inbox, fetch_from_registry, fetch_received, keep_received
from client.models.settings import load_model_settings
from client.models.store import ModelStore
from common.cli import main
from common.errors import ConfigError, DataError
from common.nn.weights import read_weights
from common.privacy import signing
from common.protocol import DELIVER, DELIVERY, SITE, SiteReply
from server.deliver import delivery, version_files
from server.registry import Registry


@pytest.fixture
def registry(tmp_path, tiny_weights):
    """A registry with one version that also lists an fp32 TFLite build (its bytes stand in for a real export)."""
    root = tmp_path / "registry"
    version = publish(root, tiny_weights)
    export = root / version / "exports" / "model_fp32.tflite"
    export.parent.mkdir()
    export.write_bytes(b"TFL3 stand-in")
    from client.models.store import sha256_file

    entry = {"variant": "fp32", "file": "exports/model_fp32.tflite", "status": "ok", "sha256": sha256_file(export)}
    Registry(root).update_card(version, "exports", [entry])
    return root


def test_fetch_from_a_registry_folder_checks_every_file(registry, tmp_path):
    store = ModelStore(tmp_path / "models")
    folder = fetch_from_registry(store, registry, "latest")
    assert folder.name == "v0001" and (folder / "exports" / "model_fp32.tflite").read_bytes() == b"TFL3 stand-in"
    assert store.check("v0001") == [] and store.versions() == ["v0001"]
    assert fetch_from_registry(store, registry, "1") == folder  # again: the intact copy is kept

    damaged = ModelStore(tmp_path / "other")
    (registry / "v0001" / "exports" / "model_fp32.tflite").write_bytes(b"changed")
    with pytest.raises(DataError, match=r"v0001/exports/model_fp32.tflite: sha256 does not match"):
        fetch_from_registry(damaged, registry, "v0001")
    assert damaged.versions() == []  # nothing half-installed
    with pytest.raises(DataError, match="no version v0009"):
        fetch_from_registry(damaged, registry, "v0009")


@pytest.fixture
def server_side():
    """Messages are made where a task runs (Flower's TaskIdentity names it): here, as the ServerApp would."""
    from flwr.supercore.task_identity import TaskIdentity

    before = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = before


def _deliver_message(registry, version: str) -> Message:
    """What server/deliver.py sends to each node."""
    return delivery(version, version_files(Registry(registry), version), 1)


def _context(**node_config) -> Context:
    return Context(
        run_id=1, node_id=1, node_config={"site-name": "st-marys", **node_config}, state=RecordDict(), run_config={}
    )


def test_a_delivered_version_lands_in_the_inbox_and_installs(registry, tmp_path, server_side):
    models = tmp_path / "models"
    reply = client_app(_deliver_message(registry, "v0001"), _context(**{"models-dir": str(models)}))
    assert SiteReply.from_record(reply.content[SITE]) == SiteReply("st-marys", "stored")
    store = ModelStore(models)
    assert (store.inbox / "v0001" / "model.safetensors").is_file() and store.versions() == []
    fetch_from_inbox(store, "v0001")
    assert store.check("v0001") == []

    # A node without a model store says so; a damaged delivery is refused and nothing is kept.
    reply = client_app(_deliver_message(registry, "v0001"), _context())
    assert SiteReply.from_record(reply.content[SITE]).status == "not stored: no model store (models-dir)"
    msg = _deliver_message(registry, "v0001")
    from common.protocol import DELIVERED_FILES, DELIVERED_NAMES

    record = msg.content[DELIVERY]
    blobs = list(record[DELIVERED_FILES])
    blobs[list(record[DELIVERED_NAMES]).index("model.safetensors")] += b"x"
    record[DELIVERED_FILES] = blobs
    reply = client_app(msg, _context(**{"models-dir": str(tmp_path / "fresh")}))
    assert SiteReply.from_record(reply.content[SITE]).status.startswith("refused: DataError")
    assert not (tmp_path / "fresh" / "inbox" / "v0001").exists()


def test_requests_are_recorded_listed_and_withdrawn(tmp_path, capsys):
    models = ["--models-dir", str(tmp_path / "models")]
    assert main(["site", "request", "7", "v1", *models]) == 0
    assert "requested v0001 (since " in capsys.readouterr().out
    for wrong, why in [("received", "only published registry versions"), ("../v1", "not a model version")]:
        assert main(["site", "request", wrong, *models]) == 2
        assert why in capsys.readouterr().err
    assert main(["site", "request", *[f"v{n}" for n in range(10, 17)], *models]) == 2
    assert "9 versions requested; a run delivers at most 8" in capsys.readouterr().err
    assert main(["site", "request", "--cancel", "v9", *models]) == 2
    assert "not requested: v0009" in capsys.readouterr().err
    assert main(["site", "request", "--cancel", "v7", *models]) == 0 and main(["site", "request", *models]) == 0
    assert capsys.readouterr().out.count("requested v0001") == 2
    assert main(["site", "status", "--json", *models]) == 0
    info = json.loads(capsys.readouterr().out)
    assert list(info["requested"]) == ["v0001"] and info["delivered"] == []
    assert main(["site", "fetch", "v0001", *models]) == 2  # not delivered yet: says how to ask for it
    assert "no delivered v0001 here (delivered: none); `fracfl site request v0001`" in capsys.readouterr().err


def _answered_by(grid, handlers):
    """Each node's messages taken from the grid's link state and answered by its handler, as a SuperNode runs its
    ClientApp: an exception becomes an error reply, as Flower's runtimes send it."""
    import threading
    import uuid

    from flwr.app import Error

    stop = threading.Event()

    def serve():
        while not stop.is_set():
            for node, handle in handlers.items():
                for msg in grid.state.get_message_ins(node_id=node, limit=None):
                    try:
                        reply = handle(msg)
                    except Exception as e:
                        reply = Message(Error(code=0, reason=repr(e)), reply_to=msg)
                    reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
                    grid.state.store_message_res(reply)
            stop.wait(0.02)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return stop, thread


def test_after_a_run_each_site_gets_what_it_requested_through_flowers_link_state(
    registry, tmp_path, tiny_weights, server_side
):
    """Four SuperNodes behind Flower's own link state: st_marys asks for v0001, the damaged v0002 and an unknown
    v0009; county_general has no model store; a rogue node answers with names that are not versions; an older
    ClientApp has no version-request query. Every answer but the rogue's comes from the real ClientApp."""
    from flwr.clientapp import ClientApp
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity
    from tests_support import link_grid

    from client.client_app import deliver as deliver_handler
    from client.models.requested import pending, request
    from common.protocol import ASK_VERSIONS, NAME, REQUESTED
    from server.config import FederationConfig
    from server.deliver import DAMAGED, UNKNOWN, deliver_after_run
    from server.identity import SiteNames

    damaged = publish(registry, tiny_weights, rnd=2)
    (registry / damaged / "model.safetensors").write_bytes(b"changed after publishing")
    grid, nodes = link_grid(["st_marys", "county_general", "rogue", "old"])
    TaskIdentity.run_id, TaskIdentity.node_id = grid.run.run_id, SUPERLINK_NODE_ID  # as the ServerApp's messages
    marys = ModelStore(tmp_path / "marys")
    request(marys, ["v0001", damaged, "v0009"])
    older = ClientApp()
    older.query(DELIVER)(deliver_handler)

    def rogue(msg, context):
        if msg.metadata.message_type.endswith(ASK_VERSIONS):
            names = ["../../etc/passwd", "v1", "v0001 ", "v0001", "v0001", "latest", "v00001"]
            return Message(RecordDict({SITE: ConfigRecord({NAME: "rogue", REQUESTED: names})}), reply_to=msg)
        return client_app(msg, context)

    configs = [
        (client_app, {"models-dir": str(marys.root)}),
        (client_app, {}),
        (rogue, {"models-dir": str(tmp_path / "rogue")}),
        (older, {"models-dir": str(tmp_path / "old")}),
    ]
    handlers = {}
    for node, name, (app, config) in zip(nodes, ["st_marys", "county_general", "rogue", "old"], configs):
        context = Context(grid.run.run_id, node, {"site-name": name, **config}, RecordDict(), {})
        handlers[node] = lambda msg, app=app, context=context: app(msg, context)
    stop, thread = _answered_by(grid, handlers)
    try:
        fed = FederationConfig(answer_requests=True, round_timeout=30)
        asked = deliver_after_run(grid, Registry(registry), fed, None, SiteNames(grid))
        pushed = deliver_after_run(grid, Registry(registry), FederationConfig(deliver=True), "v0001", SiteNames(grid))
    finally:
        stop.set()
        thread.join()
    assert asked == {
        "st_marys": {"v0001": "stored", damaged: DAMAGED, "v0009": UNKNOWN},
        "rogue": {"v0001": "stored"},  # only its one well-formed name
    }
    assert pending(marys).keys() == {damaged, "v0009"}  # v0001 arrived, checked: its request is satisfied
    assert marys.delivered() == ["v0001"] and fetch_from_inbox(marys, "v0001").name == "v0001"
    assert pushed == {  # with federation.deliver every node gets the latest; st_marys still asks for the others
        "st_marys": {"v0001": "stored", damaged: DAMAGED, "v0009": UNKNOWN},
        "county_general": {"v0001": "not stored: no model store (models-dir)"},
        "rogue": {"v0001": "stored"},
        "old": {"v0001": "stored"},
    }
    off = FederationConfig(answer_requests=False)
    assert deliver_after_run(grid, Registry(registry), off, "v0001", SiteNames(grid)) is None  # nothing is sent


@pytest.mark.slow
def test_a_requested_version_arrives_through_a_simulated_federation(tmp_path):
    """The whole round trip on Flower's simulation engine: site_0 asks for v0001 (and v0005, which never exists),
    a one-round run publishes v0001, and afterwards site_0's inbox holds it, checked, and installs."""
    from tests_support import toy_dataset

    from client.models.requested import pending
    from server.deliver import UNKNOWN

    models, run = tmp_path / "site_0-models", tmp_path / "run"
    assert main(["site", "request", "v0001", "v0005", "--models-dir", str(models)]) == 0
    overrides = [
        *("model=yolov7_nano", "partition=iid", "federation.sites=2", "federation.min_sites=2", "federation.rounds=1"),
        *("tracking=disabled", "train.imgsz=64", "train.batch_size=8", "train.local_epochs=1", "augment=none"),
        *("export.enabled=false", "progress=false", "federation.deliver=true"),
    ]
    toy = toy_dataset(tmp_path / "toy", n=16, positives=12)
    sim = [f"partition.source={toy}", f"+site_models.site_0={models}", f"run_dir={run}"]
    assert main(["simulate", *overrides, *sim]) == 0
    outcome = json.loads((run / "outcome.json").read_text())
    assert outcome["delivered"] == {
        "site_0": {"v0001": "stored", "v0005": UNKNOWN},  # pushed and requested: sent once
        "site_1": {"v0001": "not stored: no model store (models-dir)"},
    }
    store = ModelStore(models)
    assert list(pending(store)) == ["v0005"] and store.delivered() == ["v0001"]
    assert main(["site", "fetch", "v0001", "--models-dir", str(models)]) == 0
    assert store.check("v0001") == [] and store.card("v0001")["run_id"] == outcome["run_id"]
    assert main(["site", "fetch", "received", "--models-dir", str(models)]) == 0  # the round's global model, kept


def test_the_last_rounds_global_model_is_kept_and_installable(tmp_path, tiny_weights):
    tensors, spec, _ = read_weights(tiny_weights)
    store = ModelStore(tmp_path / "models")
    keep_received(store, {k: v.numpy() for k, v in tensors.items()}, spec, 128, "run-7:r0003")
    folder = fetch_received(store)
    assert folder.name == "run-7-r0003" and store.check("run-7-r0003") == []
    from client.inference.version import model_version

    assert model_version(folder) == "run-7:r0003"  # results made by it name the round's model
    (store.received / "model.safetensors").write_bytes(b"not it")
    with pytest.raises(DataError, match="not the model that was received"):
        fetch_received(store)


def test_site_toml_model_settings(tmp_path):
    toml = tmp_path / "site.toml"
    toml.write_text(
        f'[privacy]\nledger_dir = "{tmp_path / "privacy"}"\n[models]\ndir = "{tmp_path / "m"}"\n'
        "[gate]\nsensitivity_margin = 0.05\nseed = 3\nmax_fp_per_image = 2\n"
    )
    s = load_model_settings(toml)
    assert s.dir == tmp_path / "m" and s.key == tmp_path / "privacy" / "ledger-key.pem"
    assert (s.gate.sensitivity_margin, s.gate.seed, s.gate.max_fp_per_image, s.gate.unit) == (0.05, 3, 2.0, "patient")
    toml.write_text("[gate]\nmargin = 0.05\n")
    with pytest.raises(ConfigError, match=r"site.toml: \[gate\]: unknown key 'margin'"):
        load_model_settings(toml)
    toml.write_text('[gate]\nunit = "study"\n')
    with pytest.raises(ConfigError, match=r"\[gate\] unit: 'study'"):
        load_model_settings(toml)
    toml.write_text('[models]\ndir = "relative/m"\n')
    with pytest.raises(ConfigError, match=r"\[models\] dir must be an absolute path"):
        load_model_settings(toml)


def test_approval_records_are_signed_and_checked(registry, tmp_path):
    store = ModelStore(tmp_path / "models")
    fetch_from_registry(store, registry, "v0001")
    key = signing.load_or_create(tmp_path / "k" / "ledger-key.pem")
    mine = signing.public_hex(key)
    record = sign_approval(store, "v0001", "Dr  Who", {"sensitivity": 0.9}, "test", key)
    assert record["approved_by"] == "Dr Who" and check_approval(store, record, mine) == []
    assert check_approval(store, None, mine)[0].startswith("no approval record")
    other = signing.load_or_create(tmp_path / "k2" / "ledger-key.pem")
    assert "not signed with this site's key" in check_approval(store, record, signing.public_hex(other))[0]
    changed = {**record, "figures": {"sensitivity": 0.99}}
    assert "changed after it was signed" in check_approval(store, changed, mine)[0]
    weights = store.folder("v0001") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    problems = check_approval(store, record, mine)
    assert any("sha256 does not match" in p for p in problems) and any(
        "not the weights that were approved" in p for p in problems
    )


def test_site_commands(registry, tmp_path, capsys):
    key = tmp_path / "privacy" / "ledger-key.pem"
    signing.load_or_create(key)
    toml = tmp_path / "site.toml"
    toml.write_text(f'[privacy]\nledger_dir = "{key.parent}"\n[models]\ndir = "{tmp_path / "models"}"\n')
    site = ["--site-config", str(toml)]
    assert main(["site", "fetch", "v0001", "--registry", str(registry), *site]) == 0
    assert main(["site", "promote", "v0001", "--approver", "dr-a", "--force", *site]) == 2  # no reason
    assert "--force needs --reason" in capsys.readouterr().err
    assert main(["site", "promote", "v0001", "--approver", "dr-a", "--force", "--reason", "first model", *site]) == 0
    pub = tmp_path / "site-key.pub.pem"
    assert main(["site", "status", *site, "--write-public-key", str(pub)]) == 0
    out = capsys.readouterr().out
    assert "clinical model: v0001, approved by dr-a" in out and "signature and files verified" in out
    assert "promote v0001 accepted by dr-a" in out
    assert main(["site", "rollback", "--approver", "dr-a", *site]) == 2
    assert "first clinical model" in capsys.readouterr().err
    assert main(["site", "status", "--json", *site]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["current"]["version"] == "v0001" and info["approval_problems"] == []
    shutil.rmtree(tmp_path / "models" / "versions" / "v0001" / "exports")
    assert main(["site", "status", *site]) == 0
    assert "APPROVAL DOES NOT HOLD" in capsys.readouterr().out
