"""Embedding spread over worker processes or machines: any pool with `map` (concurrent.futures executors,
`multiprocessing.Pool`, Ray's `ray.util.multiprocessing.Pool`).

    from concurrent.futures import ProcessPoolExecutor
    from opentracy.embeddings.parallel import PooledEmbedder

    base = engine.clustering.embedder("minilm")             # the model is built (once) before the workers start
    with ProcessPoolExecutor(4) as pool:
        engine.clustering.embed(texts, PooledEmbedder(base, pool))   # vectors land in the cache

    # Ray, over a cluster (`pip install ray`; the model folder must be readable by every worker, e.g. on
    # shared storage: set OPENTRACY_MODELS_DIR to it):
    from ray.util.multiprocessing import Pool
    engine.clustering.embed(texts, PooledEmbedder(base, Pool()))

A pooled embedder has the wrapped one's `model_id`, so what it computes is what the single-process
embedder would find in the cache: a later clustering run with the default embedder embeds nothing again.
Workers load the model from its built folder once per process and keep it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from opentracy.embeddings._base import Embedder, Progress, normalise
from opentracy.errors import InvalidInput

# In each worker process: (kind, model folder) -> loaded embedder
_WORKER_MODELS: dict[tuple[str, str], Embedder] = {}


def _worker_embed(task: tuple[str, str, list[str]]) -> np.ndarray:
    kind, path, texts = task
    key = (kind, path)
    emb = _WORKER_MODELS.get(key)
    if emb is None:
        if kind == "onnx":
            from opentracy.embeddings.onnx import OnnxEmbedder

            # one ONNX session per worker: the pool is the parallelism
            emb = OnnxEmbedder(path=path, build=False, threads=1)
        else:
            from opentracy.embeddings.static import StaticEmbedder

            emb = StaticEmbedder(path=path, build=False)
        _WORKER_MODELS[key] = emb
    return np.asarray(emb.embed(texts), dtype=np.float32)


class PooledEmbedder(Embedder):
    """Wraps a local embedder (int8 ONNX MiniLM or static) and embeds chunks of texts on a pool's workers."""

    def __init__(self, base: Embedder, pool: Any, *, chunk_size: int = 4_096) -> None:
        from opentracy.embeddings.onnx import OnnxEmbedder
        from opentracy.embeddings.static import StaticEmbedder

        if isinstance(base, OnnxEmbedder):
            self._kind = "onnx"
        elif isinstance(base, StaticEmbedder):
            self._kind = "static"
        else:
            raise InvalidInput(
                f"a pooled embedder wraps a local model (minilm or static), not {type(base).__name__}: "
                "provider embeddings are spread by the provider, sentence-transformers models by their own pool"
            )
        if not hasattr(pool, "map"):
            raise InvalidInput("pool must have a map(function, iterable) method (an executor or a Pool)")
        if chunk_size < 1:
            raise InvalidInput("chunk_size must be at least 1")
        self.base = base
        self.pool = pool
        self.chunk_size = chunk_size
        self._path = str(Path(base.path).resolve())
        self.model_id = base.model_id
        self.dims = base.dims
        self.batch_size = chunk_size
        self.cluster_cohesion = base.cluster_cohesion

    def _embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts)

    def embed(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        n = len(texts)
        out = np.zeros((n, self.dims), dtype=np.float32)
        if n == 0:
            return out
        starts = range(0, n, self.chunk_size)
        tasks = ((self._kind, self._path, list(texts[s : s + self.chunk_size])) for s in starts)
        done = 0
        for s, vec in zip(starts, self.pool.map(_worker_embed, tasks), strict=True):
            out[s : s + len(vec)] = vec
            done += len(vec)
            if progress is not None:
                progress(done, n)
        return normalise(out)

    def describe(self) -> dict[str, object]:
        return {**self.base.describe(), "pooled": True, "chunk_size": self.chunk_size}
