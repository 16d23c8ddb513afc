"""The optional reduction stage: vectors in, vectors out (same rows), before clustering."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class Reducer(ABC):
    name: str = "reducer"

    @abstractmethod
    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        """Rows of unit vectors in, rows of unit vectors out (any width)."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


class NoReduction(Reducer):
    name = "none"

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return x
