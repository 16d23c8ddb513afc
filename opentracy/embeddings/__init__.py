"""Embedders behind one small interface (`Embedder`), and the embedding cache.

resolve_embedder("minilm", home=...)        # default: all-MiniLM-L6-v2, int8 ONNX, local, no key
resolve_embedder("minilm-torch")            # the same model on sentence-transformers / torch (fp32)
resolve_embedder("static", home=...)        # model2vec static embeddings distilled from MiniLM
resolve_embedder("st:/models/bge-small")    # any sentence-transformers model (a local folder or name)
resolve_embedder("openai/text-embedding-3-small", gateway=engine.gateway)   # a provider, via the gateway
"""

from __future__ import annotations

import os
from typing import Any

from opentracy.embeddings._base import Embedder, normalise
from opentracy.errors import InvalidInput

__all__ = ["DEFAULT_EMBEDDER", "Embedder", "normalise", "resolve_embedder"]

DEFAULT_EMBEDDER = "minilm"
NAMES = ("minilm", "minilm-torch", "static", "st:<model>", "<provider>/<model>")


def resolve_embedder(
    spec: str | Embedder | None = None,
    *,
    home: str | os.PathLike[str] | None = None,
    gateway: Any = None,
) -> Embedder:
    if isinstance(spec, Embedder):
        return spec
    spec = (spec or DEFAULT_EMBEDDER).strip()
    if spec in ("minilm", "default"):
        from opentracy.embeddings.onnx import OnnxEmbedder

        return OnnxEmbedder(home)
    if spec == "minilm-torch":
        from opentracy.embeddings.st import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder()
    if spec == "static":
        from opentracy.embeddings.static import StaticEmbedder

        return StaticEmbedder(home)
    if spec.startswith("st:") and len(spec) > 3:
        from opentracy.embeddings.st import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder(spec[3:])
    if "/" in spec or (gateway is not None and getattr(gateway, "aliases", None) is not None):
        if gateway is None:
            raise InvalidInput(f"embedder {spec!r} is a provider model and needs the LLM gateway")
        from opentracy.embeddings.provider import ProviderEmbedder

        try:
            return ProviderEmbedder(gateway, spec)
        except InvalidInput:
            if "/" in spec:
                raise
    raise InvalidInput(f"unknown embedder {spec!r}; use one of: {', '.join(NAMES)}")
