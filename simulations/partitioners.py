"""Pure assignment rules that turn a list of images into per-site index lists (no file I/O, no validation).

Kept apart from `partition.py` so each rule can be tested and reasoned about on plain lists: every function is
deterministic in its arguments and returns, per site, sorted positions into the input list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np


def stable_key(text: str, seed: int) -> bytes:
    """Order key that is the same in every process and Python version (built-in `hash` is randomised)."""
    return hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=8).digest()


def assign_by_columns(
    ids: Sequence[str],
    flags: Sequence[Mapping[str, bool]],
    groups: Mapping[str, Sequence[str]],
    shared: str | None,
    seed: int,
) -> dict[str, list[int]]:
    """Site of each image from its metadata flags, as {site: sorted positions into `ids`}.

    An image whose flags match exactly one group goes to that group's site: this is the non-IID split a
    region-specialised hospital would see. Images with the `shared` flag or matching no group could have come
    from any site, so they are dealt round robin to all sites; images matching several groups (without the
    shared flag) are dealt round robin among those groups' sites only. Dealing follows a seeded stable hash of
    the image id, so the shared images are spread evenly and the result does not depend on input order.
    """
    sites = list(groups)
    out: dict[str, list[int]] = {s: [] for s in sites}
    pools: dict[tuple[str, ...], list[int]] = {}
    for i, f in enumerate(flags):
        matches = tuple(s for s in sites if any(f[c] for c in groups[s]))
        if len(matches) == 1 and not (shared and f[shared]):
            out[matches[0]].append(i)
        else:
            pool = matches if len(matches) > 1 and not (shared and f[shared]) else tuple(sites)
            pools.setdefault(pool, []).append(i)
    for pool, members in sorted(pools.items()):
        for k, i in enumerate(sorted(members, key=lambda i: (stable_key(ids[i], seed), ids[i]))):
            out[pool[k % len(pool)]].append(i)
    return {s: sorted(v) for s, v in out.items()}


def assign_iid(n: int, sites: int, rng: np.random.Generator) -> list[list[int]]:
    """Shuffle and cut into `sites` near-equal parts (sizes differ by at most one): the IID baseline."""
    return [sorted(part.tolist()) for part in np.array_split(rng.permutation(n), sites)]


def dirichlet_proportions(classes: int, sites: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """(classes, sites) shares: row c ~ Dir(alpha * 1). Small alpha puts most of a class on few sites."""
    p = rng.dirichlet(np.full(sites, float(alpha)), size=classes)
    bad = ~np.isfinite(p).all(axis=1) | (p.sum(axis=1) <= 0)
    if bad.any():  # underflow at tiny alpha: all mass on one random site, the limit of Dir(alpha -> 0)
        p[bad] = np.eye(sites)[rng.integers(sites, size=int(bad.sum()))]
    return p / p.sum(axis=1, keepdims=True)


def assign_dirichlet(
    labels: Sequence[int], proportions: np.ndarray, rng: np.random.Generator, min_per_site: int = 1
) -> list[list[int]]:
    """Split images by class: class c's images are shuffled and cut by `proportions[c]` (largest remainder).

    Then every site is topped up to `min_per_site` images (when there are enough images) by moving the
    last image of the currently largest site, so that no simulated hospital is empty. The move is
    deterministic and touches as few images as possible, so the drawn skew is kept.
    """
    labels = np.asarray(labels, dtype=int)
    sites = proportions.shape[1]
    parts: list[list[int]] = [[] for _ in range(sites)]
    for c in range(proportions.shape[0]):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        counts = _largest_remainder(proportions[c], len(members))
        for s, chunk in enumerate(np.split(members, np.cumsum(counts)[:-1])):
            parts[s].extend(chunk.tolist())
    need = min(min_per_site, len(labels) // sites)
    for s in range(sites):
        while len(parts[s]) < need:
            donor = max(range(sites), key=lambda d: (len(parts[d]), -d))
            parts[s].append(parts[donor].pop())
    return [sorted(p) for p in parts]


def _largest_remainder(shares: np.ndarray, n: int) -> np.ndarray:
    """Integer counts summing to `n`, as close to `shares * n` as possible; ties go to the lower site index."""
    exact = shares * n
    counts = np.floor(exact).astype(int)
    rest = n - int(counts.sum())
    order = sorted(range(len(shares)), key=lambda s: (-(exact[s] - counts[s]), s))
    for s in order[:rest]:
        counts[s] += 1
    return counts
