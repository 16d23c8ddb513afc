"""The offline namer: a readable name from a cluster's top keywords, no model needed.

"card payment · declined" style names from the two or three best c-TF-IDF terms (a term another picked
term already contains is skipped), with a one-line description that quotes the most representative item.
Names are made unique across the run by adding the next keyword where two clusters would collide.
"""

from __future__ import annotations

from opentracy.clustering.name._base import ClusterSummary, Named, Namer


def _terms(keywords: list[str], n: int) -> list[str]:
    out: list[str] = []
    for kw in keywords:
        words = set(kw.split())
        if any(words <= set(o.split()) or set(o.split()) <= words for o in out):
            continue
        out.append(kw)
        if len(out) >= n:
            break
    return out


class KeywordNamer(Namer):
    id = "keywords"

    def __init__(self, terms: int = 3, max_chars: int = 60) -> None:
        self.terms = terms
        self.max_chars = max_chars

    def one(self, c: ClusterSummary, terms: int | None = None) -> Named:
        picked = _terms(c.keywords, terms or self.terms)
        if not picked:
            base = (c.representatives[0] if c.representatives else "unnamed")[: self.max_chars]
            name = base[:1].upper() + base[1:]
        else:
            name = " · ".join(picked)
            name = name[:1].upper() + name[1:]
            while len(name) > self.max_chars and len(picked) > 1:
                picked = picked[:-1]
                name = " · ".join(picked)
                name = name[:1].upper() + name[1:]
        example = c.representatives[0] if c.representatives else ""
        if len(example) > 120:
            example = example[:117] + "…"
        desc = f"{c.size:,} items about {', '.join(c.keywords[:5]) or 'no common terms'}"
        if example:
            desc += f"; e.g. “{example}”"
        return Named(name=name[: self.max_chars], description=desc[:300], namer=self.id)

    def name(self, clusters: list[ClusterSummary]) -> list[Named]:
        out = [self.one(c) for c in clusters]
        seen: dict[str, int] = {}
        for i, n in enumerate(out):
            key = n.name.lower()
            if key in seen:  # collide: add keywords until unique (or number it)
                for extra in range(self.terms + 1, self.terms + 4):
                    cand = self.one(clusters[i], extra)
                    if cand.name.lower() not in seen:
                        out[i] = cand
                        break
                else:
                    out[i] = Named(f"{n.name} ({seen[key] + 1})", n.description, n.namer)
                seen[key] = seen.get(key, 1) + 1
            seen.setdefault(out[i].name.lower(), 1)
        return out
