"""2-D coordinates for a map of the clusters and their items.

Cluster centres are laid out by classical MDS of their cosine distances (t-SNE on the centres looked a
little tidier but cost 0.2-0.3 s per run plus 1 s to import, a tenth of a whole Banking77 run). Each item is then placed around its
cluster's centre: its offset from the centre, projected on the cluster's two main directions, scaled so a
cluster's spread on the map grows with its size but stays within about a third of the distance to its
nearest neighbouring cluster. The cost is linear in the items; no item-level embedding of millions of
points (UMAP, t-SNE) is needed.
"""

from __future__ import annotations

import numpy as np


def centre_layout(centres: np.ndarray, seed: int = 0) -> np.ndarray:
    """Classical (Torgerson) MDS of the centres' cosine distances: the 2-D configuration whose distances
    best match theirs, from one eigendecomposition of a k x k matrix (milliseconds for a few hundred
    clusters; deterministic up to sign, which is fixed)."""
    k = len(centres)
    if k < 2:
        return np.zeros((k, 2), dtype=np.float32)
    d2 = np.clip(2.0 - 2.0 * (centres @ centres.T), 0.0, 4.0)  # squared euclidean of unit vectors
    j = np.eye(k) - 1.0 / k
    b = -0.5 * j @ d2 @ j
    vals, vecs = np.linalg.eigh(b)
    top = np.argsort(vals)[::-1][:2]
    xy = vecs[:, top] * np.sqrt(np.maximum(vals[top], 0.0))
    if xy.shape[1] < 2:
        xy = np.hstack([xy, np.zeros((k, 2 - xy.shape[1]))])
    xy *= np.where(xy[np.abs(xy).argmax(0), [0, 1]] < 0, -1.0, 1.0)  # a fixed orientation
    xy = xy - xy.mean(0)
    scale = np.abs(xy).max() or 1.0
    return (xy / scale * 10.0).astype(np.float32)  # within [-10, 10]


def item_layout(
    x: np.ndarray, labels: np.ndarray, centres: np.ndarray, centre_xy: np.ndarray, seed: int = 0
) -> np.ndarray:
    """Coordinates of every item (label -1: placed by its nearest centre, further out)."""
    n = len(x)
    out = np.zeros((n, 2), dtype=np.float32)
    k = len(centres)
    if k == 0 or n == 0:
        return out
    sizes = np.bincount(labels[labels >= 0], minlength=k).astype(np.float64)
    if k > 1:
        dd = np.sqrt(((centre_xy[:, None, :] - centre_xy[None, :, :]) ** 2).sum(-1))
        np.fill_diagonal(dd, np.inf)
        room = dd.min(1) / 3.0
    else:
        room = np.full(1, 3.0)
    radius = room * np.sqrt(np.maximum(sizes, 1.0) / max(sizes.max(), 1.0)) ** 0.5
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    for c in range(k):
        idx = order[bounds[c] : bounds[c + 1]]
        if not len(idx):
            continue
        off = x[idx] - centres[c]
        fit = off if len(idx) <= 2000 else off[rng.choice(len(idx), 2000, replace=False)]
        tiny = len(idx) < 3  # too few to have main directions: a small jitter around the centre
        p = rng.normal(size=(len(idx), 2)) * 0.01 if tiny else off @ _top2(fit - fit.mean(0))
        spread = np.percentile(np.sqrt((p**2).sum(1)), 95) or 1.0
        out[idx] = centre_xy[c] + p / spread * radius[c]
    return out


def _top2(a: np.ndarray) -> np.ndarray:
    """The two main directions (d x 2) of the rows of `a`, from the smaller of its two Gram matrices
    (an SVD of a few dozen 384-d rows per cluster cost most of the map's time)."""
    a = np.asarray(a, dtype=np.float64)
    if len(a) <= a.shape[1]:
        w, u = np.linalg.eigh(a @ a.T)
        top = np.argsort(w)[::-1][:2]
        v = a.T @ u[:, top] / np.sqrt(np.maximum(w[top], 1e-12))
    else:
        w, v = np.linalg.eigh(a.T @ a)
        v = v[:, np.argsort(w)[::-1][:2]]
    if v.shape[1] < 2:
        v = np.hstack([v, np.zeros((a.shape[1], 2 - v.shape[1]))])
    return v
