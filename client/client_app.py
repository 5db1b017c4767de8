"""fracfl's Flower ClientApp: a thin edge that turns messages into calls of `client.task`.

Replies carry the new weights (ArrayRecord), aggregate numbers (MetricRecord) and the site's name and status
(ConfigRecord). A site that cannot take part answers with its status instead of failing the round.
"""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.site import resolve_site
from client.task import SiteJob, evaluate_site, train_site
from common.errors import FracflError
from client.faults import fault_injection_mod

app = ClientApp()
log = logging.getLogger("fracfl.client")


def _status_reply(msg: Message, name: str, status: str) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": 0.0}),
                               "site": ConfigRecord({"name": name, "status": status})}), reply_to=msg)


@app.train(mods=[fault_injection_mod])
def train(msg: Message, context: Context) -> Message:
    cfg = msg.content["config"]
    name = str(context.node_config.get("site-name", f"node-{context.node_id}"))
    try:
        site = resolve_site(context.node_config, cfg.get("sites-manifest"))
        name = site.name
        state, metrics = train_site(site.data, msg.content["arrays"].to_torch_state_dict(), SiteJob.from_json(cfg["job"]),
                                    int(cfg["server-round"]), float(cfg.get("proximal-mu", 0.0)))
    except FracflError as e:
        log.error("site %s cannot train: %s", name, e)
        return _status_reply(msg, name, f"failed: {e}")
    content = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(metrics),
                          "site": ConfigRecord({"name": name, "status": "ok"})})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = msg.content["config"]
    name = str(context.node_config.get("site-name", f"node-{context.node_id}"))
    try:
        site = resolve_site(context.node_config, cfg.get("sites-manifest"))
        name = site.name
        metrics = evaluate_site(site.data, msg.content["arrays"].to_torch_state_dict(), SiteJob.from_json(cfg["job"]))
    except FracflError as e:
        log.error("site %s cannot evaluate: %s", name, e)
        return _status_reply(msg, name, f"failed: {e}")
    return Message(RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord({"name": name, "status": "ok"})}),
                   reply_to=msg)
