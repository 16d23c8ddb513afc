"""Clustering stage: AutoClusterer (default; picks k), KMeansClusterer (given k), HDBSCANClusterer."""

from opentracy.clustering.cluster._base import Clusterer, Partition
from opentracy.clustering.cluster.auto import AutoClusterer
from opentracy.clustering.cluster.density import HDBSCANClusterer
from opentracy.clustering.cluster.kmeans import KMeansClusterer

__all__ = ["AutoClusterer", "Clusterer", "HDBSCANClusterer", "KMeansClusterer", "Partition"]
