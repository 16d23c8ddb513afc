"""Rows above a length limit, in characters or estimated tokens."""

from __future__ import annotations

from collections.abc import Sequence

from opentracy.distillation.curation.config import LengthRule
from opentracy.distillation.curation.filters._base import Filter, FilterContext, Hit
from opentracy.distillation.curation.rows import CurationRow


def estimate_tokens(text: str) -> int:
    """Tokens, estimated without a tokenizer: about 4 characters of English per token (UTF-8 bytes / 4,
    so other scripts count more). Good enough to enforce a limit; not a billing figure."""
    n = len(text)
    if not text.isascii():
        n = len(text.encode("utf-8"))
    return (n + 3) // 4


class LengthFilter(Filter):
    name = "too_long"

    def __init__(self, rule: LengthRule | None = None) -> None:
        self.rule = rule or LengthRule()

    def check(self, rows: Sequence[CurationRow], ctx: FilterContext | None = None) -> list[Hit | None]:
        rule = self.rule
        out: list[Hit | None] = []
        for r in rows:
            if rule.field == "prompt":
                text = r.prompt_text
            elif rule.field == "response":
                text = r.response
            else:
                text = r.prompt_text + r.response
            hit = None
            if rule.max_chars is not None and len(text) > rule.max_chars:
                hit = Hit(f"{len(text):,} characters > {rule.max_chars:,} ({rule.field})")
            elif rule.max_tokens is not None and len(text) > rule.max_tokens:  # bytes / 4 <= characters
                t = estimate_tokens(text)
                if t > rule.max_tokens:
                    hit = Hit(f"~{t:,} tokens > {rule.max_tokens:,} ({rule.field}, estimated)")
            out.append(hit)
        return out
