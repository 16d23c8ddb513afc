"""The response cache: model answers stored in the catalog, keyed by what was asked.

    key = cache.key("openai/gpt-4o", messages, {"temperature": 0.2}, sample=0)
    hit = cache.get(key)            # the stored payload, or None
    cache.put(key, "openai/gpt-4o", {"content": ..., "message": ..., "finish_reason": ..., "usage": ..., "model": ...})

The key is the SHA-256 of a canonical JSON document (sorted keys, no whitespace) holding the model string
(already resolved from any alias), the messages, the parameters and the sample index. It depends on nothing
else (not the process, not the code version), so the cache survives restarts and upgrades; a re-run or a
resumed job asks the same questions and pays nothing. Parameters set to None count as absent.

Parameters left out of the key, because they do not change the answer: see `EXCLUDED_PARAMS`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import delete, func, select, update

from opentracy.store.catalog import Catalog
from opentracy.store.tables import LLMCacheRecord, utcnow

KEY_VERSION = 1  # bump if the key's document ever changes shape: old entries are then simply never hit

# Transport, streaming, accounting and identification settings: the same request answers the same with or
# without them. Everything else (temperature, seed, max_tokens, response_format, tools, n, stop, …) counts.
EXCLUDED_PARAMS: frozenset[str] = frozenset(
    {
        "stream",  # how the answer is delivered, not what it is
        "stream_options",
        "timeout",  # how long we wait
        "request_timeout",
        "max_retries",
        "extra_headers",
        "extra_query",
        "api_key",  # rotating a key must not empty the cache
        "user",  # end-user id, for the provider's abuse monitoring
        "safety_identifier",
        "metadata",  # tags stored with the completion at the provider
        "store",
        "service_tier",  # latency and price tier, not content
        "prompt_cache_key",  # the provider's own prompt cache
    }
)


def _default(o: Any) -> Any:
    """JSON for what json cannot encode by itself: pydantic models (and model classes), sets, bytes."""
    if isinstance(o, type):
        schema = getattr(o, "model_json_schema", None)
        if callable(schema):
            return schema()
    else:
        dump = getattr(o, "model_dump", None)
        if callable(dump):
            return dump(mode="json")
    if isinstance(o, (set, frozenset)):
        return sorted(o, key=repr)
    if isinstance(o, bytes):
        return o.hex()
    raise TypeError(f"cannot use a {type(o).__name__} in a cache key: {o!r:.80}")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default)


class ResponseCache:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        dialect = catalog.engine.dialect.name
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:  # pragma: no cover - the catalog supports SQLite and PostgreSQL
            insert = None
        self._insert = insert

    @staticmethod
    def key(model: str, messages: list[Any], params: dict[str, Any] | None, sample: int = 0) -> str:
        """SHA-256 (hex) of the canonical JSON of (model, messages, params without EXCLUDED_PARAMS and
        without None values, sample index)."""
        kept = {k: v for k, v in (params or {}).items() if v is not None and k not in EXCLUDED_PARAMS}
        doc = {"v": KEY_VERSION, "model": model, "messages": messages, "params": kept, "sample": int(sample)}
        return hashlib.sha256(canonical_json(doc).encode("utf-8")).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored payload for `key`, or None. A hit is counted."""
        with self.catalog.session() as s:
            payload = s.execute(select(LLMCacheRecord.payload).where(LLMCacheRecord.key == key)).scalar()
            if payload is None:
                return None
            s.execute(
                update(LLMCacheRecord).where(LLMCacheRecord.key == key).values(hits=LLMCacheRecord.hits + 1)
            )
            return payload

    def put(self, key: str, model: str, payload: dict[str, Any]) -> bool:
        """Store `payload` under `key`. Idempotent: if the key is already there, the first answer stays.
        Returns whether this call stored it."""
        row = {"key": key, "model": model, "payload": payload, "created_at": utcnow(), "hits": 0}
        with self.catalog.session() as s:
            if self._insert is not None:
                stmt = (
                    self._insert(LLMCacheRecord)
                    .values(**row)
                    .on_conflict_do_nothing(index_elements=["key"])
                    .returning(LLMCacheRecord.key)
                )
                return s.execute(stmt).first() is not None
            if s.get(LLMCacheRecord, key) is not None:  # pragma: no cover
                return False
            s.add(LLMCacheRecord(**row))  # pragma: no cover
            return True  # pragma: no cover

    def delete(self, key: str) -> bool:
        with self.catalog.session() as s:
            return (s.execute(delete(LLMCacheRecord).where(LLMCacheRecord.key == key)).rowcount or 0) > 0

    def stats(self) -> dict[str, Any]:
        """{"entries", "hits", "models": {model: entries}}."""
        with self.catalog.session() as s:
            rows = s.execute(
                select(LLMCacheRecord.model, func.count(), func.coalesce(func.sum(LLMCacheRecord.hits), 0))
                .group_by(LLMCacheRecord.model)
                .order_by(LLMCacheRecord.model)
            ).all()
        return {
            "entries": sum(int(n) for _, n, _ in rows),
            "hits": sum(int(h) for _, _, h in rows),
            "models": {m: int(n) for m, n, _ in rows},
        }

    def clear(self, model: str | None = None) -> int:
        """Remove every entry (or only those of one model string); returns how many were removed."""
        with self.catalog.session() as s:
            stmt = delete(LLMCacheRecord)
            if model is not None:
                stmt = stmt.where(LLMCacheRecord.model == model)
            return int(s.execute(stmt).rowcount or 0)
