"""Providers: one class per model API. A provider makes one attempt at one call; the gateway owns aliases,
retries, limits, the cache, prices and structured output, the same for every provider.

    kind         class                                 speaks
    openai       providers.openai_compat.OpenAICompatible   any OpenAI-compatible server (the fast path)
    anthropic    providers.anthropic.Anthropic              Anthropic's Messages API (`pip install opentracy[anthropic]`)
    local        providers.local.LocalModels                in-process Hugging Face causal LMs (`opentracy[train]`)

A provider module is imported only when a model of its kind is first called, so its SDK stays optional.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from opentracy.errors import InvalidInput
from opentracy.llm.types import Completion, Endpoint

KINDS: dict[str, str] = {
    "openai": "opentracy.llm.providers.openai_compat:OpenAICompatible",
    "anthropic": "opentracy.llm.providers.anthropic:Anthropic",
    "local": "opentracy.llm.providers.local:LocalModels",
}


class Provider(ABC):
    """One model API. Instances live on one event loop (the gateway makes one per loop and endpoint)."""

    def __init__(self, endpoint: Endpoint, *, timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout

    @abstractmethod
    async def chat(
        self,
        model: str,
        messages: Sequence[dict[str, Any]],
        params: dict[str, Any],
        *,
        timeout: float,
        stream: bool,
        t0: float,
    ) -> Completion:
        """One attempt at a chat completion of `model` (the name after `provider/`). `t0` is
        `time.perf_counter()` when the attempt started: set `latency_s` (and `ttft_s` when streaming) from
        it. On failure raise `LLMError` (or `LLMTimeout` / `LLMRateLimited`) with `retryable` and, when the
        provider said how long to wait, `retry_after`; the gateway decides whether to try again."""

    async def embed(
        self, model: str, texts: Sequence[str], params: dict[str, Any], *, timeout: float
    ) -> tuple[list[list[float]], int]:
        """One attempt at embedding a batch: (vectors in input order, input tokens). Providers that serve
        embeddings override it."""
        raise InvalidInput(
            f"provider {self.endpoint.name!r} ({self.endpoint.kind}) does not serve embeddings"
        )

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections (called before the event loop ends)."""


def provider_class(kind: str) -> type[Provider]:
    path = KINDS.get(kind)
    if path is None:
        raise InvalidInput(f"unknown provider kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    mod, _, cls = path.partition(":")
    try:
        module = importlib.import_module(mod)
    except ImportError as e:
        extra = {"anthropic": "anthropic", "local": "train"}.get(kind, kind)
        raise InvalidInput(
            f"the {kind!r} provider needs an optional dependency ({e.name or e}): pip install 'opentracy[{extra}]'"
        ) from None
    return getattr(module, cls)
