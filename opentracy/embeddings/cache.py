"""The embedding cache: vectors kept by (model id, content hash of the text), as artifacts.

Vectors live in Parquet shards in the artifact store (key: 16-byte BLAKE2b of the UTF-8 text; vector:
float16, which changes a cosine by less than 1e-3), one shard per batch that computed something new. The
catalog only lists the shards of each model (`embedding_shards`), so a vector is never a catalog column.
Embedding a list of texts looks every text up, embeds only the missing ones (each distinct text once), in
batches, and stores them as one new shard: embedding new traces as they arrive is incremental, and
re-clustering the same texts embeds nothing. Shards of similar size are merged in tiers (as LSM trees do),
so a model keeps few shards; lookups are vectorised binary searches over each shard's sorted keys.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import delete, select

from opentracy.embeddings._base import Embedder
from opentracy.store.artifacts import ArtifactStore
from opentracy.store.catalog import Catalog

KEY_BYTES = 16
TIER_FANOUT = 8  # merge shards of one size tier (rows within a factor 4) when there are this many


def content_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=KEY_BYTES).digest()


def _split(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """16-byte keys (n x 2 uint64) as (hi, lo) columns."""
    return keys[:, 0].copy(), keys[:, 1].copy()


def _key_array(keys: Sequence[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(keys), dtype="<u8").reshape(-1, 2) if keys else np.zeros((0, 2), "<u8")


@dataclass
class _Shard:
    """One shard in memory, sorted by key, for vectorised binary-search lookups."""

    id: int
    rows: int
    hi: np.ndarray
    lo: np.ndarray
    vectors: np.ndarray  # float16, in key order

    @classmethod
    def build(cls, sid: int, keys: np.ndarray, vectors: np.ndarray) -> _Shard:
        order = np.lexsort((keys[:, 1], keys[:, 0]))
        return cls(sid, len(keys), keys[order, 0].copy(), keys[order, 1].copy(), vectors[order])

    def find(self, hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, positions) for query keys; equal `hi` runs are searched on `lo` too."""
        left = np.searchsorted(self.hi, hi, side="left")
        right = np.searchsorted(self.hi, hi, side="right")
        found = np.zeros(len(hi), dtype=bool)
        pos = np.minimum(left, max(self.rows - 1, 0))
        one = right - left == 1
        found[one] = self.lo[pos[one]] == lo[one]
        for i in np.flatnonzero(right - left > 1):  # the same 64-bit prefix twice: practically never
            j = left[i] + np.searchsorted(self.lo[left[i] : right[i]], lo[i])
            if j < right[i] and self.lo[j] == lo[i]:
                found[i], pos[i] = True, j
        return found, pos


