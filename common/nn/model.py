"""Build the detector from a typed spec and describe which layers are backbone, neck and head."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from types import SimpleNamespace

from torch import nn
from ultralytics.nn.tasks import DetectionModel

from common import offline  # noqa: F401  (Ultralytics' offline switches before its first import)
from common.nn.yolov7 import model_yaml

# Ultralytics' default loss gains; the loss reads them from `model.args`.
LOSS_GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the same network: stored beside every saved set of weights."""

    arch: str = "yolov7-tiny"
    names: dict[int, str] = field(default_factory=lambda: {0: "fracture"})
    width: float = 1.0
    depth: float = 1.0
    norm: str = "batch"  # "group" replaces BatchNorm, which mixes images of a batch (needed for DP-SGD)

    @property
    def nc(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["names"] = {str(k): v for k, v in self.names.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        d = dict(d)
        d["names"] = {int(k): v for k, v in d.get("names", {0: "fracture"}).items()}
        return cls(**d)


def _to_group_norm(model: nn.Module) -> None:
    """Swap every BatchNorm2d for a GroupNorm of the same width, so no statistic is shared between images."""
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            groups = next(g for g in (32, 16, 8, 4, 2, 1) if c % g == 0)
            setattr(model, name, nn.GroupNorm(groups, c, eps=child.eps, affine=True))
        else:
            _to_group_norm(child)


def build_model(spec: ModelSpec) -> DetectionModel:
    """A freshly initialised detector for `spec` (Ultralytics' init, biases primed for rare objects)."""
    cfg = model_yaml(spec.arch, spec.nc, spec.width, spec.depth)
    model = DetectionModel(copy.deepcopy(cfg), ch=3, nc=spec.nc, verbose=False)
    if spec.norm == "group":
        _to_group_norm(model)
    elif spec.norm != "batch":
        from common.errors import ConfigError

        raise ConfigError(f"model.norm: expected 'batch' or 'group', got {spec.norm!r}")
    model.names = dict(spec.names)
    model.args = SimpleNamespace(**LOSS_GAINS)
    return model


@lru_cache(maxsize=2)
def _built(spec_json: str) -> DetectionModel:
    return build_model(ModelSpec.from_dict(json.loads(spec_json)))


def reusable_model(spec: ModelSpec) -> DetectionModel:
    """One network per spec and process, for code that loads new weights into it every round (building one costs
    a probe forward pass). Not for two users at once."""
    return _built(json.dumps(spec.to_dict(), sort_keys=True))


def layer_parts(model: DetectionModel) -> dict[str, list[int]]:
    """Layer indices of backbone, neck and head, for partial aggregation and reporting."""
    n_backbone = len(model.yaml["backbone"])
    n = len(model.model)
    return {"backbone": list(range(n_backbone)), "neck": list(range(n_backbone, n - 1)), "head": [n - 1]}
