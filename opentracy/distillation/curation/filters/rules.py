"""User rules over a row's metadata (`tags contains "reviewed"`), and the judge-flagged rule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentracy.distillation.curation.config import JudgeFlaggedRule, MetadataRule
from opentracy.distillation.curation.expr import parse
from opentracy.distillation.curation.filters._base import Filter, FilterContext, Hit
from opentracy.distillation.curation.rows import CurationRow

REVIEWED_OK = ("approved", "edited", "included")


class MetadataRuleFilter(Filter):
    def __init__(self, rule: MetadataRule | str) -> None:
        self.rule = rule if isinstance(rule, MetadataRule) else MetadataRule(keep_if=rule)
        self.name = self.rule.name
        self._keep = self.rule.keep_if is not None
        self._src = self.rule.keep_if or self.rule.drop_if or ""
        self._pred = parse(self._src)

    def check(self, rows: Sequence[CurationRow], ctx: FilterContext | None = None) -> list[Hit | None]:
        pred, keep = self._pred, self._keep
        if keep:
            return [None if pred(r) else Hit(f"does not match keep_if: {self._src}") for r in rows]
        return [Hit(f"matches drop_if: {self._src}") if pred(r) else None for r in rows]


class JudgeFlaggedFilter(Filter):
    """Drops rows the judge scored below its threshold; rows held for review, and rows a reviewer approved in
    an earlier round, stay."""

    name = "judge_flagged"

    def __init__(self, rule: JudgeFlaggedRule | None = None, *, threshold: float = 0.5) -> None:
        self.rule = rule or JudgeFlaggedRule()
        self.threshold = threshold
        self.kept_by_review = 0
        self.held = 0

    def check(self, rows: Sequence[CurationRow], ctx: FilterContext | None = None) -> list[Hit | None]:
        ctx = ctx or FilterContext()
        out: list[Hit | None] = []
        for r in rows:
            why = ctx.flagged.get(r.row_id)
            if why is None:
                s = ctx.score(r)
                if s is not None and s < self.threshold and r.row_id not in ctx.scores:
                    why = f"judge score {s:.2f} < threshold {self.threshold:g} (from metadata)"
            if why is None or (why.startswith("judge_error") and not self.rule.drop_errors):
                out.append(None)
                continue
            if r.row_id in ctx.held:
                self.held += 1
                out.append(None)
                continue
            review = r.metadata.get("review")
            if isinstance(review, dict) and review.get("status") in REVIEWED_OK:
                self.kept_by_review += 1
                out.append(None)
                continue
            out.append(Hit(why, rule="judge_error" if why.startswith("judge_error") else None))
        return out

    def notes(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "held_for_review": self.held,
            "kept_by_earlier_review": self.kept_by_review,
        }
