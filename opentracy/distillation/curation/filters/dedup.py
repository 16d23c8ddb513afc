"""Exact and near duplicates. Of each group of copies, the best-scored one stays (the first, without scores).

Exact: the same text once case and whitespace are normalised. Near: character shingles of the text with
punctuation removed, MinHash signatures (rensa, a Rust MinHash: docs/decisions/0010-near-duplicates.md) and
an LSH index whose bands are chosen for the threshold; every LSH candidate is confirmed by its estimated
Jaccard similarity before a row is called a duplicate.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from opentracy.distillation.curation.config import DedupRule
from opentracy.distillation.curation.filters._base import Filter, FilterContext, Hit
from opentracy.distillation.curation.rows import CurationRow

_WS = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s\x00]+")  # not the separator normalise_all joins texts with
SEED = 1729


def exact_key(text: str) -> str:
    """What two exact copies share: the text with case and runs of white space normalised."""
    return _WS.sub(" ", text.casefold()).strip()


def shingles(text: str, k: int) -> list[str]:
    """Character k-grams of the text with case, punctuation and white space normalised (repeats kept: a
    MinHash does not count them)."""
    t = _WS.sub(" ", _PUNCT.sub(" ", text.casefold())).strip()
    return [t[i : i + k] for i in range(len(t) - k + 1)] or [t]


def normalise_all(texts: list[str]) -> tuple[list[str], list[str]]:
    """(exact keys, shingle texts) of many texts, normalised in a few passes over one joined string instead
    of a few regex calls per text."""
    big = "\x00".join(t.replace("\x00", " ") for t in texts).casefold()
    exact = [x.strip() for x in _WS.sub(" ", big).split("\x00")]
    loose = [x.strip() for x in _WS.sub(" ", _PUNCT.sub(" ", big)).split("\x00")]
    return exact, loose


@lru_cache(maxsize=64)
def lsh_bands(threshold: float, num_perm: int, recall_at_threshold: float = 0.93) -> int:
    """The fewest LSH bands (a divisor of num_perm) that make a pair exactly at `threshold` a candidate with
    probability >= `recall_at_threshold` (more similar pairs, more likely still). Fewer bands mean fewer
    false candidates to confirm; a missed candidate is a duplicate never found, so recall decides."""
    bands = [b for b in range(1, num_perm + 1) if num_perm % b == 0]
    for b in bands:
        r = num_perm // b
        if 1.0 - (1.0 - threshold**r) ** b >= recall_at_threshold:
            return b
    return bands[-1]


class DedupFilter(Filter):
    name = "duplicates"

    def __init__(self, rule: DedupRule | None = None) -> None:
        self.rule = rule or DedupRule()
        self.groups = 0
        self._bands = lsh_bands(self.rule.threshold, self.rule.num_perm) if self.rule.near else 0

    def text(self, r: CurationRow) -> str:
        if self.rule.on == "prompt":
            return r.prompt_text
        return r.prompt_text + "\n" + r.response

    def check(self, rows: Sequence[CurationRow], ctx: FilterContext | None = None) -> list[Hit | None]:
        import rensa

        ctx = ctx or FilterContext()
        rule = self.rule
        k, num_perm, threshold = rule.shingle, rule.num_perm, rule.threshold
        out: list[Hit | None] = [None] * len(rows)
        scores = [ctx.score(r) for r in rows]
        # Best score first; unscored rows after scored ones; ties keep the original order.
        order = sorted(range(len(rows)), key=lambda i: (scores[i] is None, -(scores[i] or 0.0), i))
        exact, loose = normalise_all([self.text(r) for r in rows])
        seen: dict[str, int] = {}
        lsh = (
            rensa.RMinHashLSH(threshold=threshold, num_perm=num_perm, num_bands=self._bands)
            if rule.near
            else None
        )
        sigs: dict[int, Any] = {}
        groups: set[int] = set()
        for i in order:
            if rule.exact:
                j = seen.get(exact[i])
                if j is not None:
                    out[i] = Hit(f"exact duplicate of {rows[j].row_id}", rule="exact_duplicate",
                                 detail={"duplicate_of": rows[j].row_id})  # fmt: skip
                    groups.add(j)
                    continue
                seen[exact[i]] = i
            if lsh is not None:
                t = loose[i]
                m = rensa.RMinHash(num_perm=num_perm, seed=SEED)
                m.update([t[p : p + k] for p in range(len(t) - k + 1)] or [t])
                best_j, best_sim = -1, 0.0
                for j in lsh.query(m):
                    sim = m.jaccard(sigs[j])
                    if sim >= threshold and sim > best_sim:
                        best_j, best_sim = j, sim
                if best_j >= 0:
                    out[i] = Hit(f"near duplicate of {rows[best_j].row_id} (similarity {best_sim:.2f})",
                                 rule="near_duplicate", detail={"duplicate_of": rows[best_j].row_id,
                                                                "similarity": round(best_sim, 3)})  # fmt: skip
                    groups.add(best_j)
                    continue
                lsh.insert(i, m)
                sigs[i] = m
        self.groups = len(groups)
        return out

    def notes(self) -> dict[str, Any]:
        return {"groups": self.groups, "bands": self._bands, "threshold": self.rule.threshold}
