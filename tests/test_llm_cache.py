"""The response cache: key stability and sensitivity, get/put, idempotent put, hits, and survival across a
restart (a new Engine on the same database). Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from conftest import in_threads

from opentracy.config import Settings
from opentracy.engine import Engine
from opentracy.llm.cache import EXCLUDED_PARAMS, ResponseCache

MSGS = [{"role": "system", "content": "Classify."}, {"role": "user", "content": "My invoice is wrong"}]


def payload(content: str = "billing") -> dict:
    return {
        "content": content,
        "message": {"role": "assistant", "content": content},
        "finish_reason": "stop",
        "usage": {"input_tokens": 12, "output_tokens": 1},
        "model": "gpt-4o-mini-2024-07-18",
    }


def test_key_is_stable() -> None:
    k = ResponseCache.key("openai/gpt-4o", MSGS, {"temperature": 0.2, "max_tokens": 5}, 0)
    assert len(k) == 64 and int(k, 16) >= 0
    # the same request, built differently: key order, None params, a copy of the messages
    assert k == ResponseCache.key(
        "openai/gpt-4o",
        [dict(reversed(list(m.items()))) for m in MSGS],
        {"max_tokens": 5, "temperature": 0.2, "top_p": None},
        0,
    )
    assert k == ResponseCache.key("openai/gpt-4o", MSGS, {"temperature": 0.2, "max_tokens": 5})  # sample=0


def test_key_document() -> None:
    """The key is sha256 of this exact canonical JSON, pinned: it must not change with the process, the Python
    version or a code change, or the cache stops surviving upgrades."""
    import hashlib

    doc = '{"messages":[{"content":"hi","role":"user"}],"model":"openai/gpt-4o","params":{"seed":3},"sample":1,"v":1}'
    assert ResponseCache.key("openai/gpt-4o", [{"role": "user", "content": "hi"}], {"seed": 3}, 1) == (
        hashlib.sha256(doc.encode()).hexdigest()
    )


def test_key_is_sensitive() -> None:
    base = ResponseCache.key("openai/gpt-4o", MSGS, {"temperature": 0.2}, 0)
    others = [
        ResponseCache.key("openai/gpt-4o", MSGS, {"temperature": 0.2}, 1),  # sample index
        ResponseCache.key("openai/gpt-4o", MSGS, {"temperature": 0.3}, 0),  # a parameter's value
        ResponseCache.key("openai/gpt-4o", MSGS, {"temperature": 0.2, "seed": 1}, 0),  # one more parameter
        ResponseCache.key("openai/gpt-4o", MSGS, {}, 0),  # one fewer
        ResponseCache.key("openai/gpt-4o-mini", MSGS, {"temperature": 0.2}, 0),  # the model
        ResponseCache.key("openai/gpt-4o", MSGS[:1], {"temperature": 0.2}, 0),  # the messages
        ResponseCache.key(
            "openai/gpt-4o",
            [MSGS[0], {**MSGS[1], "content": "My invoice is wrong!"}],
            {"temperature": 0.2},
            0,
        ),
        ResponseCache.key(
            "openai/gpt-4o",
            MSGS,
            {"temperature": 0.2, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            0,
        ),
    ]
    assert len({base, *others}) == len(others) + 1


def test_excluded_params_do_not_change_the_key() -> None:
    base = ResponseCache.key("openai/gpt-4o", MSGS, {"temperature": 0.2}, 0)
    noise = {
        "stream": True,
        "stream_options": {"include_usage": True},
        "timeout": 30,
        "user": "u-123",
        "metadata": {"run": "x"},
        "api_key": "sk-…",
        "extra_headers": {"X-Trace": "1"},
    }
    assert set(noise) <= EXCLUDED_PARAMS
    assert ResponseCache.key("openai/gpt-4o", MSGS, {"temperature": 0.2, **noise}, 0) == base
    assert (
        not {"temperature", "seed", "max_tokens", "response_format", "tools", "n", "stop"} & EXCLUDED_PARAMS
    )


def test_key_accepts_pydantic_objects() -> None:
    from pydantic import BaseModel

    class Verdict(BaseModel):
        score: int

    k1 = ResponseCache.key("openai/gpt-4o", MSGS, {"response_format": Verdict}, 0)
    k2 = ResponseCache.key("openai/gpt-4o", MSGS, {"response_format": Verdict.model_json_schema()}, 0)
    assert k1 == k2


def test_get_put_idempotent_stats_clear(engine: Engine) -> None:
    cache = engine.llm_cache
    k = cache.key("openai/gpt-4o", MSGS, {}, 0)
    assert cache.get(k) is None
    assert cache.put(k, "openai/gpt-4o", payload("billing")) is True
    assert cache.get(k) == payload("billing")
    # a second put of the same key keeps the first answer
    assert cache.put(k, "openai/gpt-4o", payload("technical")) is False
    assert cache.get(k) == payload("billing")
    k2 = cache.key("openai/gpt-4o", MSGS, {}, 1)
    cache.put(k2, "openai/gpt-4o", payload("technical"))
    k3 = cache.key("anthropic/claude-3-5-haiku-latest", MSGS, {}, 0)
    cache.put(k3, "anthropic/claude-3-5-haiku-latest", payload("billing"))
    st = cache.stats()
    assert st["entries"] == 3
    assert st["hits"] == 2  # two gets found k; misses are not hits
    assert st["models"] == {"anthropic/claude-3-5-haiku-latest": 1, "openai/gpt-4o": 2}
    assert cache.delete(k3) is True and cache.delete(k3) is False
    assert cache.clear(model="nobody/none") == 0
    assert cache.clear() == 2
    assert cache.get(k) is None and cache.stats() == {"entries": 0, "hits": 0, "models": {}}


def test_concurrent_puts_of_one_key(engine: Engine) -> None:
    cache = engine.llm_cache
    k = cache.key("openai/gpt-4o", MSGS, {}, 7)
    stored = in_threads(lambda i: cache.put(k, "openai/gpt-4o", payload(f"answer {i}")), 8)
    assert stored.count(True) == 1 and len(stored) == 8
    assert cache.stats()["entries"] == 1


def test_survives_a_restart(settings: Settings) -> None:
    with Engine(settings) as first:
        k = first.llm_cache.key("openai/gpt-4o", MSGS, {"temperature": 0}, 2)
        first.llm_cache.put(k, "openai/gpt-4o", payload("feature_request"))
    with Engine(settings) as second:
        k2 = second.llm_cache.key("openai/gpt-4o", MSGS, {"temperature": 0}, 2)
        assert k2 == k
        assert second.llm_cache.get(k2) == payload("feature_request")
