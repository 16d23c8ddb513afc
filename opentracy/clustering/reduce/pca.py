"""PCA to fewer dimensions (then back to unit length): cheaper clustering of very many items."""

from __future__ import annotations

from typing import Any

import numpy as np

from opentracy.clustering.reduce._base import Reducer


class PCAReduction(Reducer):
    name = "pca"

    def __init__(self, dims: int = 64, seed: int = 0, sample: int = 50_000) -> None:
        self.dims = dims
        self.seed = seed
        self.sample = sample

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        if x.shape[1] <= self.dims or len(x) <= self.dims:
            return x
        rng = np.random.default_rng(self.seed)
        fit = x if len(x) <= self.sample else x[rng.choice(len(x), self.sample, replace=False)]
        mean = fit.mean(0)
        # top right-singular vectors of the centred sample
        _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
        z = (x - mean) @ vt[: self.dims].T
        return (z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dims": self.dims}
