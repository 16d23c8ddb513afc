"""Static embeddings (model2vec) distilled from all-MiniLM-L6-v2: a vector per token, averaged.

For millions of texts: no transformer runs, so it embeds hundreds of thousands of texts a second on a
laptop, at a cost in quality (about 0.1 NMI lower on Banking77 than the transformer: docs/decisions/0020).
Built by `opentracy embeddings build --static` (or on first use) into the data directory.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from opentracy.embeddings._base import Embedder, Progress, normalise
from opentracy.embeddings.build import STATIC_NAME, build_static, built, manifest

#: measured on Banking77 with this model: see docs/decisions/0022
STATIC_COHESION = 0.86


class StaticEmbedder(Embedder):
    cluster_cohesion = STATIC_COHESION

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        batch_size: int = 4096,
        build: bool = True,
    ) -> None:
        if path is None:
            if home is None:
                raise ValueError("StaticEmbedder needs the data directory (home) or a model folder (path)")
            found = built(home, STATIC_NAME)
            if found is None:
                if not build:
                    from opentracy.errors import InvalidInput

                    raise InvalidInput(
                        "the static embedding model is not built: run `opentracy embeddings build --static`"
                    )
                found = build_static(home, log=lambda _m: None)
            path = found
        self.path = Path(path)
        digest = manifest(self.path)["files"]["model/model.safetensors"]
        self.model_id = f"all-MiniLM-L6-v2/static-256@{digest[:12]}"
        self.batch_size = batch_size
        self._model = None
        self._lock = threading.Lock()
        self.dims = 256

    def _load(self):  # type: ignore[no-untyped-def]
        with self._lock:
            if self._model is None:
                from model2vec import StaticModel

                self._model = StaticModel.from_pretrained(str(self.path / "model"))
                self.dims = int(self._model.dim)
        return self._model

    def _embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        return self._load().encode(list(texts), batch_size=self.batch_size, show_progress_bar=False)

    def embed(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        self._load()
        return normalise(super().embed(texts, progress=progress))
