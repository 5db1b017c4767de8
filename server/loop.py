"""One federated round: send, screen, aggregate, evaluate, and the round's records.

Flower's `Strategy.start` runs rounds 1..N in one go; fracfl needs to resume at round k, to screen every update
before the strategy sees it, and to publish each global model. So the round is written here, and the strategy's
own `configure_*`/`aggregate_*` methods do the federated-learning part; server/run.py runs the rounds, records
them, and has each one checkpointed and published. A round's messages are built and read here only (the keys
they carry are common/protocol.py's).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.protocol import (
    ARRAYS,
    EVALUATE,
    METRICS,
    NUM_EXAMPLES,
    SITE,
    TRAIN,
    SiteReply,
    decode_metrics,
    kept_metrics,
)
from common.records import State, from_record, to_array, to_record
from server.history import RoundRecord
from server.identity import SiteNames
from server.updates import aggregate_buffers, check_examples, check_update, is_buffer, split_state

log = logging.getLogger("fracfl.server")


@dataclass
class RoundResult:
    round: int
    state: State
    records: list[RoundRecord] = field(default_factory=list)  # one per site and phase
    record: ArrayRecord | None = None  # `state` serialised for the next round


@dataclass
class _Reply:
    site: str
    status: str
    examples: int
    metrics: dict[str, float]
    message: Message
    state: State | None = None
    privacy: dict[str, Any] | None = None  # the site's DP-SGD report (epsilon, mechanism, ledger head)


def _read(msg: Message, phase: str, names: SiteNames) -> _Reply:
    """The bound site name, status and numbers (the phase's fields only) of a reply; error replies become a
    'failed' status, and a reply that names another site than its node's is rejected."""
    node = msg.metadata.src_node_id
    if msg.has_error():
        return _Reply(names.of(node), f"failed: {msg.error.reason}", 0, {}, msg)
    site = SiteReply.from_record(msg.content.get(SITE) or ConfigRecord({}))
    impostor = names.check(node, site.name)
    raw = dict(msg.content.get(METRICS) or {})
    examples = raw.pop(NUM_EXAMPLES, 0)
    keep = kept_metrics(phase)
    metrics = {k: float(v) for k, v in raw.items() if k in keep and isinstance(v, (int, float))}
    status = site.status
    if impostor is not None:
        log.warning("site %s (node %d): %s; its %s reply is rejected", names.of(node), node, impostor, phase)
        status, metrics = (f"rejected: {impostor}" if status == "ok" else status), {}
    problem = check_examples(examples) if status == "ok" else None
    n = int(examples) if problem is None and status == "ok" else 0
    return _Reply(names.of(node), f"rejected: {problem}" if problem else status, n, metrics, msg, privacy=site.privacy)


def _record(rnd: int, phase: str, r: _Reply) -> RoundRecord:
    return RoundRecord(rnd, r.site, phase, r.examples, r.status, decode_metrics(r.metrics), r.privacy)


def _subset(record: ArrayRecord, keys: Iterable[str]) -> ArrayRecord:
    """Part of a record, sharing its serialised arrays (no copy, no re-serialisation)."""
    return ArrayRecord({k: record[k] for k in keys})


def _send(
    grid: Grid, messages: Iterable[Message], record: ArrayRecord, timeout: float, names: SiteNames
) -> list[Message]:
    """Every site receives the full global state (parameters and buffers), whatever the strategy put in. Each
    destination's name is bound before it is sent to, so a site that dies in the round is still named."""
    messages = list(messages)
    for m in messages:
        m.content[ARRAYS] = record
        names.of(m.metadata.dst_node_id)
    return list(grid.send_and_receive(messages, timeout=timeout)) if messages else []


def run_round(
    grid: Grid,
    strategy: Strategy,
    rnd: int,
    state: State,
    config: dict[str, Any],
    names: SiteNames,
    *,
    max_update_norm: float,
    timeout: float,
    server_eval: Callable[[State], dict[str, float] | None] | None = None,
    equal_weights: bool = False,
    record: ArrayRecord | None = None,
) -> RoundResult:
    """One round: local training, screening, aggregation, site evaluation and the server's own evaluation.
    `equal_weights` averages sites equally (client-level DP's noise assumes it); `record` is `state` already
    serialised (the previous round's result), so it is not serialised again."""
    params, _ = split_state(state)
    full = record if record is not None else to_record(state)
    train = strategy.configure_train(rnd, _subset(full, params), ConfigRecord(config), grid)
    replies = [_read(m, TRAIN, names) for m in _send(grid, train, full, timeout, names)]
    result = RoundResult(rnd, state, record=full)
    accepted: list[_Reply] = []
    for r in replies:
        if r.status == "ok":
            try:
                r.state = from_record(r.message.content[ARRAYS])
                reason = check_update(r.state, state, max_update_norm)
            except Exception as e:  # noqa: BLE001  (a malformed reply must not end the run)
                reason = f"malformed reply ({type(e).__name__})"
            if reason is not None:
                r.status = f"rejected: {reason}"
                log.warning("round %d: update from site %s rejected: %s", rnd, r.site, reason)
            else:
                accepted.append(r)
        else:
            log.warning("round %d: site %s did not train: %s", rnd, r.site, r.status)
        result.records.append(_record(rnd, TRAIN, r))

    if accepted:
        for r in accepted:  # the strategy aggregates trainable parameters; buffers are combined below
            r.message.content[ARRAYS] = _subset(r.message.content[ARRAYS], params)
            r.message.content[METRICS] = MetricRecord({NUM_EXAMPLES: 1.0 if equal_weights else float(r.examples)})
        agg, _ = strategy.aggregate_train(rnd, [r.message for r in accepted])
        if agg is not None:
            aggregated = from_record(agg)
            new_params = {k: v.astype(state[k].dtype, copy=False) for k, v in aggregated.items()}
            buffers = aggregate_buffers([r.state for r in accepted], [max(r.examples, 1) for r in accepted])
            merged = {k: new_params[k] if k in new_params else buffers.get(k, state[k]) for k in state}  # fixed: kept
            problem = check_update(merged, state, max_update_norm * len(accepted))
            if problem is None:
                result.state, result.record = merged, _merged_record(merged, agg, aggregated, full)
            else:
                log.error("round %d: aggregate rejected (%s); the global model is unchanged", rnd, problem)
    else:
        log.warning("round %d: no update accepted; the global model is unchanged", rnd)

    if getattr(strategy, "fraction_evaluate", 1.0) > 0:
        full = result.record
        asked = strategy.configure_evaluate(rnd, _subset(full, params), ConfigRecord(config), grid)
        evals = _send(grid, asked, full, timeout, names)
        result.records += [_record(rnd, EVALUATE, _read(m, EVALUATE, names)) for m in evals]
    if server_eval is not None:
        pooled = server_eval(result.state)
        if pooled is not None:
            result.records.append(RoundRecord.pooled(rnd, pooled))
    return result


def _merged_record(merged: State, agg: ArrayRecord, aggregated: State, previous: ArrayRecord) -> ArrayRecord:
    """`merged` as a record: the aggregate's serialised parameters and the previous record's fixed tensors are
    reused as they are (no copy); only what changed apart from them (buffers, cast parameters) is serialised."""

    def array(k: str, v: np.ndarray) -> Array:
        if k in aggregated:
            return agg[k] if aggregated[k].dtype == v.dtype else to_array(v)
        if is_buffer(k):
            return to_array(v)
        return previous[k]  # fixed tensors: kept as they were

    return ArrayRecord({k: array(k, v) for k, v in merged.items()})
