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
    code = main(
        [
            "train",
            "model=yolov7_nano",
            f"data.path={synth_data}",
            "train.optimizer=rmsprop",
            "train.imgsz=64",
            f"run_dir={tmp_path}/r",
            "progress=false",
        ]
    )
    assert code == 2
    assert "train.optimizer" in capsys.readouterr().err


def test_evaluate_missing_weights_is_one_clear_line(capsys, tmp_path, synth_data):
    assert main(["evaluate", "--model", str(tmp_path / "nope.safetensors"), "--data", str(synth_data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fracfl evaluate: error:") and "nope.safetensors" in err and "no model here" in err
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
    assert (
        main(
            [
                "model",
                "import",
                str(tmp_path / "theirs.pth"),
                "--width",
                "0.25",
                "--out",
                str(tmp_path / "w.safetensors"),
            ]
        )
        == 0
    )
    assert "tensors loaded" in capsys.readouterr().out and (tmp_path / "w.safetensors").is_file()


# One spelling per concept across subcommands; the old spellings still work and say what replaced them.


def test_registry_folder_is_registry_everywhere_and_root_still_works(capsys, tmp_path):
    assert main(["registry", "list", "--registry", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert f"no versions in {tmp_path}" in out and "deprecated" not in err
    assert main(["registry", "list", "--root", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert f"no versions in {tmp_path}" in out and "--root is deprecated" in err and "use --registry" in err
    assert main(["registry", "verify", "all", "--registry", str(tmp_path / "missing")]) == 2
    assert "use --registry DIR" in capsys.readouterr().err
    assert main(["export", "--model", "latest", "--registry", str(tmp_path / "missing")]) == 2  # the same flag


def test_batch_size_flag_and_its_old_spelling(capsys, tmp_path, synth_data, tiny_weights):
    args = ["evaluate", "--model", str(tiny_weights), "--data", str(synth_data), "--quiet", "--conf", "0.01"]
    assert main([*args, "--batch-size", "4", "--out", str(tmp_path / "new")]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert main([*args, "--batch", "4", "--out", str(tmp_path / "old")]) == 0
    assert "--batch is deprecated" in capsys.readouterr().err
    assert (tmp_path / "old" / "metrics.json").read_text() == (tmp_path / "new" / "metrics.json").read_text()


def test_evaluate_takes_a_registry_version_folder_like_predict(capsys, tmp_path, synth_data, tiny_weights):
    version = tmp_path / "v0001"
    version.mkdir()
    (version / "model.safetensors").write_bytes(tiny_weights.read_bytes())
    assert (
        main(["evaluate", "--model", str(version), "--data", str(synth_data), "--quiet", "--out", str(tmp_path / "r")])
        == 0
    )


@pytest.mark.parametrize(
    "arch, expected",
    [
        ("yolov7_nano", "yolov7-tiny (width 0.125, depth 0.5)"),
        ("yolov7_tiny", "yolov7-tiny (width 1.0, depth 1.0)"),
        ("yolov7-tiny", "yolov7-tiny (width 1.0, depth 1.0)"),
    ],
)
def test_arch_takes_the_model_config_names(capsys, arch, expected):
    assert main(["model", "info", "--arch", arch]) == 0
    assert capsys.readouterr().out.startswith(expected)


def test_arch_flags_override_the_model_config_and_unknown_names_are_refused(capsys):
    assert main(["model", "info", "--arch", "yolov7_nano", "--width", "0.25"]) == 0
    assert capsys.readouterr().out.startswith("yolov7-tiny (width 0.25, depth 0.5)")
    with pytest.raises(SystemExit) as e:
        main(["model", "info", "--arch", "yolov9"])
    assert e.value.code == 2 and "yolov7_nano" in capsys.readouterr().err


def test_predict_variant_lists_its_choices(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["predict", str(tmp_path), "--model", str(tmp_path), "--variant", "int4"])
    assert e.value.code == 2
    assert "choose from 'fp32', 'fp16', 'w8a32', 'int8'" in capsys.readouterr().err


def test_listen_model_key_and_its_old_name(capsys):
    from hydra import compose, initialize_config_dir

    from client.commands.listen import listen_config, take_model
    from common.config import CONF_DIR

    rest, taken = take_model(["model='registry/v0007'", "port=104"])
    assert rest == ["port=104"] and taken == {
        "model": "registry/v0007"
    }  # `model` is also a config group: kept from Hydra
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("listen", overrides=rest)
    assert listen_config(cfg, taken).model == "registry/v0007" and listen_config(cfg, taken).port == 104
    assert "deprecated" not in capsys.readouterr().err
    assert listen_config(cfg, take_model(["weights=w.safetensors"])[1]).model == "w.safetensors"
    assert "config key weights is deprecated" in capsys.readouterr().err
    assert listen_config(cfg, take_model(["weights=old", "model=new"])[1]).model == "new"


@pytest.mark.parametrize("key", ["model", "weights"])
def test_listen_through_the_entry_point_names_a_missing_model(capsys, tmp_path, key):
    missing = tmp_path / "nope.safetensors"
    assert main(["listen", f"{key}={missing}", f"queue_dir={tmp_path / 'q'}", "port=0", "threads=1"]) == 2
    err = capsys.readouterr().err
    assert "fracfl listen: error:" in err and "nope.safetensors" in err
    assert ("config key weights is deprecated" in err) == (key == "weights")
