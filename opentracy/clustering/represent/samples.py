"""Sample items of a cluster: the most representative (closest to its centre) and a diverse set (maximal
marginal relevance: close to the centre, far from the samples already picked). Identical texts are shown
once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def representatives(members: np.ndarray, sims: np.ndarray, texts: Sequence[str], n: int) -> list[int]:
    """Indices (into the full item list) of the n members closest to the centre, distinct texts only."""
    order = members[np.argsort(-sims, kind="stable")]
    out: list[int] = []
    seen: set[str] = set()
    for i in order:
        t = texts[i].strip().lower()
        if t in seen:
            continue
        seen.add(t)
        out.append(int(i))
        if len(out) >= n:
            break
    return out


def diverse(
    x: np.ndarray,
    members: np.ndarray,
    sims: np.ndarray,
    texts: Sequence[str],
    n: int,
    *,
    relevance: float = 0.5,
    pool: int = 2000,
    seed: int = 0,
) -> list[int]:
    """Maximal marginal relevance over (a sample of) the members: each pick maximises
    relevance * cos(item, centre) - (1 - relevance) * max cos(item, picked)."""
    if len(members) == 0:
        return []
    if len(members) > pool:
        pick = np.random.default_rng(seed).choice(len(members), pool, replace=False)
        members, sims = members[pick], sims[pick]
    v = x[members]
    chosen: list[int] = []
    seen: set[str] = set()
    max_sim = np.zeros(len(members), dtype=np.float32)
    score_rel = relevance * sims
    blocked = np.zeros(len(members), dtype=bool)
    while len(chosen) < n and not blocked.all():
        score = score_rel - (1 - relevance) * max_sim if chosen else score_rel.copy()
        score[blocked] = -np.inf
        j = int(np.argmax(score))
        blocked[j] = True
        t = texts[members[j]].strip().lower()
        if t in seen:
            continue
        seen.add(t)
        chosen.append(j)
        max_sim = np.maximum(max_sim, v @ v[j]) if len(chosen) > 1 else (v @ v[j]).astype(np.float32)
        blocked |= max_sim > 0.999  # near-duplicates of a pick
    return [int(members[j]) for j in chosen]
