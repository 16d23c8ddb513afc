"""The LLM namer: an internal call through the gateway per cluster, with structured output.

The model gets the cluster's keywords, its most representative and a few diverse sample items, and
returns {"name", "description"} (validated against `ClusterName`; the gateway repairs once). Calls run
concurrently (the gateway bounds them per provider), are internal (not traces) and cached by content, so
re-naming the same cluster costs nothing. A cluster whose call fails after the gateway's retries gets its
keyword name, and its namer says so: nothing is made up.
"""

from __future__ import annotations

import asyncio
from typing import Any

from opentracy.clustering.name._base import ClusterName, ClusterSummary, Named, Namer
from opentracy.clustering.name.keywords import KeywordNamer

SYSTEM = (
    "You name groups of requests that users sent to an AI application. Each group holds requests for the "
    "same kind of task. Give the task a short name (2 to 5 words, e.g. 'SQL generation', 'Support ticket "
    "triage', 'Card payment disputes') and one sentence saying what the requests ask for. Reply with JSON "
    'only: {"name": "...", "description": "..."}.'
)


def _clip(s: str, n: int = 300) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"


def prompt(c: ClusterSummary) -> str:
    lines = [f"Group of {c.size:,} requests.", f"Keywords: {', '.join(c.keywords[:10]) or '(none)'}", ""]
    lines.append("Most typical requests:")
    lines += [f"- {_clip(t)}" for t in c.representatives]
    if c.diverse:
        lines += ["", "Other requests in the group:"]
        lines += [f"- {_clip(t)}" for t in c.diverse]
    return "\n".join(lines)


class LLMNamer(Namer):
    def __init__(self, gateway: Any, model: str, *, concurrency: int = 16, max_tokens: int = 200) -> None:
        self.gateway = gateway
        self.model = model
        self.id = f"llm:{model}"
        self.concurrency = concurrency
        self.max_tokens = max_tokens
        self.fallback = KeywordNamer()
        self.errors: list[str] = []

    async def aname(self, clusters: list[ClusterSummary]) -> list[Named]:
        sem = asyncio.Semaphore(self.concurrency)

        async def one(c: ClusterSummary) -> Named:
            async with sem:
                try:
                    r = await self.gateway.complete(
                        self.model,
                        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt(c)}],
                        params={"temperature": 0, "max_tokens": self.max_tokens},
                        response_model=ClusterName,
                        internal=True,
                    )
                except Exception as e:  # any failure: the keyword name, and the reason
                    from opentracy.errors import OpentracyError

                    if not isinstance(e, OpentracyError):
                        raise
                    self.errors.append(e.message)
                    fb = self.fallback.one(c)
                    return Named(fb.name, fb.description, f"keywords (llm failed: {e.message[:150]})")
                parsed: ClusterName = r.parsed
                return Named(parsed.name.strip(), parsed.description.strip(), self.id)

        return list(await asyncio.gather(*(one(c) for c in clusters)))

    def name(self, clusters: list[ClusterSummary]) -> list[Named]:
        if not clusters:
            return []
        return self.gateway.run(self.aname(clusters))
