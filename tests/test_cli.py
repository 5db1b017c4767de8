"""`fracfl` subcommands: help, clear one-line errors for bad input, and exit codes scripts can rely on."""

from __future__ import annotations

import pytest
import torch

from common.cli import main
from common.nn.model import ModelSpec, build_model


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("train", "evaluate", "data", "model"):
        assert cmd in out


def test_unknown_config_key_is_named(capsys, tmp_path):
    assert main(["train", "train.epochz=1", f"run_dir={tmp_path}/r"]) != 0
    assert "epochz" in capsys.readouterr().err


def test_bad_config_value_is_named(capsys, tmp_path, synth_data):
    code = main(["train", "model=yolov7_nano", f"data.path={synth_data}", "train.optimizer=rmsprop",
                 "train.imgsz=64", f"run_dir={tmp_path}/r", "progress=false"])
    assert code == 2
    assert "train.optimizer" in capsys.readouterr().err


def test_evaluate_missing_weights_is_one_clear_line(capsys, tmp_path, synth_data):
    assert main(["evaluate", "--model", str(tmp_path / "nope.safetensors"), "--data", str(synth_data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fracfl evaluate: error:") and "nope.safetensors" in err and "not found" in err
    assert len(err.splitlines()) == 1


def test_data_check_exit_codes(capsys, tmp_path, synth_data):
    assert main(["data", "check", str(synth_data.parent), "--quiet"]) == 0
    bad = tmp_path / "bad"
    (bad / "images" / "train").mkdir(parents=True)
    (bad / "labels" / "train").mkdir(parents=True)
    from PIL import Image

    Image.new("L", (32, 32)).save(bad / "images" / "train" / "a.png")
    (bad / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2\n3 0.5 0.5 0.2 0.2\n")
    capsys.readouterr()
    assert main(["data", "check", str(bad), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "a.txt:1" in out and "a.txt:2" in out  # both bad rows, not just the first


def test_model_info_and_import(capsys, tmp_path):
    assert main(["model", "info"]) == 0
    out = capsys.readouterr().out
    assert "backbone" in out and "anchor-free" in out
    torch.save(build_model(ModelSpec(width=0.25)).state_dict(), tmp_path / "theirs.pth")
    assert main(["model", "import", str(tmp_path / "theirs.pth"), "--width", "0.25", "--out", str(tmp_path / "w.safetensors")]) == 0
    assert "tensors loaded" in capsys.readouterr().out and (tmp_path / "w.safetensors").is_file()
