"""HDBSCAN (scikit-learn's) for those who want density clustering: it picks k itself and leaves low-density
items out (-1). On raw sentence embeddings it leaves many items out (40-60% on Banking77: high dimensions
flatten densities); pair it with a reduction, or use the default clusterer."""

from __future__ import annotations

from typing import Any

import numpy as np

from opentracy.clustering.cluster._base import Clusterer, Partition


class HDBSCANClusterer(Clusterer):
    name = "hdbscan"

    def __init__(self, min_cluster_size: int = 10, min_samples: int | None = None) -> None:
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples

    def fit(
        self, x: np.ndarray, *, original: np.ndarray | None = None, cohesion: float | None = None
    ) -> Partition:
        from sklearn.cluster import HDBSCAN

        if len(x) < max(2, self.min_cluster_size):
            return Partition(-np.ones(len(x), dtype=np.int64), {"k": 0})
        labels = HDBSCAN(min_cluster_size=self.min_cluster_size, min_samples=self.min_samples).fit_predict(x)
        return Partition(labels.astype(np.int64), {"k": int(labels.max()) + 1, "chosen_by": "density"})

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "min_cluster_size": self.min_cluster_size, "min_samples": self.min_samples}
