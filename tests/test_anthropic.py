"""`anthropic/…` models through the gateway, against the mock server's `POST /v1/messages` (Anthropic's
shape), through the official `anthropic` SDK: the production path."""

from __future__ import annotations

import time

import anthropic
import pytest
from pydantic import BaseModel, Field

from opentracy.errors import InvalidInput
from opentracy.llm.gateway import Endpoint, Gateway, LLMError, LLMRateLimited, LLMTimeout, load_endpoints
from opentracy.llm.pricing import Pricing
from opentracy.llm.providers.anthropic import SCHEMA_TOOL, to_messages, to_request
from opentracy.testing import MockLLM, Reply

MSG = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Classify: where is my card?"},
]
MODEL = "anthropic/claude-sonnet-4-6"


def gateway(mock: MockLLM, **kw) -> Gateway:
    eps = {"anthropic": Endpoint("anthropic", mock.url, "test-key", 32, kind="anthropic")}
    kw.setdefault("backoff_base", 0.01)
    return Gateway(endpoints=eps, **kw)


def message_requests(mock: MockLLM) -> list[dict]:
    return [r for r in mock.requests if r["path"] == "/v1/messages"]


def test_a_call_maps_messages_and_returns_text_tokens_latency():
    with MockLLM() as mock:
        gw = gateway(mock)
        c = gw.complete_sync(MODEL, MSG, params={"temperature": 0.2, "stop": "###"})
        gw.close()
    assert c.content and c.finish_reason == "stop" and c.model == MODEL
    assert (
        c.input_tokens > 0 and c.output_tokens > 0 and c.latency_s > 0 and c.message["content"] == c.content
    )
    req = message_requests(mock)
    assert len(req) == 1
    body, headers = req[0]["body"], req[0]["headers"]
    assert body["model"] == "claude-sonnet-4-6" and body["system"] == "You are terse."
    assert body["messages"] == [{"role": "user", "content": "Classify: where is my card?"}]
    assert body["max_tokens"] == 4096 and body["temperature"] == 0.2 and body["stop_sequences"] == ["###"]
    assert "seed" not in body  # Anthropic has none; the gateway's sample index is not sent
    assert "test-key" in (headers.get("x-api-key", "") + headers.get("authorization", ""))
    assert headers.get("anthropic-version")


def test_the_preset_reaches_anthropic_by_its_own_variables():
    with MockLLM() as mock:
        eps = load_endpoints({"ANTHROPIC_BASE_URL": mock.url, "ANTHROPIC_API_KEY": "env-key"})
        assert eps["anthropic"].kind == "anthropic"
        gw = Gateway(endpoints=eps)
        c = gw.complete_sync(MODEL, MSG)
        gw.close()
    assert c.content and "env-key" in str(message_requests(mock)[0]["headers"])


def test_usage_and_cost_from_the_price_table():
    usage = {"input_tokens": 1000, "output_tokens": 500}
    with MockLLM(script=lambda req: Reply(content="billing", usage=usage)) as mock:
        gw = gateway(mock, pricing=Pricing(environ={}))
        c = gw.complete_sync(MODEL, MSG)
        gw.close()
    assert c.content == "billing" and (c.input_tokens, c.output_tokens) == (1000, 500)
    assert c.cost_usd == pytest.approx(1000 * 3e-6 + 500 * 15e-6)  # genai-prices: $3 / $15 per MTok


def test_cache_tokens_count_as_input():
    usage = {"input_tokens": 10, "cache_read_input_tokens": 90, "output_tokens": 5}
    with MockLLM(script=lambda req: Reply(content="x", usage=usage)) as mock:
        gw = gateway(mock)
        c = gw.complete_sync(MODEL, MSG)
        gw.close()
    assert (c.input_tokens, c.output_tokens) == (100, 5)


def test_429_with_retry_after_is_retried_and_succeeds():
    rules = [{"reply": {"status": 429, "headers": {"retry-after": "1"}}, "times": 1}]
    with MockLLM(script=rules) as mock:
        gw = gateway(mock)
        t = time.perf_counter()
        c = gw.complete_sync(MODEL, MSG)
        elapsed = time.perf_counter() - t
        gw.close()
    assert c.attempts == 2 and len(message_requests(mock)) == 2 and c.content
    assert elapsed >= 0.95  # waited what the server asked


