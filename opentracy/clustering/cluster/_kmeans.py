"""Spherical k-means on unit vectors, written on numpy's matrix product.

Measured on this project's 2-core machine (docs/decisions/0021-clustering-algorithm.md): one Lloyd pass is one float32 matrix
product (BLAS), an argmax, and a sparse sum; scikit-learn's KMeans and faiss's Kmeans ran 2-40x slower here
because their OpenMP threads fight over the two cores. Used for micro-clusters (many small groups that the
Ward stage then merges) and for large-k assignment; rows are processed in blocks so memory stays bounded.
"""

from __future__ import annotations

import numpy as np

BLOCK = 8192


def nearest(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of x (unit vectors): the index of the most similar centre and that cosine similarity."""
    n = len(x)
    idx = np.empty(n, dtype=np.int64)
    sim = np.empty(n, dtype=np.float32)
    ct = np.ascontiguousarray(centres.T, dtype=np.float32)
    for s in range(0, n, BLOCK):
        block = x[s : s + BLOCK] @ ct
        i = block.argmax(1)
        idx[s : s + BLOCK] = i
        sim[s : s + BLOCK] = block[np.arange(len(i)), i]
    return idx, sim


def sums(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-label sums of the rows of x (a sparse one-hot product: fast for any n and k)."""
    import scipy.sparse as sp

    n = len(x)
    onehot = sp.csr_matrix((np.ones(n, dtype=np.float32), (labels, np.arange(n))), shape=(k, n))
    return np.asarray(onehot @ x, dtype=np.float64)


def spherical_kmeans(
    x: np.ndarray,
    k: int,
    *,
    iters: int = 10,
    sample: int | None = None,
    seed: int = 0,
    init: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """k-means on unit vectors (cosine). Returns (unit centres k x d, labels of every row).

    `sample` trains on that many random rows (mini-batch style for large inputs) and then assigns all rows
    once. Starts from `init` centres when given, else from k distinct random rows (deterministic per
    seed); an emptied centre is re-seeded with the row worst served by its centre.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    train = x if sample is None or sample >= n else x[np.sort(rng.choice(n, sample, replace=False))]
    if init is not None:
        c = np.array(init, dtype=np.float32)
    else:
        c = train[rng.choice(len(train), min(k, len(train)), replace=False)].copy()
    k = len(c)
    for _ in range(max(1, iters)):
        lab, sim = nearest(train, c)
        s = sums(train, lab, k)
        norm = np.linalg.norm(s, axis=1)
        empty = norm == 0
        c_new = np.where(empty[:, None], 0.0, s / np.where(empty, 1.0, norm)[:, None]).astype(np.float32)
        if empty.any():  # re-seed empty centres with the worst-served rows
            worst = np.argsort(sim)[: int(empty.sum())]
            c_new[np.flatnonzero(empty)[: len(worst)]] = train[worst]
        shift = float(np.abs(c_new - c).max())
        c = c_new
        if shift < 1e-4:
            break
    labels, _ = nearest(x, c)
    return c, labels