@dataclass
class _Loaded:
    shards: dict[int, _Shard] = field(default_factory=dict)
    dims: int = 0


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
        n = len(keys)
        found = np.zeros(n, dtype=bool)
        out = np.zeros((n, loaded.dims), np.float32)
        if not n or not loaded.shards:
            return found, out
        hi, lo = _split(_key_array(keys))
        for shard in sorted(loaded.shards.values(), key=lambda sh: -sh.id):  # newest first
            todo = np.flatnonzero(~found)
            if not len(todo):
                break
            ok, pos = shard.find(hi[todo], lo[todo])
            hit = todo[ok]
            out[hit] = shard.vectors[pos[ok]]
            found[hit] = True
        return found, out

    def add(self, model_id: str, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Store new vectors as one shard, then merge shards of a size tier that has too many."""
        if not len(keys):
            return
        from opentracy.store.tables import EmbeddingShardRecord

        vectors = np.asarray(vectors, dtype=np.float16)
        karr = _key_array(list(keys))
        key, rows = self._write_shard(karr, vectors)
        with self.catalog.session() as s:
            rec = EmbeddingShardRecord(model_id=model_id, key=key, rows=rows, dims=int(vectors.shape[1]))
            s.add(rec)
            s.flush()
            sid = int(rec.id)
        with self._lock:
            loaded = self._loaded.get(model_id)
            if loaded is not None:
                loaded.shards[sid] = _Shard.build(sid, karr, vectors)
                loaded.dims = int(vectors.shape[1])
        self._merge_tiers(model_id)

    def count(self, model_id: str) -> int:
        """Vectors stored for a model (a text stored in two shards counts twice until they merge)."""
        return sum(sh.rows for sh in self._refresh(model_id).shards.values())

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

    def compact(self, model_id: str, shard_ids: Sequence[int] | None = None) -> None:
        """Merge shards (all of the model's by default) into one, keeping each key once (the newest), and
        remove the merged shards' files."""
        from opentracy.store.tables import EmbeddingShardRecord

        loaded = self._refresh(model_id)
        with self._lock:
            ids = sorted(loaded.shards if shard_ids is None else [i for i in shard_ids if i in loaded.shards])
            if len(ids) < 2:
                return
            parts = [loaded.shards[i] for i in reversed(ids)]  # newest first: its copy of a key wins
            keys = np.concatenate([np.stack([p.hi, p.lo], 1) for p in parts])
            vecs = np.concatenate([p.vectors for p in parts])
        _, first = np.unique(keys, axis=0, return_index=True)
        keys, vecs = keys[first], vecs[first]
        key, rows = self._write_shard(keys, vecs)
        with self.catalog.session() as s:
            old = {
                r.id: r.key
                for r in s.scalars(select(EmbeddingShardRecord).where(EmbeddingShardRecord.id.in_(ids)))
            }
            s.execute(delete(EmbeddingShardRecord).where(EmbeddingShardRecord.id.in_(ids)))
            rec = EmbeddingShardRecord(model_id=model_id, key=key, rows=rows, dims=int(vecs.shape[1]))
            s.add(rec)
            s.flush()
            sid = int(rec.id)
        for k in set(old.values()) - {key}:
            self.artifacts.delete(k)
        with self._lock:
            for i in ids:
                loaded.shards.pop(i, None)
            loaded.shards[sid] = _Shard.build(sid, keys, vecs)

    # -- internals -----------------------------------------------------------------------------------
    def _merge_tiers(self, model_id: str) -> None:
        """Size-tiered merging (as in LSM trees): shards whose row counts are within a factor of 4 form a
        tier; a tier of TIER_FANOUT shards is merged into one, which moves up a tier. Each vector is
        rewritten O(log n) times, and a model keeps a few dozen shards at most."""
        loaded = self._refresh(model_id)
        while True:
            tiers: dict[int, list[int]] = {}
            for sid, sh in loaded.shards.items():
                tiers.setdefault(int(np.log(max(sh.rows, 1)) / np.log(4)), []).append(sid)
            full = [ids for ids in tiers.values() if len(ids) >= TIER_FANOUT]
            if not full:
                return
            self.compact(model_id, full[0])

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
        """The model's shards in memory: shards merged away (here or by another process) are dropped, new
        ones read; nothing is read twice."""
        listed = self._shards(model_id)
        with self._lock:
            loaded = self._loaded.setdefault(model_id, _Loaded())
            ids = {i for i, _ in listed}
            for sid in [i for i in loaded.shards if i not in ids]:
                del loaded.shards[sid]
            for sid, key in listed:
                if sid in loaded.shards:
                    continue
                t = pq.read_table(self.artifacts.verify(key))
                kcol = t.column("key").combine_chunks()
                vcol = t.column("vector").combine_chunks()
                d = vcol.type.list_size
                raw = np.frombuffer(
                    kcol.buffers()[1], dtype="<u8", count=2 * len(kcol), offset=kcol.offset * 16
                )
                vec = vcol.values.to_numpy(zero_copy_only=False).reshape(-1, d)
                loaded.shards[sid] = _Shard.build(sid, raw.reshape(-1, 2), vec)
                loaded.dims = d
            return loaded

    def _write_shard(self, keys: np.ndarray, vectors: np.ndarray) -> tuple[str, int]:
        vectors = np.ascontiguousarray(vectors, dtype=np.float16)
        d = vectors.shape[1]
        raw = np.ascontiguousarray(keys, dtype="<u8").tobytes()
        kcol = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(KEY_BYTES), len(keys), [None, pa.py_buffer(raw)]
        )
        table = pa.table(
            {
                "key": kcol,
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float16()), d),
            }
        )
        tmp = self.artifacts.scratch_file("emb", ".parquet")
        pq.write_table(table, tmp, compression="zstd")
        key, _sha, _size = self.artifacts.put_file(tmp, prefix="embeddings", suffix=".parquet")
        return key, len(keys)
