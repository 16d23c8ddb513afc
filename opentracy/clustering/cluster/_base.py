"""The clustering stage: vectors in, one label per row out (-1: an outlier the clusterer left out)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Partition:
    labels: np.ndarray  # int64, 0..k-1, or -1 for an item left out
    info: dict[str, Any] = field(default_factory=dict)  # how it was found (k chosen, why, timings)


class Clusterer(ABC):
    name: str = "clusterer"

    @abstractmethod
    def fit(
        self, x: np.ndarray, *, original: np.ndarray | None = None, cohesion: float | None = None
    ) -> Partition:
        """Cluster the rows of `x` (unit vectors, possibly reduced). `original` are the embedder's own
        vectors (for measuring cohesion), `cohesion` the embedder's task-level cohesion hint, if known."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}
