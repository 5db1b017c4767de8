"""Fault injection for robustness simulations: make chosen simulated sites send a broken update.

Research coordinators compare robust strategies (FedMedian, FedTrimmedAvg, Krum) and the server's own screening
against a site whose update is corrupt. `federation.faults={site_2: nan}` makes that site's reply carry NaNs
(`nan`), an exploding update (`scale`) or a mis-shaped tensor (`shape`). The mod acts only in simulations (messages
that carry a site manifest), never in a deployment.
"""

from __future__ import annotations

import json

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from common.protocol import ARRAYS, CONFIG, FAULT_PLAN, NAME, SITE, SITES_MANIFEST

FAULTS = ("nan", "scale", "shape")


def corrupt(state: dict[str, torch.Tensor], fault: str) -> dict[str, torch.Tensor]:
    """A copy of `state` broken in the named way (only floating tensors are touched)."""
    out = {k: v.clone() for k, v in state.items()}
    first = next(k for k, v in out.items() if v.is_floating_point())
    if fault == "nan":
        out[first].view(-1)[0] = float("nan")
    elif fault == "scale":
        out = {k: (v * 1e6 if v.is_floating_point() else v) for k, v in out.items()}
    elif fault == "shape":
        out[first] = out[first].reshape(-1)[:-1].contiguous()
    return out


def fault_injection_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower client mod: corrupt this site's training reply when the simulation's fault plan names it."""
    reply = call_next(msg, context)
    cfg = msg.content.get(CONFIG) or {}
    plan = json.loads(str(cfg.get(FAULT_PLAN, "{}"))) if SITES_MANIFEST in cfg else {}
    site = reply.content.get(SITE) if not reply.has_error() else None
    fault = plan.get(str(site.get(NAME))) if site is not None else None
    if fault in FAULTS and ARRAYS in reply.content:
        reply.content[ARRAYS] = ArrayRecord(corrupt(reply.content[ARRAYS].to_torch_state_dict(), fault))
    return reply
