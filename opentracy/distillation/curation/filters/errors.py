"""Rows with errors: a trace that failed, an empty response, a refusal, a truncated output."""

from __future__ import annotations

import re
from collections.abc import Sequence

from opentracy.distillation.curation.config import ErrorsRule
from opentracy.distillation.curation.filters._base import Filter, FilterContext, Hit
from opentracy.distillation.curation.rows import CurationRow

# Refusals open the response; only its start is searched.
_CANT = r"(?:can(?:no|')?t|cannot|won'?t(?: be able to)?|will not|am unable to|'m unable to|am not able to|'m not able to|unable to|not able to)"
REFUSALS = [
    r"^\W*(?:i'?m|i am) (?:really |very |so )?sorry,? (?:but )?(?:i|as an ai)[^.]{0,40}\b(?:can(?:no|')?t|cannot|unable|not able|won'?t)\b",
    r"^\W*i apologi[sz]e,? (?:but )?(?:i|as an ai)[^.]{0,40}\b(?:can(?:no|')?t|cannot|unable|not able|won'?t)\b",
    r"^\W*(?:unfortunately,? |sorry,? (?:but )?)?(?:i|we) ?"
    + _CANT
    + r" (?:help|assist|provide|comply|fulfil|fulfill|"
    r"do that|do this|answer|share|support|generate|create|write|give|discuss|access)",
    r"^\W*(?:unfortunately,? )?i(?:'m| am) not (?:able|allowed|permitted) to",
    r"\bas an ai(?: language)? model,? i (?:can(?:no|')?t|cannot|don'?t|do not|am unable|am not able)",
    r"^\W*(?:sorry|unfortunately),? (?:but )?(?:i|this) (?:can(?:no|')?t|cannot|is not something i can)",
    r"^\W*i must (?:respectfully )?decline",
    r"^\W*(?:this|that|your) request (?:violates|goes against|is against)",
]
TRACE_ERROR_STATUSES = {"error", "failed", "failure", "timeout", "cancelled"}
TRUNCATED_FINISH = {"length", "max_tokens", "max_output_tokens"}
ERROR_FINISH = {"error", "content_filter"}
_HEAD = 300


class ErrorFilter(Filter):
    name = "errors"

    def __init__(self, rule: ErrorsRule | None = None) -> None:
        self.rule = rule or ErrorsRule()
        self._refusal = re.compile(
            "|".join(f"(?:{p})" for p in REFUSALS + self.rule.refusal_patterns), re.I | re.M
        )

    def check(self, rows: Sequence[CurationRow], ctx: FilterContext | None = None) -> list[Hit | None]:
        return [self.one(r) for r in rows]

    def one(self, row: CurationRow) -> Hit | None:
        rule, meta, resp = self.rule, row.metadata, row.response
        if rule.trace_error:
            err = meta.get("error")
            status = str(meta.get("status", "")).lower()
            finish = str(meta.get("finish_reason", "")).lower()
            if err:
                return Hit(
                    f"trace error: {_clip(err if isinstance(err, str) else str(err))}", rule="trace_error"
                )
            if status in TRACE_ERROR_STATUSES:
                return Hit(f"trace status {status!r}", rule="trace_error")
            if finish in ERROR_FINISH:
                return Hit(f"finish_reason={finish}", rule="trace_error")
        if rule.empty and not resp.strip():
            return Hit("empty response", rule="empty_response")
        if rule.truncated:
            finish = str(meta.get("finish_reason", meta.get("stop_reason", ""))).lower()
            if finish in TRUNCATED_FINISH or meta.get("truncated") is True:
                return Hit(f"truncated output (finish_reason={finish or 'truncated'})", rule="truncated")
            cut = _looks_cut(resp)
            if cut:
                return Hit(f"truncated output ({cut})", rule="truncated")
        if rule.refusal:
            m = self._refusal.search(resp[:_HEAD])
            if m:
                return Hit(f"refusal: {_clip(resp[m.start() :], 60)!r}", rule="refusal")
        return None


def _looks_cut(resp: str) -> str | None:
    """A response that stops in the middle of a structure: an unclosed code fence or JSON document."""
    s = resp.rstrip()
    if s.count("```") % 2 == 1:
        return "unclosed code block"
    if s[:1] in "{[" and s[-1:] not in "}]":
        import json

        try:
            json.loads(s)
        except ValueError:
            return "JSON cut off"
    return None


def _clip(s: str, n: int = 120) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"
