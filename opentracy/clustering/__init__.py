"""Clustering: embed → (reduce) → cluster → represent → name, each stage swappable (one folder per stage,
a `_base.py` interface and one file per implementation), and the service that stores runs and keeps
cluster ids stable.

    from opentracy.clustering import Pipeline, ClusteringService, ClusteringConfig
"""

from opentracy.clustering.pipeline import ClusterStats, Pipeline, PipelineResult
from opentracy.clustering.service import (
    AssignResult,
    ClusterInfo,
    ClusteringConfig,
    ClusteringService,
    Member,
    RunInfo,
    Sample,
)

__all__ = [
    "AssignResult",
    "ClusterInfo",
    "ClusterStats",
    "ClusteringConfig",
    "ClusteringService",
    "Member",
    "Pipeline",
    "PipelineResult",
    "RunInfo",
    "Sample",
]
