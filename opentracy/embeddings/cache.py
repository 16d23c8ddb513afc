"""The embedding cache: vectors kept by (model id, content hash of the text), as artifacts.

Vectors live in Parquet shards in the artifact store (key: 16-byte BLAKE2b of the UTF-8 text; vector:
float16, which changes a cosine by less than 1e-3), one shard per batch that computed something new. The
catalog only lists the shards of each model (`embedding_shards`), so a vector is never a catalog column.
Embedding a list of texts looks every text up, embeds only the missing ones (each distinct text once), in
batches, and stores them as one new shard: embedding new traces as they arrive is incremental, and
re-clustering the same texts embeds nothing. Many small shards are merged into one when they pile up.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import delete, select

from opentracy.embeddings._base import Embedder
from opentracy.store.artifacts import ArtifactStore
from opentracy.store.catalog import Catalog

KEY_BYTES = 16
MAX_SHARDS = 32  # merge a model's shards into one when there are more


def content_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=KEY_BYTES).digest()


@dataclass
class _Loaded:
    shard_ids: list[int] = field(default_factory=list)
    keys: pa.Array = field(default_factory=lambda: pa.array([], pa.binary(KEY_BYTES)))
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float16))


@dataclass
class EmbedStats:
    texts: int = 0
    distinct: int = 0
    cached: int = 0
    computed: int = 0
    seconds: float = 0.0


class EmbeddingCache:
    def __init__(self, catalog: Catalog, artifacts: ArtifactStore) -> None:
        self.catalog = catalog
        self.artifacts = artifacts
        self._loaded: dict[str, _Loaded] = {}
        self._lock = threading.Lock()

    # -- public ------------------------------------------------------------------------------------
    def embed(
        self,
        embedder: Embedder,
        texts: Sequence[str],
        *,
        progress: Callable[[int, int], None] | None = None,
        stats: EmbedStats | None = None,
    ) -> np.ndarray:
        """Unit float32 vectors for `texts`, from the cache where present; the rest are computed (each
        distinct text once) and stored."""
        import time

        t0 = time.perf_counter()
        n = len(texts)
        keys = [content_key(t) for t in texts]
        first: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        uniq_keys = list(first)
        uniq_idx = np.fromiter(first.values(), dtype=np.int64, count=len(first))
        found, vecs = self.lookup(embedder.model_id, uniq_keys)
        missing = np.flatnonzero(~found)
        if len(missing):
            new = embedder.embed(
                [texts[uniq_idx[j]] for j in missing],
                progress=(lambda d, _t: progress(d, len(missing))) if progress else None,
            )
            # what is stored (float16) is what is returned, cached or not: a run gives the same vectors
            # whether its texts were embedded now or before
            new = np.asarray(new, dtype=np.float16).astype(np.float32)
            self.add(embedder.model_id, [uniq_keys[j] for j in missing], new)
            if vecs.shape[1] != new.shape[1]:
                vecs = np.zeros((len(uniq_keys), new.shape[1]), dtype=np.float32)
                hit = np.flatnonzero(found)
                if len(hit):
                    vecs[hit] = self.lookup(embedder.model_id, [uniq_keys[j] for j in hit])[1]
            vecs[missing] = new
        pos = {k: j for j, k in enumerate(uniq_keys)}
        out = vecs[np.fromiter((pos[k] for k in keys), dtype=np.int64, count=n)] if n else vecs[:0]
        if stats is not None:
            stats.texts += n
            stats.distinct += len(uniq_keys)
            stats.cached += len(uniq_keys) - len(missing)
            stats.computed += len(missing)
            stats.seconds += time.perf_counter() - t0
        return np.ascontiguousarray(out, dtype=np.float32)

    def lookup(self, model_id: str, keys: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, vectors as float32; zero rows where not found)."""
        loaded = self._refresh(model_id)
        dims = loaded.vectors.shape[1] if loaded.vectors.size else 0
        if not len(keys) or not len(loaded.keys):
            return np.zeros(len(keys), bool), np.zeros((len(keys), dims), np.float32)
        where = pc.index_in(pa.array(keys, pa.binary(KEY_BYTES)), value_set=loaded.keys)
        found = np.asarray(where.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        out = np.zeros((len(keys), dims), np.float32)
        if found.any():
            idx = np.asarray(where.drop_null().to_numpy(zero_copy_only=False), dtype=np.int64)
            out[found] = loaded.vectors[idx]
        return found, out

    def add(self, model_id: str, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Store new vectors as one shard (keys already stored are skipped when read: first one wins)."""
        if not len(keys):
            return
        from opentracy.store.tables import EmbeddingShardRecord

        vectors = np.asarray(vectors, dtype=np.float16)
        key, rows = self._write_shard(list(keys), vectors)
        with self.catalog.session() as s:
            s.add(EmbeddingShardRecord(model_id=model_id, key=key, rows=rows, dims=int(vectors.shape[1])))
        with self._lock:
            count = len(self._shards(model_id))
        if count > MAX_SHARDS:
            self.compact(model_id)

    def count(self, model_id: str) -> int:
        return len(self._refresh(model_id).keys)

    def models(self) -> dict[str, int]:
        """Cached vectors per model id (rows in shards; a text stored twice counts twice)."""
        from sqlalchemy import func

        from opentracy.store.tables import EmbeddingShardRecord

        with self.catalog.session() as s:
            rows = s.execute(
                select(EmbeddingShardRecord.model_id, func.sum(EmbeddingShardRecord.rows)).group_by(
                    EmbeddingShardRecord.model_id
                )
            ).all()
        return {m: int(n or 0) for m, n in rows}

    def compact(self, model_id: str) -> None:
        """Merge a model's shards into one (distinct keys only) and drop the old shard files."""
        from opentracy.store.tables import EmbeddingShardRecord

        with self._lock:
            shards = self._shards(model_id)
            if len(shards) < 2:
                return
            self._loaded.pop(model_id, None)
        loaded = self._refresh(model_id)
        keys = loaded.keys
        uniq = pc.unique(keys)
        idx = pc.index_in(uniq, value_set=keys).to_numpy(zero_copy_only=False).astype(np.int64)
        key, rows = self._write_shard(uniq.to_pylist(), loaded.vectors[idx])
        old_ids = [sid for sid, _ in shards]
        old_keys = [k for _, k in shards]
        with self.catalog.session() as s:
            s.execute(delete(EmbeddingShardRecord).where(EmbeddingShardRecord.id.in_(old_ids)))
            s.add(
                EmbeddingShardRecord(model_id=model_id, key=key, rows=rows, dims=int(loaded.vectors.shape[1]))
            )
        for k in old_keys:
            if k != key:
                self.artifacts.delete(k)
        with self._lock:
            self._loaded.pop(model_id, None)

    # -- internals -----------------------------------------------------------------------------------
    def _shards(self, model_id: str) -> list[tuple[int, str]]:
        from opentracy.store.tables import EmbeddingShardRecord

        with self.catalog.session() as s:
            return [
                (int(i), str(k))
                for i, k in s.execute(
                    select(EmbeddingShardRecord.id, EmbeddingShardRecord.key)
                    .where(EmbeddingShardRecord.model_id == model_id)
                    .order_by(EmbeddingShardRecord.id)
                ).all()
            ]

    def _refresh(self, model_id: str) -> _Loaded:
        """The model's vectors in memory, reading only shards added since the last call."""
        with self._lock:
            shards = self._shards(model_id)
            loaded = self._loaded.get(model_id)
            ids = [i for i, _ in shards]
            if loaded is None or loaded.shard_ids != ids[: len(loaded.shard_ids)]:
                loaded = self._loaded[model_id] = _Loaded()  # shards were merged elsewhere: start over
            new = [(i, k) for i, k in shards if i not in set(loaded.shard_ids)]
            if new:
                key_parts = [loaded.keys] if len(loaded.keys) else []
                vec_parts = [loaded.vectors] if loaded.vectors.size else []
                for sid, key in new:
                    t = pq.read_table(self.artifacts.verify(key))
                    kcol = t.column("key").combine_chunks()
                    vcol = t.column("vector").combine_chunks()
                    d = vcol.type.list_size
                    key_parts.append(kcol)
                    vec_parts.append(vcol.values.to_numpy(zero_copy_only=False).reshape(-1, d))
                    loaded.shard_ids.append(sid)
                loaded.keys = pa.concat_arrays(key_parts) if len(key_parts) > 1 else key_parts[0]
                loaded.vectors = np.concatenate(vec_parts) if len(vec_parts) > 1 else vec_parts[0]
            return loaded

    def _write_shard(self, keys: list[bytes], vectors: np.ndarray) -> tuple[str, int]:
        vectors = np.ascontiguousarray(vectors, dtype=np.float16)
        d = vectors.shape[1]
        flat = pa.array(vectors.reshape(-1), pa.float16())
        table = pa.table(
            {
                "key": pa.array(keys, pa.binary(KEY_BYTES)),
                "vector": pa.FixedSizeListArray.from_arrays(flat, d),
            }
        )
        tmp = self.artifacts.scratch_file("emb", ".parquet")
        pq.write_table(table, tmp, compression="zstd")
        key, _sha, _size = self.artifacts.put_file(tmp, prefix="embeddings", suffix=".parquet")
        return key, len(keys)
