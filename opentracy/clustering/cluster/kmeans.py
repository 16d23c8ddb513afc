"""k-means with a given k (spherical, on numpy's matrix product). For millions of rows it trains on a
sample (`sample`, mini-batch style) and assigns every row once; no outliers of its own."""

from __future__ import annotations

from typing import Any

import numpy as np

from opentracy.clustering.cluster._base import Clusterer, Partition
from opentracy.clustering.cluster._kmeans import spherical_kmeans


class KMeansClusterer(Clusterer):
    name = "kmeans"

    def __init__(self, n_clusters: int, *, sample: int | None = 200_000, iters: int = 20, seed: int = 0):
        self.n_clusters = n_clusters
        self.sample = sample
        self.iters = iters
        self.seed = seed

    def fit(
        self, x: np.ndarray, *, original: np.ndarray | None = None, cohesion: float | None = None
    ) -> Partition:
        if len(x) == 0:
            return Partition(np.zeros(0, dtype=np.int64), {"k": 0})
        _, labels = spherical_kmeans(x, self.n_clusters, iters=self.iters, sample=self.sample, seed=self.seed)
        return Partition(labels, {"k": int(labels.max()) + 1, "chosen_by": "given"})

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "n_clusters": self.n_clusters, "seed": self.seed}
