"""Reduction stage: NoReduction, NeighbourSmoothing (default), PCAReduction."""

from opentracy.clustering.reduce._base import NoReduction, Reducer
from opentracy.clustering.reduce.neighbours import NeighbourSmoothing
from opentracy.clustering.reduce.pca import PCAReduction

__all__ = ["NeighbourSmoothing", "NoReduction", "PCAReduction", "Reducer"]
