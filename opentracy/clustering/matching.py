"""Stable cluster ids: a new run's clusters take the ids of the previous run's clusters they match.

Matching is one-to-one by centroid: the assignment that maximises the total cosine similarity between
matched centroids (Hungarian algorithm, scipy's linear_sum_assignment), keeping only pairs at least
`threshold` similar. A cluster that matches nothing gets a new id; one that split keeps its id in the
closer half. Re-running on the same items reproduces the same clusters and so the same ids; on Banking77,
clusters found on the test split kept their ids when re-run on train+test wherever a counterpart existed
(docs/decisions/0023).
"""

from __future__ import annotations

import numpy as np


def match(
    previous: np.ndarray, current: np.ndarray, threshold: float = 0.85
) -> list[tuple[int | None, float]]:
    """For each current centroid: (index of the matched previous centroid or None, its cosine)."""
    if len(previous) == 0 or len(current) == 0 or previous.shape[1] != current.shape[1]:
        return [(None, 0.0) for _ in range(len(current))]
    from scipy.optimize import linear_sum_assignment

    sim = np.asarray(current, np.float64) @ np.asarray(previous, np.float64).T
    rows, cols = linear_sum_assignment(-sim)
    out: list[tuple[int | None, float]] = [(None, float(sim[i].max())) for i in range(len(current))]
    for r, c in zip(rows, cols, strict=True):
        if sim[r, c] >= threshold:
            out[r] = (int(c), float(sim[r, c]))
    return out
