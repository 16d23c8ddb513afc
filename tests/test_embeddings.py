"""Embedders and the embedding cache: the local ONNX build, sentence-transformers, static, provider (mock)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from opentracy.embeddings import resolve_embedder
from opentracy.embeddings.build import ONNX_NAME, build_onnx, manifest
from opentracy.embeddings.cache import EmbeddingCache, EmbedStats
from opentracy.embeddings.onnx import OnnxEmbedder
from opentracy.errors import InvalidInput
from opentracy.llm.gateway import Endpoint, Gateway
from opentracy.testing import MockLLM
from opentracy.testing import embedding as mock_embedding

TEXTS = [
    "How do I reset the PIN of my card?",
    "My card payment was declined at the shop",
    "What is the exchange rate for euros?",
    "I want to close my account",
    "Where is my new card? It has not arrived yet.",
]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def shared_models(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every engine of these tests reuses one build of the local models (OPENTRACY_MODELS_DIR)."""
    monkeypatch.setenv("OPENTRACY_MODELS_DIR", str(models_dir))
    return models_dir


def test_onnx_build_is_reproducible_and_matches_fp32(shared_models: Path, tmp_path: Path, monkeypatch):
    onnx = OnnxEmbedder(tmp_path / "home")  # builds into the shared folder on first use
    assert (shared_models / ONNX_NAME / "model.onnx").exists()
    first = manifest(shared_models / ONNX_NAME)["files"]
    # a second build elsewhere gives byte-identical files
    monkeypatch.setenv("OPENTRACY_MODELS_DIR", str(tmp_path / "other"))
    again = build_onnx(tmp_path / "home2", log=lambda _m: None)
    assert manifest(again)["files"] == first
    assert (
        onnx.model_id.startswith("all-MiniLM-L6-v2/onnx-int8@") and first["model.onnx"][:12] in onnx.model_id
    )

    v = onnx.embed(TEXTS)
    assert v.shape == (5, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # order does not matter (batches are sorted by length inside)
    assert np.allclose(onnx.embed(TEXTS[::-1])[::-1], v, atol=1e-5)
    # agreement with the fp32 model on torch
    ref = resolve_embedder("minilm-torch").embed(TEXTS)
    cos = (v * ref).sum(1)
    assert cos.min() > 0.97 and cos.mean() > 0.985
    # and it is the model we think: related texts are closer than unrelated ones
    a, b, c = onnx.embed(["reset my card PIN", "change the PIN of my card", "exchange rate for dollars"])
    assert a @ b > a @ c + 0.2


def test_static_embedder_builds_locally_and_embeds(shared_models: Path, tmp_path: Path):
    e = resolve_embedder("static", home=tmp_path / "home")
    v = e.embed(TEXTS)
    assert v.shape == (5, e.dims) and e.dims == 256
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert e.model_id.startswith("all-MiniLM-L6-v2/static-256@")
    a, b, c = e.embed(["reset my card PIN", "change the PIN of my card", "exchange rate for dollars"])
    assert a @ b > a @ c


def test_unknown_embedder_is_a_clear_error():
    with pytest.raises(InvalidInput, match="unknown embedder"):
        resolve_embedder("nonsense")


class CountingEmbedder:
    """Wraps an embedder and records what it was asked to embed."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.calls: list[list[str]] = []

    def __getattr__(self, name):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)

    def embed(self, texts, progress=None):  # type: ignore[no-untyped-def]
        self.calls.append(list(texts))
        return self.inner.embed(texts)


def test_cache_embeds_each_distinct_text_once_and_incrementally(engine, shared_models: Path):
    cache = EmbeddingCache(engine.catalog, engine.artifacts)
    onnx = OnnxEmbedder(engine.settings.home)
    emb = CountingEmbedder(onnx)
    texts = [*TEXTS, TEXTS[0], TEXTS[1]]  # duplicates inside one call
    st = EmbedStats()
    v1 = cache.embed(emb, texts, stats=st)
    assert emb.calls == [TEXTS] and (st.distinct, st.computed, st.cached) == (5, 5, 0)
    assert np.allclose(v1[5], v1[0]) and np.allclose(v1[6], v1[1])
    # float16 storage keeps vectors to ~1e-3
    assert np.abs(v1 - onnx.embed(texts)).max() < 2e-3

    # new texts arrive: only they are embedded
    v2 = cache.embed(emb, [TEXTS[2], "a brand new question about loans"])
    assert emb.calls[-1] == ["a brand new question about loans"]
    assert np.allclose(v2[0], v1[2], atol=1e-6)

    # a fresh cache object (another process) reads the stored shards: nothing is recomputed
    other = EmbeddingCache(engine.catalog, engine.artifacts)
    emb2 = CountingEmbedder(onnx)
    v3 = other.embed(emb2, texts)
    assert emb2.calls == [] and np.allclose(v3, v1, atol=1e-6)
    assert other.count(onnx.model_id) == 6
    # vectors are artifacts, listed per model in the catalog
    assert other.models() == {onnx.model_id: 6}
    keys = [k for k in Path(engine.artifacts.root).rglob("*.parquet") if "embeddings" in str(k)]
    assert len(keys) == 2


def test_cache_compacts_many_shards(engine, shared_models: Path, monkeypatch):
    import opentracy.embeddings.cache as cache_mod

    monkeypatch.setattr(cache_mod, "TIER_FANOUT", 3)
    cache = EmbeddingCache(engine.catalog, engine.artifacts)

    class Fake:
        model_id = "fake/hash-vectors"
        dims = 8
        cluster_cohesion = None

        def embed(self, texts, progress=None):  # type: ignore[no-untyped-def]
            rng = [np.random.default_rng(abs(hash(t)) % 2**32).normal(size=8) for t in texts]
            v = np.array(rng, dtype=np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    f = Fake()
    want = {}
    for i in range(5):  # 5 calls of 4 new texts: a tier of 3 small shards is merged into one
        texts = [f"text {i}-{j}" for j in range(4)]
        for t, v in zip(texts, cache.embed(f, texts), strict=True):
            want[t] = v
    assert len(cache._shards(f.model_id)) < 3
    assert cache.count(f.model_id) == 20
    got = EmbeddingCache(engine.catalog, engine.artifacts).lookup(
        f.model_id, [cache_mod.content_key(t) for t in want]
    )
    assert got[0].all() and np.allclose(got[1], np.array(list(want.values())), atol=2e-3)
    # the merged-away shard files are gone from the store
    files = [p for p in Path(engine.artifacts.root).rglob("*.parquet") if "embeddings" in str(p)]
    assert len(files) == len(cache._shards(f.model_id))


def _mock_gateway(mock: MockLLM, **kw) -> Gateway:  # type: ignore[no-untyped-def]
    return Gateway(endpoints={"openai": Endpoint("openai", mock.base_url, "k", 8)}, backoff_base=0.01, **kw)


def test_provider_embeddings_through_the_gateway():
    with MockLLM() as mock:
        gw = _mock_gateway(mock)
        e = resolve_embedder("openai/text-embedding-3-small", gateway=gw)
        e.batch_size = 2
        v = e.embed(TEXTS)
        gw.close()
    assert v.shape == (5, 384)
    for t, row in zip(TEXTS, v, strict=True):
        ref = np.array(mock_embedding(t), dtype=np.float32)
        assert np.allclose(row, ref / np.linalg.norm(ref), atol=1e-5)
    calls = [r for r in mock.requests if r["path"].endswith("/embeddings")]
    assert len(calls) == 3 and all(r["body"]["model"] == "text-embedding-3-small" for r in calls)
    assert e.input_tokens > 0


def test_provider_embeddings_retry_server_errors_then_fail_clearly():
    with MockLLM(script=[{"reply": {"status": 500}, "times": 2}]) as mock:
        gw = _mock_gateway(mock)
        v = resolve_embedder("openai/text-embedding-3-small", gateway=gw).embed(TEXTS[:2])
        gw.close()
    assert v.shape == (2, 384)
    from opentracy.llm.types import LLMError

    with MockLLM(script=[{"reply": {"status": 400, "content": "bad model"}}]) as mock:
        gw = _mock_gateway(mock)
        with pytest.raises(LLMError, match="HTTP 400"):
            resolve_embedder("openai/nope", gateway=gw).embed(TEXTS[:2])
        gw.close()


def test_cli_builds_and_lists_local_models(shared_models: Path, tmp_path: Path, monkeypatch):
    from click.testing import CliRunner

    from opentracy.cli import main

    monkeypatch.setenv("OPENTRACY_HOME", str(tmp_path / "home"))
    r = CliRunner().invoke(main, ["embeddings", "build"])
    assert r.exit_code == 0, r.output
    assert ONNX_NAME in r.output and "sha256" in r.output
    r = CliRunner().invoke(main, ["embeddings", "info"])
    assert r.exit_code == 0, r.output
    assert f"{ONNX_NAME}: {shared_models / ONNX_NAME}" in r.output


def test_pooled_embedder_spreads_chunks_over_worker_processes_and_fills_the_cache(
    engine, shared_models: Path
) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from opentracy.demo_data import banking77
    from opentracy.embeddings.parallel import PooledEmbedder

    texts = [t for t, _ in banking77("test")][:300]
    base = engine.clustering.embedder("minilm")
    single = base.embed(texts)
    pids: list[int] = []
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        pooled = PooledEmbedder(base, pool, chunk_size=64)
        assert pooled.model_id == base.model_id and pooled.dims == base.dims
        seen: list[tuple[int, int]] = []
        v = pooled.embed(texts, progress=lambda d, n: seen.append((d, n)))
        pids = list(pool.map(_pid, range(4)))
        # through the cache: every text computed once, by the workers
        st = EmbedStats()
        engine.clustering.embed(texts, pooled, stats=st)
    assert v.shape == single.shape and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # the workers compute what this process computes for the same chunks (int8 activations are quantised
    # per batch, so the chunking, not the process, decides the exact vectors)
    chunked = np.vstack([base.embed(texts[s : s + 64]) for s in range(0, 300, 64)])
    assert np.allclose(v, chunked, atol=1e-5)
    assert float((v * single).sum(1).min()) > 0.97
    assert seen[-1] == (300, 300) and len(seen) == 5
    assert os.getpid() not in pids
    assert (st.computed, st.cached) == (300, 0)
    # what the pool computed is what the single-process embedder finds: nothing is embedded again
    st2 = EmbedStats()
    engine.clustering.embed(texts, stats=st2)
    assert (st2.computed, st2.cached) == (0, 300)


def _pid(_: int) -> int:
    return os.getpid()


def test_pooled_embedder_refuses_what_it_cannot_spread(engine, shared_models: Path) -> None:
    from opentracy.embeddings import Embedder
    from opentracy.embeddings.parallel import PooledEmbedder

    class Remote(Embedder):  # an Embedder that is not a local model
        model_id, dims = "x/remote", 3

        def _embed_batch(self, texts):  # type: ignore[no-untyped-def]
            return np.ones((len(texts), 3))

    with pytest.raises(InvalidInput, match="wraps a local model"):
        PooledEmbedder(Remote(), pool=None)
    base = engine.clustering.embedder("minilm")
    with pytest.raises(InvalidInput, match="map"):
        PooledEmbedder(base, pool=object())
    with pytest.raises(InvalidInput, match="chunk_size"):
        PooledEmbedder(base, pool=SimpleNamespace(map=map), chunk_size=0)
