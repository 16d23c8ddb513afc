"""Embeddings from a provider's embeddings endpoint, through the LLM gateway (any OpenAI-compatible server:
`openai/text-embedding-3-small`, a vLLM or Ollama embedding model, an alias). Calls are internal: they
respect the provider's limits and retries and do not become traces."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from opentracy.embeddings._base import Embedder


class ProviderEmbedder(Embedder):
    def __init__(
        self,
        gateway: Any,
        model: str = "openai/text-embedding-3-small",
        *,
        dimensions: int | None = None,
        batch_size: int = 256,
        concurrency: int = 4,
    ) -> None:
        self.gateway = gateway
        self.model = model
        resolved, _ = gateway.resolve(model)
        self.model_id = f"{resolved}" + (f"@{dimensions}d" if dimensions else "")
        self.params = {"dimensions": dimensions} if dimensions else {}
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.dims = dimensions or 0
        self.input_tokens = 0

    def _embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts)

    def embed(self, texts: Sequence[str], *, progress: Any = None) -> np.ndarray:
        import asyncio

        batches = [list(texts[s : s + self.batch_size]) for s in range(0, len(texts), self.batch_size)]

        async def all_batches() -> list[tuple[list[list[float]], int]]:
            sem = asyncio.Semaphore(self.concurrency)
            done = 0

            async def one(b: list[str]) -> tuple[list[list[float]], int]:
                nonlocal done
                async with sem:
                    r = await self.gateway.embed(self.model, b, params=self.params, internal=True)
                done += len(b)
                if progress is not None:
                    progress(done, len(texts))
                return r

            return await asyncio.gather(*(one(b) for b in batches))

        results = self.gateway.run(all_batches()) if batches else []
        vecs = [v for r, _ in results for v in r]
        self.input_tokens += sum(t for _, t in results)
        out = np.asarray(vecs, dtype=np.float32).reshape(len(texts), -1)
        if len(texts):
            self.dims = out.shape[1]
        from opentracy.embeddings._base import normalise

        return normalise(out)
