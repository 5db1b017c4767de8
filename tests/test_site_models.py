"""The site's model store: fetching a published version (registry folder, or delivered over Flower into the inbox),
hashes checked on the way; keeping the last round's global model; site.toml settings; signed approval records;
the `fracfl site` commands."""

from __future__ import annotations

import json
import shutil

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
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
from server.deliver import version_files
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
    from common.protocol import DELIVERED_FILES, DELIVERED_NAMES, DELIVERED_VERSION

    files = version_files(Registry(registry), version)
    record = ConfigRecord(
        {DELIVERED_VERSION: version, DELIVERED_NAMES: list(files), DELIVERED_FILES: list(files.values())}
    )
    return Message(RecordDict({DELIVERY: record}), dst_node_id=1, message_type=f"{MessageType.QUERY}.{DELIVER}")


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
    assert SiteReply.from_record(reply.content[SITE]).status == "not stored: node config has no models-dir"
    msg = _deliver_message(registry, "v0001")
    from common.protocol import DELIVERED_FILES, DELIVERED_NAMES

    record = msg.content[DELIVERY]
    blobs = list(record[DELIVERED_FILES])
    blobs[list(record[DELIVERED_NAMES]).index("model.safetensors")] += b"x"
    record[DELIVERED_FILES] = blobs
    reply = client_app(msg, _context(**{"models-dir": str(tmp_path / "fresh")}))
    assert SiteReply.from_record(reply.content[SITE]).status.startswith("refused: DataError")
    assert not (tmp_path / "fresh" / "inbox" / "v0001").exists()


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
