"""Model registry: versions, parents, the latest pointer, integrity, crash safety, cards and the CLI."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch
from tests_support import NANO as SPEC

from common.errors import DataError, FracflError
from common.nn.model import build_model
from server.registry import CardError, Registry
from server.registry import store as store_mod


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(SPEC)
    with torch.no_grad():  # weights that differ from a fresh init, so a round trip proves something
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return m


def make_card(run_id="run-a", rnd=1, **over):
    card = {
        "run_id": run_id,
        "round": rnd,
        "strategy": {"name": "FedAvg", "params": {"fraction_fit": 1.0, "min_fit_clients": 2}},
        "config_hash": "3f2a9c",
        "sites": [
            {
                "name": "general_hospital",
                "examples": 120,
                "status": "trained",
                "metrics": {"loss": 1.25, "map50": 0.31},
            },
            {
                "name": "rural_clinic",
                "examples": 40,
                "status": "rejected: update norm 12.3 exceeds bound 5",
                "metrics": {},
            },
        ],
        "metrics": {
            "pooled": {"map50": 0.41, "map50_95": 0.2, "sensitivity": 0.9, "specificity": 0.8, "roc_auc": 0.85},
            "per_site": {"general_hospital": {"map50": 0.44, "sensitivity": 0.92}},
        },
        "privacy": None,
        "exports": [],
    }
    card.update(over)
    return card


@pytest.fixture
def reg(tmp_path, model):
    r = Registry(tmp_path / "registry")
    r.publish(model, SPEC, make_card("run-a", 1), {"imgsz": 320})
    r.publish(model, SPEC, make_card("run-a", 2))
    r.publish(model, SPEC, make_card("run-b", 1))
    return r


def test_versions_parents_and_latest(reg):
    assert reg.versions() == ["v0001", "v0002", "v0003"]
    listed = reg.list()
    assert [p.version for p in listed] == ["v0001", "v0002", "v0003"]
    assert [(p.run_id, p.round, p.card["parent"]) for p in listed] == [
        ("run-a", 1, None),
        ("run-a", 2, "v0001"),
        ("run-b", 1, None),
    ]
    assert json.loads((reg.root / "latest.json").read_text()) == {"version": "v0003", "run_id": "run-b", "round": 1}
    assert reg.latest().version == "v0003"
    assert reg.latest("run-a").version == "v0002"
    assert reg.latest("run-z") is None
    assert reg.get(2).version == reg.get("v2").version == "v0002" and reg.get("latest").version == "v0003"
    for p in listed:
        assert {f.name for f in p.path.iterdir()} == {"model.safetensors", "card.json", "card.md"}
        assert p.card["version"] == p.version and p.card["created"].endswith("Z")
    assert reg.check_pointer() == []


def test_weights_round_trip_bit_exact(reg, model):
    loaded, spec, card = reg.load("v0001")
    assert spec == SPEC and card["version"] == "v0001"
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k].float() if ours[k].is_floating_point() else ours[k], theirs[k]), k
    from common.nn.weights import read_weights

    assert read_weights(reg.get(1).weights)[2] == {
        "registry_version": "v0001",
        "run_id": "run-a",
        "round": 1,
        "imgsz": 320,
    }


def test_verify_catches_changed_and_missing_files(reg):
    assert reg.verify("v0002") == [] and reg.verify("latest") == []
    w = reg.get("v0002").weights
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    problems = reg.verify("v0002")
    assert len(problems) == 1 and "model.safetensors" in problems[0] and "sha256" in problems[0]
    with pytest.raises(DataError, match="does not match"):
        reg.load("v0002")
    (reg.root / "v0001" / "card.md").unlink()
    assert reg.verify("v0001") == ["v0001/card.md: missing"]


def test_crash_mid_publish_leaves_nothing_visible(reg, model, monkeypatch):
    pointer = (reg.root / "latest.json").read_bytes()

    def dies(path, *args):  # the weights file half written
        path.write_bytes(b"\0" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(store_mod, "write_state", dies)
    with pytest.raises(OSError, match="disk full"):
        reg.publish(model, SPEC, make_card("run-a", 3))
    monkeypatch.undo()

    real_rename = os.rename

    def rename_dies(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(store_mod.os, "rename", rename_dies)
    with pytest.raises(OSError, match="power cut"):
        reg.publish(model, SPEC, make_card("run-a", 3))
    monkeypatch.setattr(store_mod.os, "rename", real_rename)

    assert reg.versions() == ["v0001", "v0002", "v0003"]
    assert (reg.root / "latest.json").read_bytes() == pointer
    assert not [p for p in reg.root.iterdir() if p.name.startswith(".publishing-")]

    # A killed process leaves its temp folder behind: invisible to readers, removed by the next publish.
    leftover = reg.root / ".publishing-v0004-99999"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"partial")
    assert reg.versions() == ["v0001", "v0002", "v0003"] and reg.latest().version == "v0003"
    p = reg.publish(model, SPEC, make_card("run-a", 3))
    assert p.version == "v0004" and p.card["parent"] == "v0002" and not leftover.exists()


def test_update_card_adds_section_and_keeps_hash(reg):
    before = reg.get("v0002")
    weights = before.weights.read_bytes()
    export = {
        "variant": "int8",
        "file": "exports/model_int8.tflite",
        "status": "failed: converter crashed",
        "seconds": 3.5,
    }
    after = reg.update_card("v0002", "exports", [export])
    assert after.card["exports"] == [export] and after.card["updated"]
    assert after.card["hashes"] == before.card["hashes"] and before.weights.read_bytes() == weights
    assert reg.get("v0002").card["exports"] == [export]
    md = (before.path / "card.md").read_text()
    assert "model_int8.tflite" in md and "None yet" not in md
    reg.update_card("v0002", "privacy", {"mechanism": "DP-FedAvg", "epsilon": 3.2, "delta": 1e-5})
    assert "Not recorded for this run" not in (before.path / "card.md").read_text()
    assert reg.verify("v0002") == []
    for section in ("hashes", "run_id", "version"):
        with pytest.raises(CardError, match=section):
            reg.update_card("v0002", section, "x")
    for bad, field in [
        ({**export, "file": "../v0001/model.safetensors"}, "file"),
        ({**export, "status": "ok"}, "sha256"),
        ({**export, "size_mb": 1}, "unknown field"),
        ({**export, "status": "done"}, "status"),
    ]:
        with pytest.raises(CardError, match=rf"exports\[0\].*{field}|{field}.*exports\[0\]"):
            reg.update_card("v0002", "exports", [bad])


def test_card_md_is_readable_and_honest(reg):
    md = (reg.get("v0002").path / "card.md").read_text()
    assert md.startswith("# Fracture detection model v0002 (round 2)")
    assert "YOLOv7-tiny backbone and neck with Ultralytics' anchor-free Detect head" in md
    assert "| Site | Examples | Status | mAP@0.5 | Loss |" in md
    assert "| general_hospital | 120 | trained | 0.310 | 1.250 |" in md
    assert "| rural_clinic | 40 | rejected: update norm 12.3 exceeds bound 5 |" in md
    assert "| Sensitivity | 0.900 |" in md
    assert "## Privacy\n\nNot recorded for this run." in md
    assert "## Edge exports\n\nNone yet." in md
    assert reg.get("v0002").card["hashes"]["model.safetensors"] in md
    card = reg.get("v0002").card
    assert card["model"]["description"] == "YOLOv7-tiny backbone and neck with Ultralytics' anchor-free Detect head"
    assert card["model"]["width"] == 0.125 and card["model"]["parameters"] > 0


def test_card_keeps_only_documented_fields_and_numbers(tmp_path, model):
    r = Registry(tmp_path / "r")
    pooled = {
        "map50": 0.4,
        "roc_auc": float("nan"),
        "n_images": 32,
        "false_negatives": [{"image": "site/img_001.png"}],
        "curves": {"pr": [0.1, 0.2]},
        "note": "x",
    }
    p = r.publish(model, SPEC, make_card(metrics={"pooled": pooled, "per_site": {}}))
    assert p.card["metrics"]["pooled"] == {"map50": 0.4, "roc_auc": None, "n_images": 32}
    assert "img_001" not in (p.path / "card.json").read_text() + (p.path / "card.md").read_text()
    bad_cards = [
        make_card(patients=["Jane Doe"]),
        make_card(metrics={"pooled": {"patient_id": 1234}, "per_site": {}}),
        make_card(sites=[{"name": "a", "examples": 3, "status": "trained", "metrics": {}, "mrn": "123"}]),
        make_card(sites=[{"name": "a", "examples": 3, "status": "fine", "metrics": {}}]),
        make_card(model={"arch": "yolov7"}),  # the weights are yolov7-tiny
        make_card(round=-1),
    ]
    for card in bad_cards:
        with pytest.raises(CardError):
            r.publish(model, SPEC, card)
    assert r.versions() == ["v0001"]  # a refused card writes nothing
    ok = r.publish(model, SPEC, make_card(sites=[{"name": "a", "examples": 3, "status": "ok", "metrics": {}}]))
    assert ok.card["sites"][0]["status"] == "trained"  # a training reply's "ok" is recorded as "trained"


def test_get_missing_version_names_it(reg):
    with pytest.raises(DataError) as e:
        reg.get("v0009")
    assert "v0009" in str(e.value) and "v0001, v0002, v0003" in str(e.value)
    with pytest.raises(DataError, match="empty"):
        Registry(reg.root.parent / "nothing").get(1)
    with pytest.raises(DataError, match="no versions"):
        Registry(reg.root.parent / "nothing").get("latest")
    assert Registry(reg.root.parent / "nothing").latest() is None


def cli(*argv: str) -> int:
    """Dispatch like `fracfl` does: FracflError becomes exit code 2."""
    from server.commands.registry import register

    parser = argparse.ArgumentParser(prog="fracfl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    try:
        return int(args.func(args) or 0)
    except FracflError as e:
        print(f"fracfl {args.command}: error: {e}")
        return 2


def test_cli_list_show_verify(reg, capsys, monkeypatch):
    root = str(reg.root)
    assert cli("registry", "list", "--registry", root) == 0
    out = capsys.readouterr().out
    assert all(v in out for v in ("v0001", "v0002", "v0003 *", "run-a", "run-b", "0.410", "0.900", "1/2 trained"))

    monkeypatch.setenv("FRACFL_REGISTRY", root)  # the default root
    assert cli("registry", "show", "latest") == 0
    assert capsys.readouterr().out.startswith("# Fracture detection model v0003 (round 1)")
    assert cli("registry", "show", "2", "--json") == 0
    assert json.loads(capsys.readouterr().out)["parent"] == "v0001"

    assert cli("registry", "verify", "all") == 0
    assert "3 of 3 version(s) intact" in capsys.readouterr().out
    w = reg.get("v0001").weights
    w.write_bytes(w.read_bytes()[:-4] + b"oops")
    assert cli("registry", "verify", "all") == 1
    out = capsys.readouterr().out
    assert "v0001  DAMAGED" in out and "v0002  ok" in out and "2 of 3" in out
    assert cli("registry", "verify", "v0002") == 0
    capsys.readouterr()

    assert cli("registry", "show", "v0042") == 2
    assert "v0042" in capsys.readouterr().out
    assert cli("registry", "list", "--registry", str(reg.root.parent / "elsewhere")) == 2
    assert "no registry here" in capsys.readouterr().out


def test_explicit_parent_and_concurrent_publishers(tmp_path, model):
    from concurrent.futures import ThreadPoolExecutor

    r = Registry(tmp_path / "shared")
    with ThreadPoolExecutor(4) as pool:  # several runs publishing at once never share a version number
        done = list(pool.map(lambda i: r.publish(model, SPEC, make_card(f"run-{i}", 1)).version, range(4)))
    assert sorted(done) == r.versions() == ["v0001", "v0002", "v0003", "v0004"]
    assert r.publish(model, SPEC, make_card("warm-start", 1, parent="v2")).card["parent"] == "v0002"
    with pytest.raises(DataError, match="v0099"):
        r.publish(model, SPEC, make_card("warm-start", 2, parent="v0099"))
    assert r.versions()[-1] == "v0005"


def test_every_card_states_intended_use_and_limitations(tmp_path, model):
    """Derived from the card's own figures on every write: a value passed in cannot replace it."""
    from scipy.stats import binomtest

    from server.registry.render import render_markdown

    pooled = {"map50": 0.41, "sensitivity": 0.9, "specificity": 0.8, "roc_auc": 0.85, "n_images": 100, "n-positive": 40}
    per_site = {"general_hospital": {"sensitivity": 1.0, "specificity": 0.5, "n_images": 12, "n-positive": 2}}
    card = make_card(
        metrics={"pooled": pooled, "per_site": per_site}, limitations={"intended_use": "cleared for diagnosis"}
    )
    p = Registry(tmp_path / "r").publish(model, SPEC, card)
    lim = p.card["limitations"]
    assert list(p.card)[-6:] == ["limitations", "version", "parent", "created", "updated", "hashes"]
    assert "NOT a medical device" in lim["intended_use"]
    assert lim["data"] == [
        {"site": "general_hospital", "training_images": 120, "status": "trained", "validation_images": 12},
        {
            "site": "rural_clinic",
            "training_images": 40,
            "status": "rejected: update norm 12.3 exceeds bound 5",
            "validation_images": None,
        },
    ]
    rows = {r["scope"]: r for r in lim["performance"]}
    for scope, key, k, n in [
        ("pooled", "sensitivity", 36, 40),
        ("pooled", "specificity", 48, 60),
        ("general_hospital", "sensitivity", 2, 2),
        ("general_hospital", "specificity", 5, 10),
    ]:
        ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert rows[scope][key]["n"] == n
        assert rows[scope][key]["ci95"] == pytest.approx([ci.low, ci.high], abs=1e-4)
    assert rows["pooled"]["map50"] == 0.41 and "no interval" in lim["intervals"]
    assert len(lim["failure_modes"]) >= 5
    md = (p.path / "card.md").read_text()
    assert "## Intended use and limitations" in md and "NOT a medical device" in md
    assert "| pooled | 100 (40) | 0.900 (0.769-0.960, n=40) | 0.800 (0.682-0.882, n=60) | 0.410 | 0.850 |" in md
    assert "| rural_clinic | 40 | rejected: update norm 12.3 exceeds bound 5 | n/a |" in md
    old = {k: v for k, v in p.card.items() if k != "limitations"}  # a card written before the section existed
    assert "## Intended use and limitations" in render_markdown(old)
    bare = Registry(tmp_path / "s").publish(model, SPEC, make_card(metrics={"pooled": {}, "per_site": {}}))
    assert "No validation figures recorded for this version." in (bare.path / "card.md").read_text()
