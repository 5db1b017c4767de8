"""The contract between server and sites: the records a message carries, the keys inside them, what a round's
configuration holds, and how site metrics and site status are coded.

Defined once, in the shared package, so the ServerApp and the ClientApp cannot drift apart: both sides read and
write these names, never string literals of their own. Where Flower itself reads or writes a key (the weights,
the round number, FedProx's mu, the example count it weights by), the name is Flower's and is said so.
"""

from __future__ import annotations

import json
import math
import re
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
DELIVERY = "delivery"  # ConfigRecord: a published version delivered to the sites after a run (server/deliver.py)
METRICS = "metrics"  # MetricRecord: a site's aggregate numbers (REPLY_METRICS)
SITE = "site"  # ConfigRecord: who answered and how it went (SiteReply), or the answer to a query (QUERY_FIELDS)

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

# Keys of a site's reply record (SITE, SiteReply).
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
# Fetching: after a run, with federation.answer_requests, a query of its own (message type "query.version_request")
# asks each site which published versions it requested (`fracfl site request`); the answer (SITE) holds NAME and the
# key below, and each requested version the registry holds intact is then delivered as above.
ASK_VERSIONS = "version_request"  # the query action the ClientApp registers for it
REQUESTED = "requested"  # answered: registry version names (`requested_versions`), nothing else
STATUS = "status"
PRIVACY = "privacy"

REPORTED = ("map50", "map50_95", "precision", "recall", "f1", "sensitivity", "specificity", "roc_auc")
UNDEFINED = -1.0  # metrics are in [0, 1]; -1 marks "undefined here" (e.g. sensitivity at a site with no fracture)
SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # a site name: appears in logs, records and cards
VERSION_NAME = re.compile(r"^v(?:[0-9]{4}|[1-9][0-9]{4,5})$")  # a registry version as the registry names it: v0007
MAX_REQUESTED = 8  # versions one site may ask for per run (each is a model's weights, card and edge builds)

# Everything a site's reply may carry, field by field: the ClientApp sends nothing else (`site_metrics`,
# `SiteReply.to_record`) and the server keeps nothing else (`kept_metrics`, `SiteReply.from_record`).
# docs/deployment.md ("What crosses the network") says what each field is for and how it is coarsened.
TRAIN, EVALUATE = "train", "evaluate"  # the phases of a round (Flower's message types)
REPLY_METRICS: dict[str, tuple[str, ...]] = {
    TRAIN: (NUM_EXAMPLES, "loss"),  # weighting; the report's training-loss curve
    EVALUATE: (NUM_EXAMPLES, N_POSITIVE, *REPORTED),  # the card's per-site figures and their intervals
}
SIMULATION_METRICS = ("box_loss", "cls_loss", "dfl_loss", "steps", "images_per_s")  # simulated sites only (bench/)
SITE_FIELDS = (NAME, STATUS, PRIVACY)
PRIVACY_FIELDS = (  # a DP-SGD site's report (client/privacy.py): the card's privacy section and the server's ledger
    "run_id",
    "round",
    "model_version",
    "entry",
    "epsilon",
    "epsilon_rdp",
    "epsilon_prv",
    "projected_epsilon",
    "delta",
    "target_epsilon",
    "ceiling_epsilon",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "steps_per_round",
    "planned_rounds",
    "first_round",
    "max_grad_norm",
    "patients",
    "unit",
    "noise",
    "reason",
    "ledger_head",
    "ledger_seq",
)
QUERY_FIELDS = (REAL_SITE,)  # the answer to the server's query (server/job.py)
ROUND_REQUEST_FIELDS = (NAME, ROUND_REQUEST, DISAGREEMENT)  # the answer to a round-request query (server/requests.py)
VERSION_REQUEST_FIELDS = (NAME, REQUESTED)  # the answer to a version-request query (server/version_requests.py)
COUNTS = (NUM_EXAMPLES, N_POSITIVE, "patients")  # sent rounded (`coarse_count`), never exact
COUNT_STEP = 10
RATES = ("sample_rate",)  # sent to two significant figures (`coarse_sample_rate`): the exact rate would give the count


def coarse_count(n: float) -> float:
    """A count as it leaves a site: to the nearest COUNT_STEP, and at least COUNT_STEP when there is any (so that
    a site with a few images still weighs something); UNDEFINED stays so. Exact counts of a small split would tell
    labels apart."""
    if n == UNDEFINED:
        return UNDEFINED
    if not n > 0:
        return 0.0
    return float(max(COUNT_STEP, COUNT_STEP * math.floor(n / COUNT_STEP + 0.5)))


