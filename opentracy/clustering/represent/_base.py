"""The representation stage: what each cluster is about (keywords, sample items, a place on a map)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np


class KeywordExtractor(ABC):
    name: str = "keywords"

    @abstractmethod
    def keywords(self, texts: Sequence[str], labels: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """For clusters 0..k-1 (label -1 is ignored): their top terms with scores, best first."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}
