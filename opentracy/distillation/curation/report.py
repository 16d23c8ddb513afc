"""The curation report: what went in, what came out, and why every other row did not."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

HISTOGRAM_BINS = 10


class RuleReport(BaseModel):
    name: str
    stage: str  # "rules" (before the judge), "dedup", "judge"
    action: str  # drop | flag | redact
    dropped: dict[str, int] = Field(default_factory=dict)  # by (sub-)rule name
    flagged: int = 0
    redacted: int = 0
    notes: dict[str, Any] = Field(default_factory=dict)


class JudgeReport(BaseModel):
    model: str | None = None
    skipped: bool = False
    skipped_reason: str | None = None
    threshold: float | None = None
    rows_judged: int = 0
    below_threshold: int = 0
    errors: int = 0
    mean_score: float | None = None
    # counts of scores in [0, 0.1), [0.1, 0.2) ... [0.9, 1.0]
    histogram: list[int] = Field(default_factory=lambda: [0] * HISTOGRAM_BINS)
    calls: int = 0
    cached: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_calls: int = 0


class CurationReport(BaseModel):
    rows_in: int
    rows_out: int
    dropped: dict[str, int] = Field(default_factory=dict)  # by rule: the first rule that dropped a row
    dropped_total: int = 0
    flagged: dict[str, int] = Field(default_factory=dict)  # kept rows carrying a flag, by flag
    redacted: int = 0
    held_for_review: int = 0
    judge: JudgeReport = Field(default_factory=JudgeReport)
    rules: list[RuleReport] = Field(default_factory=list)
    seconds: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _adds_up(self) -> CurationReport:
        if (
            self.dropped_total != sum(self.dropped.values())
            or self.rows_in != self.rows_out + self.dropped_total
        ):
            raise ValueError(
                f"curation report does not add up: {self.rows_in} in, {self.rows_out} out, "
                f"{self.dropped_total} dropped ({self.dropped})"
            )
        return self


def histogram(scores: list[float]) -> list[int]:
    h = [0] * HISTOGRAM_BINS
    for s in scores:
        h[min(HISTOGRAM_BINS - 1, max(0, int(s * HISTOGRAM_BINS)))] += 1
    return h
