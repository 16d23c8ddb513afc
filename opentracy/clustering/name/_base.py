"""The naming stage: a short name and a one-line description for each cluster, and which namer gave it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from pydantic import BaseModel, Field


@dataclass
class ClusterSummary:
    """What a namer sees of one cluster."""

    size: int
    keywords: list[str]
    representatives: list[str]
    diverse: list[str] = field(default_factory=list)


class ClusterName(BaseModel):
    """A namer's answer for one cluster (also the JSON schema an LLM namer must fill)."""

    name: str = Field(min_length=1, max_length=80, description="2 to 5 words naming the task")
    description: str = Field(
        default="", max_length=300, description="one sentence: what the requests in this cluster ask for"
    )


@dataclass
class Named:
    name: str
    description: str
    namer: str  # "keywords", "llm:<model>", or "keywords (llm failed: …)"


class Namer(ABC):
    id: str = "namer"

    @abstractmethod
    def name(self, clusters: list[ClusterSummary]) -> list[Named]:
        """One name per cluster, in order."""
