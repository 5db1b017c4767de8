"""The contract between server and sites: what a round's configuration carries and how site metrics are coded.

Defined once, in the shared package, so the ServerApp and the ClientApp cannot drift apart.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from common.config import EvalConfig, LocalTrainConfig, PrivacyConfig, to_typed
from common.metrics import DetectionReport
from common.nn.model import ModelSpec

REPORTED = ("map50", "map50_95", "precision", "recall", "f1", "sensitivity", "specificity", "roc_auc")
UNDEFINED = -1.0  # metrics are in [0, 1]; -1 marks "undefined here" (e.g. sensitivity at a site with no fracture)


@dataclass
class SiteJob:
    """The part of the run's configuration a site needs, sent by the server with every round."""

    model: dict
    train: LocalTrainConfig = field(default_factory=LocalTrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    seed: int = 0
    run_id: str = ""
    rounds: int = 1  # planned rounds: DP noise is calibrated for the whole run

    def to_json(self) -> str:
        return json.dumps({"model": self.model, "train": asdict(self.train), "eval": asdict(self.eval),
                           "privacy": asdict(self.privacy), "seed": self.seed, "run_id": self.run_id,
                           "rounds": self.rounds})

    @classmethod
    def from_json(cls, text: str) -> "SiteJob":
        d = json.loads(text)
        return cls(model=d["model"], train=to_typed(d["train"], LocalTrainConfig), eval=to_typed(d["eval"], EvalConfig),
                   privacy=to_typed(d.get("privacy", {}), PrivacyConfig), seed=int(d["seed"]),
                   run_id=str(d.get("run_id", "")), rounds=int(d.get("rounds", 1)))

    @staticmethod
    @lru_cache(maxsize=4)
    def parse(text: str) -> "SiteJob":
        """`from_json`, cached: every message of a run carries the same job, and typing it costs 20 ms of a site's
        CPU per round. The result is shared, so it must not be changed."""
        return SiteJob.from_json(text)

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.model)


def encode_metrics(report: DetectionReport, examples: int) -> dict[str, float]:
    """A report as the numbers that travel in a MetricRecord: undefined values become UNDEFINED."""
    d = report.to_dict(curves=False)
    out = {k: (float(d[k]) if d.get(k) is not None and math.isfinite(d[k]) else UNDEFINED) for k in REPORTED}
    out["num-examples"] = float(examples)
    out["n-positive"] = float(report.n_positive)
    return out


def decode_metrics(metrics: dict[str, float]) -> dict[str, float | None]:
    """Numbers from a MetricRecord with UNDEFINED turned back into None (for records, cards and reports)."""
    return {k: (None if v == UNDEFINED else v) for k, v in metrics.items()}
