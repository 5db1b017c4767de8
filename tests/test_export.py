"""Edge exports through the real converter (Ultralytics' LiteRT export, ai-edge-quantizer) and the real TFLite
interpreter: files and card, equivalence with PyTorch through the shared Predictor, failures recorded, and the
server's background exporter (a real worker process) never holding up publishing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tests_support import GROUP_NANO, toy_dataset
from tests_support import NANO as SPEC

from common.config import EvalConfig
from common.data.dataset import DetectionDataset
from common.data.images import read_image
from common.errors import DataError
from common.inference import Predictor, load_backend
from common.nn.model import build_model
from server.export.background import BackgroundExports
from server.export.config import ExportConfig
from server.export.version import export_version
from server.registry import Registry, sha256_file

IMGSZ = 64
CARD = {
    "run_id": "edge",
    "round": 1,
    "strategy": {"name": "fedavg", "params": {}},
    "model": {},
    "sites": [],
    "metrics": {},
    "privacy": None,
    "exports": [],
}


def _publish(root: Path, seed: int = 0):
    torch.manual_seed(seed)
    return Registry(root).publish(build_model(SPEC), SPEC, dict(CARD), {"imgsz": IMGSZ})


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return toy_dataset(tmp_path_factory.mktemp("toy"), size=IMGSZ, n=16)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, toy):
    """One version exported to fp32, fp16 and int8 (calibrated on the toy set), compared with PyTorch on it."""
    root = tmp_path_factory.mktemp("registry")
    p = _publish(root)
    entries = export_version(
        Registry(root), p.version, ExportConfig(variants=["fp32", "fp16", "int8"]), str(toy / "data.yaml"), EvalConfig()
    )
    return Registry(root), p.version, entries


def test_card_lists_each_file_with_size_hash_and_equivalence(exported):
    reg, version, entries = exported
    folder = reg.get(version).path
    assert [e["variant"] for e in entries] == ["fp32", "fp16", "int8"]
    for e in entries:
        assert e["status"] == "ok", e
        f = folder / e["file"]
        assert e["bytes"] == f.stat().st_size > 0 and e["sha256"] == sha256_file(f) and e["imgsz"] == IMGSZ
        assert e["n_images"] == 4 and e["map50_torch"] is not None and e["seconds"] >= 0
    sizes = {e["variant"]: e["bytes"] for e in entries}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]  # the formats really differ
    fp32 = entries[0]
    assert fp32["max_box_diff_px"] < 0.05 and fp32["map50_delta_points"] == 0 and fp32["meets_goal"] is True
    assert fp32["verdicts_agree"] == 1.0
    assert reg.get(version).card["exports"] == entries  # written to the card, not only returned
    md = (folder / "card.md").read_text()
    assert "| int8 | `exports/model_int8.tflite` |" in md and entries[2]["sha256"][:16] in md


def test_registry_verify_checks_export_hashes(exported):
    from common.cli import main

    reg, version, entries = exported
    assert reg.verify(version) == []
    assert main(["registry", "verify", version, "--registry", str(reg.root)]) == 0
    f = reg.get(version).path / entries[2]["file"]
    original = f.read_bytes()
    try:
        f.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        assert any("model_int8.tflite: sha256 does not match" in p for p in reg.verify(version))
    finally:
        f.write_bytes(original)


def test_tflite_predictions_match_torch_through_the_shared_predictor(exported, toy):
    reg, version, _ = exported
    folder = reg.get(version).path
    cfg = EvalConfig(conf=0.0)
    torch_pred = Predictor(load_backend(folder), cfg)
    edge = load_backend(folder, "tflite", variant="fp32")
    assert edge.imgsz == IMGSZ and edge.names == {0: "fracture"} and edge.threads == 2
    tflite_pred = Predictor(edge, cfg)
    for path in DetectionDataset.from_data(toy, "val", IMGSZ).images:
        img = read_image(path)
        a, b = torch_pred.predict(img), tflite_pred.predict(img)
        top_a, top_b = np.argsort(-a.scores)[:5], np.argsort(-b.scores)[:5]
        np.testing.assert_allclose(b.scores[top_b], a.scores[top_a], atol=1e-4)
        np.testing.assert_allclose(b.boxes[top_b], a.boxes[top_a], atol=0.05)
        assert a.positive == b.positive and a.probability == pytest.approx(b.probability, abs=1e-4)
    int8 = load_backend(folder, "tflite", variant="int8")
    assert int8(torch.rand(2, 3, IMGSZ, IMGSZ)).shape == (2, 5, 84)  # batches run image by image
    with pytest.raises(DataError, match="no w8a32 TFLite export here; exported variants: fp16, fp32, int8"):
        load_backend(folder, "tflite", variant="w8a32")
    with pytest.raises(DataError, match="exported for 64 px input, cannot run at 128 px"):
        load_backend(folder, "tflite", imgsz=128)


def test_one_environment_trains_federated_and_exports(exported):
    """litert-torch pulls typing-extensions < 4.13 in; flwr needs 4.13+ (Sentinel). The install re-pins it."""
    import litert_torch  # noqa: F401  (the converter the fixture just ran)
    import typing_extensions
    from flwr.app import ArrayRecord
    from flwr.serverapp import ServerApp  # noqa: F401

    assert hasattr(typing_extensions, "Sentinel")
    reg, version, _ = exported
    model, _, _ = reg.load(version)
    record = ArrayRecord(model.state_dict())
    back = record.to_torch_state_dict()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_failed_export_is_recorded_with_its_reason(tmp_path, toy):
    p = _publish(tmp_path / "registry")
    entries = export_version(
        Registry(p.path.parent),
        p.version,
        ExportConfig(variants=["int8"], calibration=str(tmp_path / "no-such-data")),
        str(toy / "data.yaml"),
    )
    assert len(entries) == 1 and entries[0]["status"].startswith("failed: calibration data unusable")
    assert "dataset path does not exist" in entries[0]["status"] and "no-such-data" not in entries[0]["status"]
    assert not list(p.path.glob("exports/*.tflite"))  # nothing half-made left beside the card
    assert "| int8 | `exports/model_int8.tflite` | n/a | failed: calibration data" in (p.path / "card.md").read_text()


def _card_exports(reg: Registry, version: str) -> list[dict]:
    return json.loads((reg.get(version).path / "card.json").read_text())["exports"]


def test_background_export_never_holds_up_publishing(tmp_path, toy):
    """A real worker process; an export that needs longer than export.timeout is stopped and recorded."""
    reg = Registry(tmp_path / "registry")
    v1 = _publish(reg.root).version
    exports = BackgroundExports(
        reg.root,
        ExportConfig(variants=["fp32"], timeout=2.0),
        str(toy / "data.yaml"),
        EvalConfig(),
        tmp_path / "exports.log",
    )
    assert exports.submit(v1, final=True)
    assert _card_exports(reg, v1) == []  # submit returned while the export is still running
    v2 = _publish(reg.root, seed=1).version  # the next round publishes meanwhile
    assert v2 == "v0002" and reg.verify(v2) == []
    outcomes = exports.close()
    assert outcomes == {v1: "timed out: no result within export.timeout = 2 s"}
    assert [e["status"] for e in _card_exports(reg, v1)] == [outcomes[v1]]
    assert not (reg.get(v1).path / "exports" / "model_fp32.tflite").exists()
    assert "--- v0001 ---" in (tmp_path / "exports.log").read_text()


def test_background_worker_failure_is_on_the_card(tmp_path, toy):
    reg = Registry(tmp_path / "registry")
    v1 = _publish(reg.root).version
    cfg = ExportConfig(variants=["int8"], calibration=str(tmp_path / "missing"), every_k=2)
    exports = BackgroundExports(reg.root, cfg, str(toy / "data.yaml"), EvalConfig(), tmp_path / "exports.log")
    assert exports.submit(v1) is False  # every 2nd publication only...
    assert exports.submit(v1) is True  # ...this one
    assert exports.close() == {v1: "finished"}  # the worker ran to its end and wrote the card itself
    (entry,) = _card_exports(reg, v1)
    assert entry["status"].startswith("failed: calibration data unusable (dataset path does not exist)")


def test_run_end_stops_outstanding_exports(tmp_path, toy):
    reg = Registry(tmp_path / "registry")
    v1, v2 = _publish(reg.root).version, _publish(reg.root, seed=1).version
    exports = BackgroundExports(
        reg.root,
        ExportConfig(variants=["fp32", "int8"]),
        str(toy / "data.yaml"),
        EvalConfig(),
        tmp_path / "exports.log",
    )
    exports.submit(v1)
    exports.submit(v2, final=True)
    outcomes = exports.close(wait=0.5)
    assert outcomes[v1].startswith("timed out: the run ended before the export finished")
    assert outcomes[v2] == "skipped: the run ended before this export started"
    assert [e["status"] for e in _card_exports(reg, v2)] == [outcomes[v2]] * 2
    assert reg.verify(v1) == [] and reg.verify(v2) == []


def test_export_command_reports_failure_and_bad_input(tmp_path, toy, capsys):
    from common.cli import main

    p = _publish(tmp_path / "registry")
    args = ["export", "--model", "latest", "--registry", str(p.path.parent), "--data", str(toy)]
    assert main([*args, "--variants", "int8", "--calibration", str(tmp_path / "nothing")]) == 1
    out = capsys.readouterr().out
    assert "int8: failed: calibration data unusable (dataset path does not exist)" in out
    assert main([*args, "--variants", "fp32,int4"]) == 2
    assert "--variants: ['int4']; choose from fp32, fp16, w8a32, int8" in capsys.readouterr().err
    assert main(["export", "--model", "v0009", "--registry", str(p.path.parent)]) == 2
    assert "no version v0009 in this registry; available: v0001" in capsys.readouterr().err


def test_failure_reasons_on_cards_carry_no_file_paths():
    from server.export.version import reason

    text = reason(PermissionError(13, "Permission denied", "/data/site_a/doe_jane_1961/img1.png"), "calibration")
    assert text == "calibration: PermissionError: [Errno 13] Permission denied: '<path>'"
    assert reason(DataError("/data/doe_jane.png", "truncated JPEG")) == "truncated JPEG"
    assert reason(RuntimeError("fp32/fp16 mismatch")) == "RuntimeError: fp32/fp16 mismatch"


def test_predict_command_runs_the_edge_build_like_the_torch_model(exported, toy, tmp_path, capsys):
    """`fracfl predict --backend tflite` on a PNG and a DICOM radiograph: same verdicts and image scores as torch
    (one preprocessing and postprocessing path), no heatmap (the edge runtime has no gradients)."""
    import json

    from pydicom.data import get_testdata_file

    from common.cli import main

    reg, version, _ = exported
    folder = reg.get(version).path
    inputs = [str(DetectionDataset.from_data(toy, "val", IMGSZ).images[0]), get_testdata_file("RG3_UNCR.dcm")]
    runs = {}
    for backend in ("torch", "tflite"):
        assert (
            main(
                [
                    "predict",
                    *inputs,
                    "--model",
                    str(folder),
                    "--backend",
                    backend,
                    "--conf",
                    "0.0",
                    "--out",
                    str(tmp_path / backend),
                    "--json",
                ]
            )
            == 0
        )
        runs[backend] = json.loads(capsys.readouterr().out)
    for t, e in zip(runs["torch"], runs["tflite"]):
        assert e["ok"] and t["probability"] == pytest.approx(e["probability"], abs=1e-3)
        assert t["positive"] == e["positive"] and e["heatmap"] is False


def test_group_norm_model_of_dp_runs_exports_and_matches(tmp_path):
    """DP-SGD runs publish GroupNorm models; Ultralytics' fuse() would try to fold GroupNorm like BatchNorm."""
    from common.inference.tflite import TFLiteBackend
    from server.export.exporter import convert_fp32

    torch.manual_seed(0)
    model = build_model(GROUP_NANO).eval()
    edge = TFLiteBackend(convert_fp32(model, IMGSZ, tmp_path / "gn.tflite"), names={0: "fracture"})
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        ref = model(x)[0]
    torch.testing.assert_close(edge(x), ref, atol=0.02, rtol=1e-3)
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())  # the original is left as it was
