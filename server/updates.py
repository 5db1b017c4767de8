"""Checking and combining site updates in plain numpy, before and beside the Flower strategy.

Every returned update is checked (keys, shapes, dtypes, finite values, size of the change) so one bad site cannot
poison the global model. Normalisation statistics and integer counters are not trainable: they are combined here
(example-weighted mean for statistics, maximum for counters, dtype kept) instead of going through a server
optimiser such as FedAdam, which could turn a variance negative or an integer into a float.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

State = dict[str, np.ndarray]
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def is_buffer(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in BUFFER_SUFFIXES


def is_fixed(name: str) -> bool:
    """Buffers, and the DFL projection: a constant (0..reg_max-1) that no site trains, so no strategy (or DP
    noise) may touch it."""
    return is_buffer(name) or ".dfl." in f".{name}"


def split_state(state: Mapping[str, np.ndarray]) -> tuple[State, State]:
    """(trainable parameters, buffers and fixed tensors) of a flat state."""
    params = {k: v for k, v in state.items() if not is_fixed(k)}
    fixed = {k: v for k, v in state.items() if is_fixed(k)}
    return params, fixed


def check_update(state: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], max_norm: float) -> str | None:
    """Why `state` must not be aggregated, or None when it is fine. Cheap checks first."""
    missing, extra = set(reference) - set(state), set(state) - set(reference)
    if missing or extra:
        show = lambda s: ", ".join(sorted(s)[:3]) + (" ..." if len(s) > 3 else "")
        return f"wrong keys (missing: {show(missing) or '-'}; unexpected: {show(extra) or '-'})"
    sq = 0.0
    for k, ref in reference.items():
        v = state[k]
        if v.shape != ref.shape:
            return f"wrong shape for {k}: {v.shape}, expected {ref.shape}"
        if v.dtype != ref.dtype:
            return f"wrong dtype for {k}: {v.dtype}, expected {ref.dtype}"
        if not np.issubdtype(v.dtype, np.floating):
            continue
        if is_buffer(k):
            if not np.isfinite(v).all():
                return f"non-finite values in {k}"
            if k.endswith("running_var") and (v < 0).any():
                return f"negative variance in {k}"
        else:  # one pass: a NaN or inf anywhere makes the squared change non-finite
            d = (v - ref).ravel()
            sq += float(np.dot(d, d))
    if not np.isfinite(sq):
        bad = next(
            (k for k, v in state.items() if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all()), None
        )
        if bad is not None:
            return f"non-finite values in {bad}"
    norm = sq**0.5
    if not norm <= max_norm:
        return f"update norm {norm:.3g} exceeds the bound {max_norm:.3g} (federation.max_update_norm)"
    return None


MAX_EXAMPLES = 10_000_000


def check_examples(value: object) -> str | None:
    """Why a reported example count cannot weight an average, or None (it must be a finite count >= 1)."""
    try:
        n = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"num-examples is not a number ({type(value).__name__})"
    if not np.isfinite(n) or n < 1 or n > MAX_EXAMPLES or n != int(n):
        return f"num-examples {n!r} is not a count between 1 and {MAX_EXAMPLES}"
    return None


def aggregate_buffers(states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> State:
    """Example-weighted mean of float buffers, maximum of integer counters; dtypes preserved."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    out: State = {}
    for k in states[0]:
        if not is_buffer(k):
            continue
        stack = np.stack([s[k] for s in states])
        if np.issubdtype(stack.dtype, np.floating):
            out[k] = np.asarray(np.tensordot(w, stack.astype(np.float64), axes=1), dtype=stack.dtype)
        else:
            out[k] = np.asarray(stack.max(axis=0))
    return out
