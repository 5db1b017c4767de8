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
from client.models.requested import pending, satisfied
from client.models.store import NODE_KEY as MODELS_DIR
from client.models.store import ModelStore
from client.privacy import PrivacyRefused, check_mode, site_budget
from client.site import Site, resolve_site, site_store
from client.task import evaluate_site, train_site
from common.errors import FracflError
from common.protocol import (
    ARRAYS,
    ASK_ROUND,
    ASK_VERSIONS,
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
    NAME,
    NUM_EXAMPLES,
    PROXIMAL_MU,
    REAL_SITE,
    REQUESTED,
    SERVER_ROUND,
    SITE,
    SITES_MANIFEST,
    TRAIN,
    SiteJob,
    SiteReply,
    requested_versions,
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
    if site.models is not None:  # the site keeps the global model it received (`fracfl site fetch received`)
        numpy = {k: v.numpy() for k, v in state.items()}
        keep_received(
            ModelStore(site.models),
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


def _manifest(msg: Message) -> str | None:
    """The simulation's sites manifest a query carries (simulated sites only; a real site's node config names all)."""
    return msg.content[CONFIG].get(SITES_MANIFEST) if CONFIG in msg.content else None


@app.query(DELIVER)
def deliver(msg: Message, context: Context) -> Message:
    """A published version sent after a run (server/deliver.py): checked against its card's hashes and left in the
    model store's inbox when the site has one (node config `models-dir`), which satisfies the site's request for it;
    installing and promoting it are the site's decisions (`fracfl site fetch|promote`)."""
    record = msg.content[DELIVERY]
    name = f"node-{context.node_id}"
    try:
        name, models = site_store(context.node_config, context.node_id, _manifest(msg))
        status = _receive(ModelStore(models), record, name) if models else f"not stored: no model store ({MODELS_DIR})"
    except (FracflError, OSError, ValueError) as e:
        log.warning("site %s refused delivered %s: %s", name, record.get(DELIVERED_VERSION), e)
        status = f"refused: {type(e).__name__} (see the site's log)"
    return Message(RecordDict({SITE: ConfigRecord(SiteReply(name, status).to_record())}), reply_to=msg)


def _receive(store: ModelStore, record: ConfigRecord, name: str) -> str:
    """Check a delivered version into the inbox and clear the site's request for it."""
    files = dict(zip(record[DELIVERED_NAMES], record[DELIVERED_FILES], strict=True))
    folder = receive(store, str(record[DELIVERED_VERSION]), files)
    log.info("site %s received %s into %s", name, folder.name, folder)
    try:
        if satisfied(store, folder.name):
            log.info("site %s: its request for %s is satisfied", name, folder.name)
    except (FracflError, OSError) as e:  # the version is stored all the same
        log.error("site %s: %s stored, but its request was not cleared: %s", name, folder.name, e)
    return "stored"


@app.query(ASK_VERSIONS)
def version_request(msg: Message, context: Context) -> Message:
    """The published versions this site asked for (`fracfl site request`), asked after a run with
    `federation.answer_requests`: its name and version names only (VERSION_REQUEST_FIELDS). A site without a model
    store, or whose requests cannot be read (logged here, at the site), asks for none."""
    name = f"node-{context.node_id}"
    answer: dict[str, str | list[str]] = {}
    try:
        name, models = site_store(context.node_config, context.node_id, _manifest(msg))
        answer[NAME] = name
        wanted = requested_versions(list(pending(ModelStore(models)))) if models is not None else []
    except (FracflError, OSError, ValueError) as e:
        log.error("site %s cannot answer the server's version-request query: %s", name, e)
        wanted = []
    if wanted:
        answer[REQUESTED] = wanted
        log.info("site %s asks for %s", name, ", ".join(wanted))
    return Message(RecordDict({SITE: ConfigRecord(answer)}), reply_to=msg)
