"""fracfl's Flower ClientApp: a thin edge that turns messages into calls of `client.task`.

Replies carry the new weights (ArrayRecord, training only), aggregate numbers (MetricRecord) and the site's name
and status (ConfigRecord): exactly the fields common/protocol.py allows, counts coarsened there. A site that cannot
take part answers with its status instead of failing the round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from client.continual.config import site_replay
from client.continual.disagreement import round_request_answer
from client.faults import fault_injection_mod
from client.models.fetch import keep_received, receive
from client.models.store import NODE_KEY as MODELS_DIR
from client.models.store import ModelStore
from client.privacy import PrivacyRefused, check_mode, site_budget
from client.site import Site, resolve_site
from client.task import evaluate_site, train_site
from common.errors import FracflError
from common.protocol import (
    ARRAYS,
    ASK_ROUND,
    CONFIG,
    DELIVER,
    DELIVERED_FILES,
    DELIVERED_NAMES,
    DELIVERED_VERSION,
    DELIVERY,
    EVALUATE,
    JOB,
    METRICS,
    MODEL_VERSION,
    NUM_EXAMPLES,
    PROXIMAL_MU,
    REAL_SITE,
    SAFE_NAME,
    SERVER_ROUND,
    SITE,
    SITES_MANIFEST,
    TRAIN,
    SiteJob,
    SiteReply,
    site_metrics,
)
from common.records import to_record, torch_state

app = ClientApp()
log = logging.getLogger("fracfl.client")
Work = Callable[[Site, dict, SiteJob, ConfigRecord, Context], tuple[dict | None, dict[str, float], dict | None]]


def _handle(msg: Message, context: Context, what: str, work: Work) -> Message:
    """Resolve the site, run `work`, and wrap its (state, metrics) or the reason it failed into a reply."""
    cfg = msg.content[CONFIG]
    name, simulated = str(context.node_config.get("site-name", f"node-{context.node_id}")), False
    try:
        site = resolve_site(context.node_config, cfg.get(SITES_MANIFEST))
        name, simulated = site.name, site.simulated
        state, metrics, privacy = work(site, torch_state(msg.content[ARRAYS]), SiteJob.parse(cfg[JOB]), cfg, context)
    except PrivacyRefused as e:  # its message carries numbers only, so the server may show it
        log.warning("site %s refuses to %s: %s", name, what, e)
        state, metrics, privacy, status = None, {NUM_EXAMPLES: 0.0}, e.report, f"refused: {e}"
    except Exception as e:
        log.exception("site %s cannot %s: %s", name, what, e)
        kind = "invalid local data or configuration" if isinstance(e, FracflError) else "internal error"
        state, metrics, privacy = None, {NUM_EXAMPLES: 0.0}, None
        status = f"failed: {type(e).__name__} ({kind}; see the site's log)"
    else:
        status = "ok"
    reply = SiteReply(name, status, privacy)
    numbers = site_metrics(what, metrics, simulated)
    content = RecordDict({METRICS: MetricRecord(numbers), SITE: ConfigRecord(reply.to_record())})
    if state is not None:
        content[ARRAYS] = to_record({k: v.numpy() for k, v in state.items()})
    return Message(content, reply_to=msg)


def _train(site: Site, state: dict, job: SiteJob, cfg: ConfigRecord, context: Context):
    check_mode(site.name, context.node_config, job.privacy)
    budget = site_budget(site.name, context.node_config, job.privacy) if job.privacy.mode == "dp_sgd" else None
    if MODELS_DIR in context.node_config:  # the site keeps the global model it received (`fracfl site fetch received`)
        numpy = {k: v.numpy() for k, v in state.items()}
        keep_received(
            ModelStore(str(context.node_config[MODELS_DIR])),
            numpy,
            job.spec,
            job.train.imgsz,
            str(cfg.get(MODEL_VERSION, "")) or "received",
        )
    return train_site(
        site.name,
        site.data,
        state,
        job,
        int(cfg[SERVER_ROUND]),
        proximal_mu=float(cfg.get(PROXIMAL_MU, 0.0)),
        budget=budget,
        model_version=str(cfg.get(MODEL_VERSION, "")),
        replay=site_replay(context.node_config, job.train.replay),
    )


def client_dp_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's fixedclipping_mod when the server runs client-level DP (its wrapper sends a clipping norm)."""
    cfg = msg.content.get(CONFIG)
    if cfg is not None and KEY_CLIPPING_NORM in cfg:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


@app.train(mods=[fault_injection_mod, client_dp_mod])
def train(msg: Message, context: Context) -> Message:
    return _handle(msg, context, TRAIN, _train)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Whether this SuperNode serves a real site (its node config names its data): asked before a run builds
    simulated sites, so a hospital's node is never handed a simulation. The answer (QUERY_FIELDS) goes to whoever
    submits a run, so it says nothing else; the server names the node itself (server/identity.py)."""
    answer = {REAL_SITE: "data-dir" in context.node_config}
    return Message(RecordDict({SITE: ConfigRecord(answer)}), reply_to=msg)


@app.query(ASK_ROUND)
def round_request(msg: Message, context: Context) -> Message:
    """Whether this site requests a round, and its reviewers' disagreement rate coarsened: the site's own decision
    on its own settings (client/continual/disagreement.py), asked before a run with `federation.round_requests`."""
    manifest = msg.content[CONFIG].get(SITES_MANIFEST) if CONFIG in msg.content else None
    answer = round_request_answer(context.node_config, manifest)
    return Message(RecordDict({SITE: ConfigRecord(answer)}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _handle(
        msg,
        context,
        EVALUATE,
        lambda site, state, job, cfg, context: (None, evaluate_site(site.data, state, job, site.min_val_images), None),
    )


@app.query(DELIVER)
def deliver(msg: Message, context: Context) -> Message:
    """A published version sent after a run (server/deliver.py): checked against its card's hashes and left in the
    model store's inbox when the node config names `models-dir`; installing and promoting it are the site's
    decisions (`fracfl site fetch|promote`)."""
    name = str(context.node_config.get("site-name", f"node-{context.node_id}"))
    record = msg.content[DELIVERY]
    version = str(record[DELIVERED_VERSION])
    if MODELS_DIR not in context.node_config:
        status = f"not stored: node config has no {MODELS_DIR}"
    else:
        try:
            files = dict(zip(record[DELIVERED_NAMES], record[DELIVERED_FILES], strict=True))
            folder = receive(ModelStore(str(context.node_config[MODELS_DIR])), version, files)
        except (FracflError, OSError, ValueError) as e:
            log.warning("site %s refused delivered %s: %s", name, version, e)
            status = f"refused: {type(e).__name__} (see the site's log)"
        else:
            log.info("site %s received %s into %s", name, version, folder)
            status = "stored"
    reply = SiteReply(name if SAFE_NAME.match(name) else f"node-{context.node_id}", status)
    return Message(RecordDict({SITE: ConfigRecord(reply.to_record())}), reply_to=msg)
