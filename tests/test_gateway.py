"""The LLM gateway against the scripted OpenAI-compatible server, through the production code path."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import BaseModel, Field

from opentracy.errors import InvalidInput
from opentracy.llm.gateway import (
    Endpoint,
    Gateway,
    LLMError,
    LLMRateLimited,
    LLMTimeout,
    StructuredOutputError,
    _Limiter,
)
from opentracy.testing import MockLLM, Reply

MSG = [{"role": "user", "content": "Classify: where is my card?"}]


def gateway(mock, **kw) -> Gateway:
    eps = {"openai": Endpoint("openai", mock.base_url, "test-key", kw.pop("max_in_flight", 32))}
    kw.setdefault("backoff_base", 0.01)
    return Gateway(endpoints=eps, **kw)


def chat_requests(mock) -> list[dict]:
    return [r for r in mock.requests if r["path"].endswith("/chat/completions")]


def test_a_call_returns_text_tokens_latency():
    with MockLLM() as mock:
        gw = gateway(mock)
        c = gw.complete_sync("openai/gpt-4o-mini", MSG)
        gw.close()
    assert c.content and c.finish_reason == "stop" and c.model == "openai/gpt-4o-mini"
    assert c.input_tokens > 0 and c.output_tokens > 0 and c.latency_s > 0 and not c.cached
    body = chat_requests(mock)[0]["body"]
    assert body["model"] == "gpt-4o-mini" and body["messages"] == MSG
    assert mock.requests[0]["headers"]["authorization"] == "Bearer test-key"


def test_samples_differ_and_are_reproducible():
    with MockLLM() as mock:
        gw = gateway(mock)
        a = [gw.complete_sync("openai/m", MSG, sample=i).content for i in range(4)]
        b = [gw.complete_sync("openai/m", MSG, sample=i).content for i in range(4)]
        gw.close()
    assert len(set(a)) == 4 and a == b


def test_cost_and_tokens_come_from_the_usage_fields(engine):
    usage = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
    with MockLLM(script=lambda req: Reply(content="billing", usage=usage)) as mock:
        gw = gateway(mock, pricing=engine.pricing)
        c = gw.complete_sync("openai/gpt-4o", MSG)
        gw.close()
    assert (c.input_tokens, c.output_tokens) == (1000, 500)
    expected = engine.pricing.cost("openai/gpt-4o", 1000, 500)
    assert expected is not None and c.cost_usd == pytest.approx(float(expected))
    assert c.cost_usd == pytest.approx(1000 * 2.5e-6 + 500 * 10e-6)  # genai-prices: $2.5 / $10 per MTok


def test_429_with_retry_after_is_retried_and_succeeds():
    rules = [{"reply": {"status": 429, "headers": {"retry-after": "1"}}, "times": 1}]
    with MockLLM(script=rules) as mock:
        gw = gateway(mock)
        t = time.perf_counter()
        c = gw.complete_sync("openai/m", MSG)
        elapsed = time.perf_counter() - t
        gw.close()
    assert c.attempts == 2 and len(chat_requests(mock)) == 2
    assert elapsed >= 0.95  # waited what the server asked


def test_429_without_end_raises_typed_error():
    with MockLLM(script=[{"reply": {"status": 429, "headers": {"retry-after": "0"}}}]) as mock:
        gw = gateway(mock, max_retries=2)
        with pytest.raises(LLMRateLimited) as e:
            gw.complete_sync("openai/m", MSG)
        gw.close()
    assert e.value.status == 429 and len(chat_requests(mock)) == 3


def test_500_is_retried_400_is_not():
    with MockLLM(script=[{"reply": {"status": 500}, "times": 2}]) as mock:
        gw = gateway(mock)
        assert gw.complete_sync("openai/m", MSG).attempts == 3
        gw.close()
    with MockLLM(script=[{"reply": {"status": 400}}]) as mock:
        gw = gateway(mock)
        with pytest.raises(LLMError) as e:
            gw.complete_sync("openai/m", MSG)
        gw.close()
    assert e.value.status == 400 and not e.value.retryable and len(chat_requests(mock)) == 1


def test_a_hung_call_times_out():
    with MockLLM(script=[{"reply": {"hang": True}}]) as mock:
        gw = gateway(mock)
        t = time.perf_counter()
        with pytest.raises(LLMTimeout):
            gw.complete_sync("openai/m", MSG, timeout=0.5, max_retries=0)
        assert time.perf_counter() - t < 3
        gw.close()


def test_malformed_json_is_retried_then_reported():
    with MockLLM(script=[{"reply": {"malformed": True}}]) as mock:
        gw = gateway(mock, max_retries=1)
        with pytest.raises(LLMError, match="malformed"):
            gw.complete_sync("openai/m", MSG)
        gw.close()
    assert len(chat_requests(mock)) == 2


def test_cancelling_the_caller_cancels_the_call():
    async def main(gw):
        task = asyncio.create_task(gw.complete("openai/m", MSG, timeout=30))
        await asyncio.sleep(0.3)
        task.cancel()
        t = time.perf_counter()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.perf_counter() - t

    with MockLLM(script=[{"reply": {"hang": True}}]) as mock:
        gw = gateway(mock)
        assert asyncio.run(main(gw)) < 1.0


def test_a_cached_call_costs_nothing_and_makes_no_request(engine):
    with MockLLM() as mock:
        gw = gateway(mock, cache=engine.llm_cache, pricing=engine.pricing)
        first = gw.complete_sync("openai/gpt-4o-mini", MSG, internal=True)
        again = gw.complete_sync("openai/gpt-4o-mini", MSG, internal=True)
        other_sample = gw.complete_sync("openai/gpt-4o-mini", MSG, internal=True, sample=1)
        not_internal = gw.complete_sync("openai/gpt-4o-mini", MSG)  # user calls are not cached by default
        gw.close()
    assert not first.cached and first.cost_usd and first.cost_usd > 0
    assert again.cached and again.cost_usd == 0 and again.content == first.content
    assert (again.input_tokens, again.output_tokens) == (first.input_tokens, first.output_tokens)
    assert not other_sample.cached and not not_internal.cached
    assert len(chat_requests(mock)) == 3
    # the cache survives a new gateway (and a restart: it lives in the catalog)
    with MockLLM() as mock2:
        gw2 = gateway(mock2, cache=engine.llm_cache)
        assert gw2.complete_sync("openai/gpt-4o-mini", MSG, internal=True).cached
        gw2.close()
    assert chat_requests(mock2) == []


class Verdict(BaseModel):
    score: float = Field(ge=0, le=1)
    reason: str


def test_structured_output_valid_first_time():
    with MockLLM() as mock:
        gw = gateway(mock)
        c = gw.complete_sync("openai/m", MSG, response_model=Verdict)
        gw.close()
    assert isinstance(c.parsed, Verdict) and 0 <= c.parsed.score <= 1
    assert chat_requests(mock)[0]["body"]["response_format"]["type"] == "json_schema"


def test_structured_output_repairs_once():
    rules = [{"reply": {"content": '{"score": 7, "reason": "too high"}'}, "times": 1}]
    with MockLLM(script=rules) as mock:
        gw = gateway(mock)
        c = gw.complete_sync("openai/m", MSG, response_model=Verdict)
        gw.close()
    reqs = chat_requests(mock)
    assert len(reqs) == 2 and isinstance(c.parsed, Verdict)
    assert "not valid for the required JSON schema" in reqs[1]["body"]["messages"][-1]["content"]


def test_structured_output_gives_a_typed_error_after_the_repair():
    with MockLLM(script=[{"reply": {"content": "I think it is about a card."}}]) as mock:
        gw = gateway(mock)
        with pytest.raises(StructuredOutputError) as e:
            gw.complete_sync("openai/m", MSG, response_model=Verdict)
        gw.close()
    assert len(chat_requests(mock)) == 2 and e.value.raw == "I think it is about a card."
    assert e.value.errors


def test_concurrency_never_exceeds_the_limit():
    """Arrival times at the server, each request held 100 ms: no more than 4 may overlap."""
    arrivals: list[float] = []

    def script(req):
        arrivals.append(time.monotonic())
        return None  # the default answer, after the server's latency

    def max_overlap(window: float) -> int:
        ts = sorted(arrivals)
        return max(sum(1 for u in ts if t <= u < t + window) for t in ts)

    with MockLLM(script=script, latency_ms=100) as mock:
        gw = gateway(mock, max_in_flight=4)
        out = gw.run(
            gw.complete_many([{"model": "openai/m", "messages": MSG, "sample": i} for i in range(24)])
        )
        gw.close()
        assert all(not isinstance(x, BaseException) for x in out)
        assert len(arrivals) == 24 and max_overlap(0.09) == 4
        # the same calls without a bound overlap far more: the measurement can tell
        arrivals.clear()
        gw = gateway(mock, max_in_flight=64)
        gw.run(gw.complete_many([{"model": "openai/m", "messages": MSG, "sample": i} for i in range(24)]))
        gw.close()
        assert max_overlap(0.09) > 4


def test_concurrency_by_latency():
    with MockLLM(latency_ms=100) as mock:
        gw = gateway(mock, max_in_flight=4)
        t = time.perf_counter()
        gw.run(gw.complete_many([{"model": "openai/m", "messages": MSG, "sample": i} for i in range(12)]))
        elapsed = time.perf_counter() - t
        gw.close()
    assert elapsed >= 0.3  # 12 calls, 4 at a time, 100 ms each: at least 3 rounds


def test_streaming_gives_time_to_first_token():
    with MockLLM(latency_ms=50) as mock:
        gw = gateway(mock)
        plain = gw.complete_sync("openai/m", MSG)
        streamed = gw.complete_sync("openai/m", MSG, stream=True)
        gw.close()
    assert streamed.content == plain.content and streamed.ttft_s is not None
    assert 0 < streamed.ttft_s <= streamed.latency_s
    assert streamed.output_tokens == plain.output_tokens


def test_requests_per_minute_limiter():
    async def main():
        lim = _Limiter(rpm=120, tpm=None)
        t = time.perf_counter()
        for _ in range(121):
            await lim.acquire(1)
        return time.perf_counter() - t

    assert 0.4 <= asyncio.run(main()) < 1.5  # the 121st waits ~0.5 s for one more token


def test_tokens_per_minute_limiter():
    async def main():
        lim = _Limiter(rpm=None, tpm=6000)
        t = time.perf_counter()
        await lim.acquire(6000)
        await lim.acquire(100)  # needs 1 s of refill
        return time.perf_counter() - t

    assert 0.9 <= asyncio.run(main()) < 2.0


def test_alias_resolves_to_its_model(engine):
    engine.aliases.set("ticket-classifier", "openai/gpt-4o-mini", by="test", reason="cheaper")
    with MockLLM() as mock:
        gw = gateway(mock, aliases=engine.aliases)
        c = gw.complete_sync("ticket-classifier", MSG)
        gw.close()
    assert c.model == "openai/gpt-4o-mini" and c.alias == "ticket-classifier"
    assert chat_requests(mock)[0]["body"]["model"] == "gpt-4o-mini"


def test_bad_model_strings_and_unknown_providers():
    with MockLLM() as mock:
        gw = gateway(mock)
        with pytest.raises(InvalidInput, match="provider/model"):
            gw.complete_sync("gpt-4o", MSG)
        with pytest.raises(InvalidInput, match="OPENTRACY_ENDPOINTS"):
            gw.complete_sync("vllm/llama", MSG)
        gw.close()


def test_named_openai_compatible_endpoint_from_env(monkeypatch):
    from opentracy.llm.gateway import load_endpoints

    with MockLLM() as mock:
        monkeypatch.setenv(
            "OPENTRACY_ENDPOINTS", f'{{"vllm": {{"base_url": "{mock.base_url}", "max_in_flight": 8}}}}'
        )
        gw = Gateway(endpoints=load_endpoints())
        c = gw.complete_sync("vllm/meta-llama/Llama-3.1-8B", MSG)
        gw.close()
    assert c.model == "vllm/meta-llama/Llama-3.1-8B"
    assert chat_requests(mock)[0]["body"]["model"] == "meta-llama/Llama-3.1-8B"


def test_openai_base_url_env_reaches_any_compatible_server(monkeypatch):
    from opentracy.llm.gateway import load_endpoints

    with MockLLM() as mock:
        monkeypatch.setenv("OPENAI_BASE_URL", mock.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        gw = Gateway(endpoints=load_endpoints())
        gw.complete_sync("openai/gpt-4o", MSG)
        gw.close()
    assert mock.requests[0]["headers"]["authorization"] == "Bearer sk-test"
