"""fracfl's Flower ClientApp: a thin edge that turns messages into calls of `client.task`.

Replies carry the new weights (ArrayRecord, training only), aggregate numbers (MetricRecord) and the site's name
and status (ConfigRecord). A site that cannot take part answers with its status instead of failing the round.
"""

from __future__ import annotations

import logging
from typing import Callable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.faults import fault_injection_mod
from client.site import Site, resolve_site
from client.task import evaluate_site, train_site
from common.errors import FracflError
from common.protocol import SiteJob

app = ClientApp()
log = logging.getLogger("fracfl.client")
Work = Callable[[Site, dict, SiteJob, ConfigRecord], tuple[dict | None, dict[str, float]]]


def _handle(msg: Message, context: Context, what: str, work: Work) -> Message:
    """Resolve the site, run `work`, and wrap its (state, metrics) or the reason it failed into a reply."""
    cfg = msg.content["config"]
    name = str(context.node_config.get("site-name", f"node-{context.node_id}"))
    try:
        site = resolve_site(context.node_config, cfg.get("sites-manifest"))
        name = site.name
        state, metrics = work(site, msg.content["arrays"].to_torch_state_dict(), SiteJob.from_json(cfg["job"]), cfg)
    except Exception as e:  # noqa: BLE001  (the details, which may name patient files, stay in the site's log)
        log.exception("site %s cannot %s: %s", name, what, e)
        kind = "invalid local data or configuration" if isinstance(e, FracflError) else "internal error"
        state, metrics, status = None, {"num-examples": 0.0}, f"failed: {type(e).__name__} ({kind}; see the site's log)"
    else:
        status = "ok"
    content = RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord({"name": name, "status": status})})
    if state is not None:
        content["arrays"] = ArrayRecord(state)
    return Message(content, reply_to=msg)


@app.train(mods=[fault_injection_mod])
def train(msg: Message, context: Context) -> Message:
    return _handle(msg, context, "train", lambda site, state, job, cfg: train_site(
        site.data, state, job, int(cfg["server-round"]), float(cfg.get("proximal-mu", 0.0))))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _handle(msg, context, "evaluate", lambda site, state, job, cfg: (None, evaluate_site(site.data, state, job)))
