"""The contract between server and sites: the records a message carries, the keys inside them, what a round's
configuration holds, and how site metrics and site status are coded.

Defined once, in the shared package, so the ServerApp and the ClientApp cannot drift apart: both sides read and
write these names, never string literals of their own. Where Flower itself reads or writes a key (the weights,
the round number, FedProx's mu, the example count it weights by), the name is Flower's and is said so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from common.config import EvalConfig, LocalTrainConfig, PrivacyConfig, to_typed
from common.metrics import DetectionReport
from common.nn.model import ModelSpec

# Records of a message (keys of its RecordDict).
ARRAYS = "arrays"  # ArrayRecord: the global state (to a site) or the site's new weights (back); Flower's default
CONFIG = "config"  # ConfigRecord: the round's configuration, server to site; Flower's default
METRICS = "metrics"  # MetricRecord: a site's aggregate numbers (encode_metrics, the training losses)
SITE = "site"  # ConfigRecord: who answered and how it went (SiteReply)
DELIVERY = "delivery"  # ConfigRecord: a published version delivered to the sites after a run (server/deliver.py)

# Keys of the round's configuration (CONFIG).
JOB = "job"  # the SiteJob, as JSON
MODEL_VERSION = "model-version"  # the global model the sites train from (their ledgers name it)
SITES_MANIFEST = "sites-manifest"  # simulations only: where each simulated site's data lie
FAULT_PLAN = "faults"  # simulations only: {site: fault} as JSON, for client/faults.py
SERVER_ROUND = "server-round"  # written by Flower's strategies
PROXIMAL_MU = "proximal-mu"  # written by Flower's FedProx

# Keys of a site's MetricRecord beside the REPORTED metrics.
NUM_EXAMPLES = "num-examples"  # images behind the numbers; FedAvg weights updates by it (Flower's weighted_by_key)
N_POSITIVE = "n-positive"  # fracture images among them

# The query a server sends before it builds simulated sites (server/job.py), and the keys of the answer (SITE).
ASK = "ask"
REAL_SITE = "real-site"  # asked: whether the node serves a real site's data; answered as a bool under this key
NAME = "name"
# Round requests (continuous learning): a query of its own (message type "query.round_request"), sent before a run
# when federation.round_requests is not "off"; the answer (SITE) holds NAME and the two keys below.
ASK_ROUND = "round_request"  # the query action the ClientApp registers for it
ROUND_REQUEST = "round-request"  # answered: whether the site requests a round (bool)
DISAGREEMENT = "disagreement"  # answered: the reviewers' disagreement rate, coarsened; absent when suppressed

# Delivery of a published version to the sites (message type "query.deliver"), the keys of its DELIVERY record.
DELIVER = "deliver"  # the query action the ClientApp registers for deliveries
DELIVERED_VERSION = "version"  # the registry version's name
DELIVERED_NAMES = "names"  # file names inside the version folder (card.json, model.safetensors, exports/...)
DELIVERED_FILES = "files"  # the files' bytes, in the order of DELIVERED_NAMES

REPORTED = ("map50", "map50_95", "precision", "recall", "f1", "sensitivity", "specificity", "roc_auc")
UNDEFINED = -1.0  # metrics are in [0, 1]; -1 marks "undefined here" (e.g. sensitivity at a site with no fracture)


@dataclass
class SiteJob:
    """The part of the run's configuration a site needs, sent by the server with every round."""

    model: dict[str, Any]
    train: LocalTrainConfig = field(default_factory=LocalTrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    seed: int = 0
    run_id: str = ""
    rounds: int = 1  # planned rounds: DP noise is calibrated for the whole run

    def to_json(self) -> str:
        return json.dumps(
            {
                "model": self.model,
                "train": asdict(self.train),
                "eval": asdict(self.eval),
                "privacy": asdict(self.privacy),
                "seed": self.seed,
                "run_id": self.run_id,
                "rounds": self.rounds,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> SiteJob:
        d = json.loads(text)
        return cls(
            model=d["model"],
            train=to_typed(d["train"], LocalTrainConfig),
            eval=to_typed(d["eval"], EvalConfig),
            privacy=to_typed(d.get("privacy", {}), PrivacyConfig),
            seed=int(d["seed"]),
            run_id=str(d.get("run_id", "")),
            rounds=int(d.get("rounds", 1)),
        )

    @staticmethod
    @lru_cache(maxsize=4)
    def parse(text: str) -> SiteJob:
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
    out[NUM_EXAMPLES] = float(examples)
    out[N_POSITIVE] = float(report.n_positive)
    return out


def decode_metrics(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """Numbers from a MetricRecord with UNDEFINED turned back into None (for records, cards and reports)."""
    return {k: (None if v == UNDEFINED else v) for k, v in metrics.items()}


@dataclass
class SiteReply:
    """Who answered a round's message and how it went: the SITE record of every reply.

    `status` is ``ok``, or why not (``refused: ...``, ``failed: ...``); `privacy` is the site's DP-SGD report
    (epsilon, mechanism, ledger head). The server reads what a site sent through `from_record`, which keeps only
    short names and numbers, so nothing else a site puts there reaches records, cards or logs.
    """

    name: str
    status: str = "ok"
    privacy: dict[str, Any] | None = None

    def to_record(self) -> dict[str, str]:
        out = {NAME: self.name, "status": self.status}
        if self.privacy is not None:
            out["privacy"] = json.dumps(self.privacy)
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any], default_name: str) -> SiteReply:
        return cls(
            str(record.get(NAME, default_name))[:64],
            str(record.get("status", "ok"))[:200],
            _privacy_report(record.get("privacy")),
        )


def _privacy_report(text: object) -> dict[str, Any] | None:
    """A site's privacy report: numbers and short codes only; anything else in it is dropped."""
    try:
        raw = json.loads(str(text)) if text is not None else None
    except (TypeError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    return {
        k: v
        for k, v in raw.items()
        if isinstance(k, str)
        and len(k) <= 40
        and (isinstance(v, (int, float)) or (isinstance(v, str) and len(v) <= 200))
    }