def test_429_to_the_end_is_a_typed_error_in_anthropics_shape():
    with MockLLM(script=[{"reply": {"status": 429, "headers": {"retry-after": "0"}}}]) as mock:
        gw = gateway(mock, max_retries=1)
        with pytest.raises(LLMRateLimited) as e:
            gw.complete_sync(MODEL, MSG)
        gw.close()
    assert e.value.status == 429 and "rate_limit_error" in str(e.value) and len(message_requests(mock)) == 2


def test_529_overloaded_and_5xx_are_retried_400_is_not():
    with MockLLM(
        script=[{"reply": {"status": 529}, "times": 1}, {"reply": {"status": 500}, "times": 1}]
    ) as mock:
        gw = gateway(mock)
        assert gw.complete_sync(MODEL, MSG).attempts == 3
        gw.close()
    with MockLLM(script=[{"reply": {"status": 400, "content": "max_tokens: too large"}}]) as mock:
        gw = gateway(mock)
        with pytest.raises(LLMError) as e:
            gw.complete_sync(MODEL, MSG)
        gw.close()
    assert e.value.status == 400 and not e.value.retryable and "max_tokens: too large" in str(e.value)
    assert len(message_requests(mock)) == 1


def test_a_hung_call_times_out():
    with MockLLM(script=[{"reply": {"hang": True}}]) as mock:
        gw = gateway(mock)
        t = time.perf_counter()
        with pytest.raises(LLMTimeout):
            gw.complete_sync(MODEL, MSG, timeout=0.5, max_retries=0)
        assert time.perf_counter() - t < 3
        gw.close()


def test_malformed_answers_are_retried_then_reported():
    for stream in (False, True):
        with MockLLM(script=[{"reply": {"malformed": True}}]) as mock:
            gw = gateway(mock, max_retries=1)
            with pytest.raises(LLMError, match="malformed"):
                gw.complete_sync(MODEL, MSG, stream=stream)
            gw.close()
        assert len(message_requests(mock)) == 2


def test_streaming_gives_time_to_first_token_and_the_same_answer():
    with MockLLM() as mock:
        gw = gateway(mock)
        plain = gw.complete_sync(MODEL, MSG)
        mock.script = lambda req: Reply(chunk_delay_ms=40)
        s = gw.complete_sync(MODEL, MSG, stream=True)
        gw.close()
    assert message_requests(mock)[1]["body"]["stream"] is True
    assert s.content == plain.content and s.finish_reason == "stop"
    assert (s.input_tokens, s.output_tokens) == (plain.input_tokens, plain.output_tokens)
    n_events = 6 + len(plain.content.split())  # start, ping, block start/stop, delta, stop + one per word
    assert s.ttft_s is not None and 0 < s.ttft_s < s.latency_s
    assert s.latency_s - s.ttft_s >= 0.04 * (
        n_events - 4
    )  # the rest of the stream came after the first token


def test_finish_reasons_are_mapped():
    with MockLLM() as mock:
        gw = gateway(mock)
        cut = gw.complete_sync(MODEL, MSG, params={"max_tokens": 3})
        mock.script = lambda req: Reply(content="done", finish_reason="stop_sequence")
        stopped = gw.complete_sync(MODEL, MSG)
        gw.close()
    assert cut.finish_reason == "length" and cut.output_tokens <= 3
    assert stopped.finish_reason == "stop"


def test_tools_in_openai_shape_round_trip():
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup_card",
                "description": "Find a card",
                "parameters": {
                    "type": "object",
                    "properties": {"last4": {"type": "string", "maxLength": 4}},
                    "required": ["last4"],
                },
            },
        }
    ]
    with MockLLM() as mock:
        gw = gateway(mock)
        c = gw.complete_sync(MODEL, MSG, params={"tools": tools, "tool_choice": "required"})
        call = c.message["tool_calls"][0]
        follow = [
            *MSG,
            c.message,
            {"role": "tool", "tool_call_id": call["id"], "content": "card 1234: shipped"},
        ]
        c2 = gw.complete_sync(MODEL, follow, params={"tools": tools})
        gw.close()
    assert c.finish_reason == "tool_calls" and call["function"]["name"] == "lookup_card"
    import json

    assert len(json.loads(call["function"]["arguments"])["last4"]) <= 4
    b1, b2 = (r["body"] for r in message_requests(mock))
    assert b1["tools"][0] == {
        "name": "lookup_card",
        "description": "Find a card",
        "input_schema": tools[0]["function"]["parameters"],
    }
    assert b1["tool_choice"] == {"type": "any"}
    assert b2["messages"][1]["role"] == "assistant" and b2["messages"][1]["content"][0]["type"] == "tool_use"
    assert b2["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "card 1234: shipped"}],
    }
    assert c2.content and c2.finish_reason == "stop"


