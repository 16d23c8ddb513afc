"""What every filter is: a name, an action, and `check(rows, ctx)` giving each row a Hit (why) or None.

Filters are usable alone:

    hits = PIIFilter(PIIRule(action="redact")).check(rows)
    [(r.row_id, h.reason) for r, h in zip(rows, hits) if h]

The pipeline (pipeline.py) runs them in order, each over the rows the earlier ones kept, and records the first
rule that dropped a row with its reason.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from opentracy.distillation.curation.rows import CurationRow

Action = Literal["drop", "flag", "redact"]


@dataclass(slots=True)
class Hit:
    reason: str
    rule: str | None = None  # a sub-rule name (e.g. exact_duplicate) where a filter has several
    edit: dict[str, Any] | None = None  # new prompt / response for a redacting filter
    detail: dict[str, Any] | None = None


@dataclass
class FilterContext:
    """What filters may consult besides the rows: judge scores by row id (fresh, or from metadata)."""

    scores: Mapping[str, float | None] = field(default_factory=dict)
    flagged: Mapping[str, str] = field(default_factory=dict)  # row id -> why the judge flagged it
    held: frozenset[str] = frozenset()  # rows held for human review: no automatic drop by judge flags

    def score(self, row: CurationRow) -> float | None:
        s = self.scores.get(row.row_id)
        if s is None:
            s = row.metadata.get("judge_score")
            if isinstance(s, bool) or not isinstance(s, (int, float)):
                return None
        return float(s)


class Filter(ABC):
    name: str = "filter"
    action: Action = "drop"

    @abstractmethod
    def check(self, rows: Sequence[CurationRow], ctx: FilterContext | None = None) -> list[Hit | None]:
        """One entry per row: a Hit when the rule applies to it, else None."""

    def notes(self) -> dict[str, Any]:
        """What the report should say about how this filter ran (targets chosen, fallbacks taken)."""
        return {}
