"""The contract between server and sites: what a round's configuration carries and how site metrics are coded.

Defined once, in the shared package, so the ServerApp and the ClientApp cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from common.config import EvalConfig, LocalTrainConfig, to_typed
from common.nn.model import ModelSpec

REPORTED = ("map50", "map50_95", "precision", "recall", "f1", "sensitivity", "specificity", "roc_auc")
UNDEFINED = -1.0  # metrics are in [0, 1]; -1 marks "undefined here" (e.g. sensitivity at a site with no fracture)


@dataclass
class SiteJob:
    """The part of the run's configuration a site needs, sent by the server with every round."""

    model: dict
    train: LocalTrainConfig = field(default_factory=LocalTrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps({"model": self.model, "train": asdict(self.train), "eval": asdict(self.eval), "seed": self.seed})

    @classmethod
    def from_json(cls, text: str) -> "SiteJob":
        d = json.loads(text)
        return cls(model=d["model"], train=to_typed(d["train"], LocalTrainConfig), eval=to_typed(d["eval"], EvalConfig),
                   seed=int(d["seed"]))

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.model)


