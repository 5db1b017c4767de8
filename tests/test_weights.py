"""Weights round-trip exactly and foreign checkpoints load with a report of what matched."""

import hashlib
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from tests_support import NANO as SPEC

from common.errors import DataError
from common.nn.model import build_model
from common.nn.weights import (
    init_from_checkpoint,
    load_model,
    model_from_config,
    read_weights,
    save_weights,
    write_state,
)


def _perturbed_model():
    model = build_model(SPEC)
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, 64, 64))  # updates BatchNorm running statistics and counters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    return model


def test_round_trip_is_bit_exact(tmp_path):
    model = _perturbed_model()
    path = save_weights(model, SPEC, tmp_path / "w.safetensors", {"imgsz": 256})
    loaded, spec, meta = load_model(path)
    assert spec == SPEC and meta == {"imgsz": 256}
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k  # num_batches_tracked stays an integer
        assert torch.equal(a[k], b[k]), k
    assert not list(tmp_path.glob("*.tmp"))


def test_written_state_is_what_safetensors_reads_and_its_hash_is_the_files(tmp_path):
    state = {
        "a.weight": np.asfortranarray(np.random.rand(3, 5)),  # float64, Fortran order: stored as C-order fp32
        "b.num_batches_tracked": np.array(7, dtype=np.int64),
        "c.empty": np.zeros((0, 4), np.float32),
        "d.bias": np.random.rand(5).astype(np.float32)[::2],
    }  # a strided view
    digest = write_state(tmp_path / "w.safetensors", state, SPEC, {"round": 3})
    assert digest == hashlib.sha256((tmp_path / "w.safetensors").read_bytes()).hexdigest()
    with safe_open(tmp_path / "w.safetensors", framework="np") as f:  # safetensors' own reader checks the layout
        assert set(f.keys()) == set(state)
        for k, v in state.items():
            got = f.get_tensor(k)
            assert got.shape == v.shape and np.array_equal(got, v.astype(got.dtype)), k
            assert got.dtype == (np.float32 if v.dtype.kind == "f" else v.dtype), k
    assert read_weights(tmp_path / "w.safetensors")[1:] == (SPEC, {"round": 3})
    with pytest.raises(DataError, match="bad.safetensors: tensor z: dtype complex128"):
        write_state(tmp_path / "bad.safetensors", {"z": np.zeros(2, np.complex128)}, SPEC)


def test_not_a_weights_file_names_the_file(tmp_path):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("hello")
    with pytest.raises(DataError, match="notes.safetensors"):
        read_weights(bad)
    with pytest.raises(DataError, match="not found"):
        read_weights(tmp_path / "missing.safetensors")


def test_foreign_pickled_model_loads_without_its_code(tmp_path, monkeypatch):
    """A checkpoint pickled with code we do not have (like the YOLOv7 repo's models.yolo.Model)."""
    pkg = tmp_path / "foreignrepo"
    (pkg / "models").mkdir(parents=True)
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "yolo.py").write_text(
        textwrap.dedent("""
        import torch.nn as nn
        class Model(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.model = inner.model
    """)
    )
    monkeypatch.syspath_prepend(str(pkg))
    import models.yolo  # noqa: F401  (the foreign code, importable only while saving)

    source = _perturbed_model()
    torch.save({"model": sys.modules["models.yolo"].Model(source).half(), "epoch": 299}, tmp_path / "yolov7.pt")
    for name in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
        del sys.modules[name]
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))
    sys.path.remove(str(pkg))

    target = build_model(SPEC)
    report = init_from_checkpoint(target, tmp_path / "yolov7.pt")
    assert not report.missing and not report.shape_mismatch
    assert len(report.matched) == len(target.state_dict())
    w = "model.0.conv.weight"
    assert torch.equal(target.state_dict()[w], source.state_dict()[w].half().float())


def test_shape_mismatch_and_missing_are_reported(tmp_path):
    coco = build_model(replace(SPEC, names={i: str(i) for i in range(80)}))
    torch.save(coco.state_dict(), tmp_path / "coco.pth")
    model, _, report = model_from_config(
        "yolov7-tiny", {0: "fracture"}, 0.125, 0.5, "batch", str(tmp_path / "coco.pth")
    )
    assert report.shape_mismatch and all(".cv3." in k for k, _, _ in report.shape_mismatch)  # class outputs only
    assert any(k.startswith("model.0.") for k in report.matched)
    assert "tensors loaded" in report.summary()


def test_same_spec_fracfl_file_loads_strictly(tmp_path):
    model = _perturbed_model()
    path = save_weights(model, SPEC, tmp_path / "w.safetensors")
    again, _, report = model_from_config("yolov7-tiny", {0: "fracture"}, 0.125, 0.5, "batch", str(path))
    assert len(report.matched) == len(model.state_dict()) and not report.missing
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


class _Payload:
    """A pickle that would create a file when unpickled by plain pickle."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.mark.parametrize("legacy", [False, True])
def test_foreign_checkpoint_cannot_run_code(tmp_path, legacy):
    target = tmp_path / "created-by-pickle"
    torch.save({"model": _Payload(target)}, tmp_path / "evil.pt", _use_new_zipfile_serialization=not legacy)
    with pytest.raises(DataError):
        init_from_checkpoint(build_model(SPEC), tmp_path / "evil.pt")
    assert not target.exists()


def test_dotted_globals_are_refused():
    import io
    import pickle

    from common.nn.weights import _StubUnpickler

    crafted = b"\x80\x04\x8c\x17torch.nn.modules.module\x94\x8c\x0ftorch.os.getcwd\x94\x93\x94)R\x94."
    with pytest.raises(pickle.UnpicklingError, match="dotted"):
        _StubUnpickler(io.BytesIO(crafted)).load()