class Verdict(BaseModel):
    score: float = Field(ge=0, le=1)
    reason: str


def test_structured_output_is_a_forced_tool():
    with MockLLM() as mock:
        gw = gateway(mock)
        c = gw.complete_sync(MODEL, MSG, response_model=Verdict)
        s = gw.complete_sync(MODEL, MSG, response_model=Verdict, stream=True)
        gw.close()
    assert isinstance(c.parsed, Verdict) and 0 <= c.parsed.score <= 1 and c.finish_reason == "stop"
    assert s.parsed == c.parsed and s.ttft_s is not None
    body = message_requests(mock)[0]["body"]
    assert body["tools"][0]["input_schema"] == Verdict.model_json_schema()
    assert body["tool_choice"] == {"type": "tool", "name": SCHEMA_TOOL}
    assert "response_format" not in body


def test_structured_output_repairs_once_then_reports():
    bad = {"tool_calls": [{"name": SCHEMA_TOOL, "arguments": {"score": 7, "reason": "too high"}}]}
    with MockLLM(script=[{"reply": bad, "times": 1}]) as mock:
        gw = gateway(mock)
        c = gw.complete_sync(MODEL, MSG, response_model=Verdict)
        gw.close()
    reqs = message_requests(mock)
    assert len(reqs) == 2 and isinstance(c.parsed, Verdict)
    assert reqs[1]["body"]["messages"][1] == {
        "role": "assistant",
        "content": '{"score": 7, "reason": "too high"}',
    }
    assert "not valid for the required JSON schema" in reqs[1]["body"]["messages"][-1]["content"]
    from opentracy.llm.types import StructuredOutputError

    with MockLLM(script=[{"reply": bad}]) as mock:
        gw = gateway(mock)
        with pytest.raises(StructuredOutputError):
            gw.complete_sync(MODEL, MSG, response_model=Verdict)
        gw.close()


def test_unsupported_parameters_are_refused_before_any_request():
    with MockLLM() as mock:
        gw = gateway(mock)
        with pytest.raises(InvalidInput, match="logprobs"):
            gw.complete_sync(MODEL, MSG, params={"logprobs": True})
        gw.close()
    assert message_requests(mock) == []


def test_message_mapping():
    system, msgs = to_messages(
        [
            {"role": "system", "content": "A"},
            {"role": "developer", "content": [{"type": "text", "text": "B"}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
                    {"id": "t2", "type": "function", "function": {"name": "f", "arguments": '{"x": 2}'}},
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "one"},
            {"role": "tool", "tool_call_id": "t2", "content": "two"},
        ],
        "anthropic/x",
    )
    assert system == "A\n\nB"
    assert msgs[0]["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"},
    }
    assert [b["input"] for b in msgs[1]["content"]] == [{"x": 1}, {"x": 2}]
    assert [b["tool_use_id"] for b in msgs[2]["content"]] == ["t1", "t2"] and len(msgs) == 3
    body, forced = to_request(
        "m", [{"role": "user", "content": "hi"}], {"max_completion_tokens": 9, "seed": 3}, 4096, "x"
    )
    assert body == {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}
    assert not forced
    with pytest.raises(InvalidInput, match="unknown role"):
        to_messages([{"role": "robot", "content": "x"}], "x")


def test_the_unmodified_sdk_talks_to_the_mock():
    with MockLLM() as mock, anthropic.Anthropic(base_url=mock.url, api_key="k", max_retries=0) as client:
        m = client.messages.create(
            model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "hello there"}]
        )
        assert m.content[0].type == "text" and m.stop_reason == "end_turn" and m.usage.output_tokens > 0
        with client.messages.stream(
            model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "hello there"}]
        ) as s:
            text = "".join(s.text_stream)
        assert text == m.content[0].text
        mock.script = [{"reply": {"status": 529}}]
        with pytest.raises(anthropic.InternalServerError) as e:
            client.messages.create(model="x", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 529 and e.value.body["error"]["type"] == "overloaded_error"