def coarse_sample_rate(q: float) -> float:
    """A DP-SGD sampling rate as it leaves a site: two significant figures. The exact rate is batch size / images
    (or patients), so it would give the exact count; two figures leave the epsilon checkable to about 5 %."""
    return float(f"{q:.2g}")


def requested_versions(names: object) -> list[str]:
    """Version names as a version-request answer carries them, read the same way on both sides: only names of
    VERSION_NAME's form (no other text crosses), each once, oldest first, at most MAX_REQUESTED."""
    if not isinstance(names, (list, tuple)):
        return []
    valid = {n for n in names if isinstance(n, str) and VERSION_NAME.match(n)}
    return sorted(valid, key=lambda n: int(n[1:]))[:MAX_REQUESTED]


def site_metrics(phase: str, metrics: Mapping[str, float], simulated: bool = False) -> dict[str, float]:
    """A site's numbers as its reply carries them: only the phase's fields (and, from a simulated site, the
    diagnostics benchmarks read), counts coarsened."""
    allowed = kept_metrics(phase, simulated)
    return {k: coarse_count(v) if k in COUNTS else float(v) for k, v in metrics.items() if k in allowed}


def kept_metrics(phase: str, simulated: bool = True) -> tuple[str, ...]:
    """The metric keys a reply of `phase` may carry (the server, which cannot tell, keeps the simulation's too)."""
    return REPLY_METRICS[phase] + (SIMULATION_METRICS if simulated and phase == TRAIN else ())


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
    min_val_images: int = 0  # sites report validation metrics on at least this many images (can only raise theirs)

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
                "min_val_images": self.min_val_images,
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
            min_val_images=int(d.get("min_val_images", 0)),
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


def encode_metrics(report: DetectionReport, examples: int, min_images: int = 0) -> dict[str, float]:
    """A report as the numbers that travel in a MetricRecord: undefined values become UNDEFINED, and so does every
    figure of fewer than `min_images` images (a tiny split's figures and fracture count would reveal labels)."""
    d = report.to_dict(curves=False)
    shown = examples >= max(min_images, 1)
    out = {k: (float(d[k]) if shown and d.get(k) is not None and math.isfinite(d[k]) else UNDEFINED) for k in REPORTED}
    out[NUM_EXAMPLES] = float(examples)
    out[N_POSITIVE] = float(report.n_positive) if shown else UNDEFINED
    return out


def decode_metrics(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """Numbers from a MetricRecord with UNDEFINED turned back into None (for records, cards and reports)."""
    return {k: (None if v == UNDEFINED else v) for k, v in metrics.items()}


@dataclass
class SiteReply:
    """Who answered a round's message and how it went: the SITE record of every reply.

    `name` is the name the site gives itself: the server records replies under the name it bound to the node
    (server/identity.py) and only compares the two. `status` is ``ok``, or why not (``refused: ...``,
    ``failed: ...``); `privacy` is the site's DP-SGD report (PRIVACY_FIELDS). Both sides keep only those fields,
    as short names and numbers, so nothing else a site puts there reaches the server, records, cards or logs.
    """

    name: str
    status: str = "ok"
    privacy: dict[str, Any] | None = None

    def to_record(self) -> dict[str, str]:
        out = {NAME: self.name, STATUS: self.status}
        if self.privacy is not None:
            out[PRIVACY] = json.dumps(_privacy_report(self.privacy))
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SiteReply:
        try:
            privacy = json.loads(str(record[PRIVACY])) if PRIVACY in record else None
        except (TypeError, ValueError):
            privacy = None
        return cls(
            str(record.get(NAME, ""))[:64],
            str(record.get(STATUS, "ok"))[:200],
            _privacy_report(privacy) if isinstance(privacy, dict) else None,
        )


def _privacy_report(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A site's privacy report: PRIVACY_FIELDS only, as numbers and short codes, counts coarsened."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in PRIVACY_FIELDS:
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = coarse_count(v) if k in COUNTS else coarse_sample_rate(v) if k in RATES else v
        elif isinstance(v, str) and len(v) <= 200 and k not in COUNTS:
            out[k] = v
    return out
