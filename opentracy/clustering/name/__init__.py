"""Naming stage: KeywordNamer (offline), LLMNamer (through the gateway)."""

from opentracy.clustering.name._base import ClusterName, ClusterSummary, Named, Namer
from opentracy.clustering.name.keywords import KeywordNamer
from opentracy.clustering.name.llm import LLMNamer

__all__ = ["ClusterName", "ClusterSummary", "KeywordNamer", "LLMNamer", "Named", "Namer"]
