"""The embedder interface every backend implements.

An embedder turns texts into unit-length float32 vectors. `model_id` names the exact model and build (the
embedding cache keys on it, so two builds that give different vectors never share cache entries), and
`dims` is the vector length. Backends import their heavy libraries lazily, when they first embed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np

Progress = Callable[[int, int], None]  # (texts done, texts in all)


class Embedder(ABC):
    #: exact identity of the vectors this embedder makes (model, weights, build); the cache key's prefix
    model_id: str = ""
    #: length of each vector
    dims: int = 0
    #: texts per call to the backend
    batch_size: int = 64
    #: the mean cosine between an item and its cluster's centre for a task-level cluster in this model's
    #: space (used by the clustering default to choose the number of clusters); None: calibrate from data
    cluster_cohesion: float | None = None

    @abstractmethod
    def _embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of one batch (any float dtype, any norm: `embed` normalises them)."""

    def embed(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        """Unit-length float32 vectors, one row per text, in order."""
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for s in range(0, len(texts), self.batch_size):
            out[s : s + self.batch_size] = self._embed_batch(texts[s : s + self.batch_size])
            if progress is not None:
                progress(min(s + self.batch_size, len(texts)), len(texts))
        return normalise(out)

    def describe(self) -> dict[str, object]:
        return {"model_id": self.model_id, "dims": self.dims, "kind": type(self).__name__}


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    np.maximum(n, 1e-12, out=n)
    return x / n
