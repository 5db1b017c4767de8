"""The YOLOv7 graphs: parameter counts of the real architecture, output shapes, scales and parts."""

import pytest
import torch
from tests_support import NANO
from torch import nn

from common.nn.model import ModelSpec, build_model, layer_parts


def _params(model: nn.Module, layers: list[int]) -> int:
    return sum(p.numel() for i in layers for p in model.model[i].parameters())


def test_tiny_backbone_and_neck_match_yolov7_tiny():
    model = build_model(ModelSpec(arch="yolov7-tiny"))
    parts = layer_parts(model)
    body = _params(model, parts["backbone"] + parts["neck"])
    assert body == pytest.approx(6.0e6, rel=0.01)  # yolov7-tiny's backbone+neck: 6.0 M
    assert len(model.model) == 78  # 77 YOLOv7-tiny rows (original layer indices) + Detect
    assert parts["backbone"] == list(range(29)) and parts["head"] == [77]
    assert type(model.model[-1]).__name__ == "Detect"
    acts = {type(m.act).__name__ for m in model.modules() if hasattr(m, "act") and isinstance(m.act, nn.Module)}
    assert acts == {"LeakyReLU"}


@pytest.mark.parametrize("arch,channels", [("yolov7-tiny", (128, 256, 512)), ("yolov7", (256, 512, 1024))])
def test_output_shapes(arch, channels):
    model = build_model(ModelSpec(arch=arch)).eval()
    with torch.no_grad():
        y, raw = model(torch.zeros(2, 3, 128, 128))
    anchors = sum((128 // s) ** 2 for s in (8, 16, 32))
    assert y.shape == (2, 4 + 1, anchors)
    assert [tuple(f.shape[1:]) for f in raw["feats"]] == [
        (c, 128 // s, 128 // s) for c, s in zip(channels, (8, 16, 32))
    ]
    assert model.stride.tolist() == [8.0, 16.0, 32.0]


def test_full_yolov7_size_and_activation():
    model = build_model(ModelSpec(arch="yolov7"))
    parts = layer_parts(model)
    assert _params(model, parts["backbone"] + parts["neck"]) == pytest.approx(36.5e6, rel=0.02)
    assert {type(m.act).__name__ for m in model.modules() if hasattr(m, "act") and isinstance(m.act, nn.Module)} == {
        "SiLU"
    }


def test_width_and_depth_scale_down():
    full = build_model(ModelSpec())
    nano = build_model(NANO)
    n_full = sum(p.numel() for p in full.parameters())
    n_nano = sum(p.numel() for p in nano.parameters())
    assert n_nano < n_full / 20
    assert len(nano.model) < len(full.model)  # shorter ELAN chains
    with torch.no_grad():
        y, _ = nano.eval()(torch.zeros(1, 3, 64, 64))
    assert y.shape[1] == 5


def test_group_norm_variant_has_no_batch_norm():
    model = build_model(ModelSpec(width=0.125, norm="group"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())


def test_unknown_architecture_is_a_clear_error():
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="model.arch"):
        build_model(ModelSpec(arch="yolov9"))
