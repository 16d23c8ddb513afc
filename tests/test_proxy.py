"""The recording proxy, driven by the unmodified `openai` SDK, with the scripted mock server upstream."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from conftest import ServerThread

from opentracy.engine import Engine
from opentracy.llm.gateway import Gateway, load_endpoints
from opentracy.testing import MockLLM, Reply

MSG = [{"role": "user", "content": "Where can I download my invoice for March?"}]
UPSTREAM_KEY = "sk-upstream-" + "x" * 24


@pytest.fixture
def mock() -> Iterator[MockLLM]:
    with MockLLM() as m:
        yield m


@pytest.fixture
def proxy(engine: Engine, mock: MockLLM) -> Iterator[ServerThread]:
    env = {"OPENAI_BASE_URL": mock.base_url, "OPENAI_API_KEY": UPSTREAM_KEY}
    engine._gateway = Gateway(
        aliases=engine.aliases,
        cache=engine.llm_cache,
        pricing=engine.pricing,
        endpoints=load_endpoints(env),
        recorder=engine._record_call,
    )
    with ServerThread(engine) as s:
        yield s


@pytest.fixture
def sdk(proxy: ServerThread) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="caller-key", max_retries=0)
    yield c
    c.close()


def traces(engine: Engine, n: int = 1) -> list:
    """The recorded traces, once there are n (a stream's trace is queued just after its last chunk is sent,
    so the caller can be done a moment before it is)."""
    import time

    deadline = time.monotonic() + 10
    while True:
        assert engine.trace_writer.flush(10)
        items = engine.traces.list(limit=1000).items
        if len(items) >= n or time.monotonic() > deadline:
            return items
        time.sleep(0.02)


def test_non_streaming_call_is_answered_and_recorded(
    engine: Engine, mock: MockLLM, sdk: openai.OpenAI
) -> None:
    r = sdk.chat.completions.create(model="gpt-4o-mini", messages=MSG, temperature=0.2)
    direct = openai.OpenAI(base_url=mock.base_url, api_key="x").chat.completions.create(
        model="gpt-4o-mini", messages=MSG, temperature=0.2
    )
    assert r.choices[0].message.content == direct.choices[0].message.content  # the upstream's answer, as is
    up = [q for q in mock.requests if q["path"].endswith("/chat/completions")][0]
    assert up["body"] == {"model": "gpt-4o-mini", "messages": MSG, "temperature": 0.2}
    assert up["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"  # the configured key, not the caller's
    (t,) = traces(engine)
    assert t.model == "openai/gpt-4o-mini" and t.source == "proxy" and t.status_code == 200
    assert t.request == {"messages": MSG, "params": {"temperature": 0.2}}
    assert t.response["message"]["content"] == r.choices[0].message.content
    assert (t.input_tokens, t.output_tokens) == (r.usage.prompt_tokens, r.usage.completion_tokens)
    assert t.cost_usd == pytest.approx(
        engine.pricing.cost("openai/gpt-4o-mini", t.input_tokens, t.output_tokens)
    )
    assert t.finish_reason == "stop" and t.latency_ms > 0 and not t.error


def test_streaming_passes_chunks_and_records_the_assembled_answer(
    engine: Engine, mock: MockLLM, sdk: openai.OpenAI
) -> None:
    chunks = list(sdk.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and all(c.choices for c in chunks)  # the usage chunk we asked for is not passed on
    up = [q for q in mock.requests if q["path"].endswith("/chat/completions")][0]
    assert up["body"]["stream_options"] == {"include_usage": True}
    (t,) = traces(engine)
    assert t.response["message"]["content"] == text and t.finish_reason == "stop"
    assert t.input_tokens and t.output_tokens and t.cost_usd and t.ttft_ms is not None
    assert t.request["params"]["stream"] is True


def test_streaming_with_usage_asked_by_the_caller(engine: Engine, sdk: openai.OpenAI) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model="gpt-4o-mini", messages=MSG, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    (t,) = traces(engine)
    assert t.output_tokens == chunks[-1].usage.completion_tokens


def test_tool_calls_stream(engine: Engine, mock: MockLLM, sdk: openai.OpenAI) -> None:
    mock.script = lambda req: Reply(
        tool_calls=[{"name": "lookup", "arguments": '{"id": 7}'}], finish_reason="tool_calls"
    )
    list(sdk.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True))
    (t,) = traces(engine)
    call = t.response["message"]["tool_calls"][0]
    assert (
        call["function"] == {"name": "lookup", "arguments": '{"id": 7}'} and t.finish_reason == "tool_calls"
    )


def test_an_alias_as_the_model(engine: Engine, mock: MockLLM, sdk: openai.OpenAI) -> None:
    engine.aliases.set("support-bot", "openai/gpt-4o", by="test")
    sdk.chat.completions.create(model="support-bot", messages=MSG)
    up = [q for q in mock.requests if q["path"].endswith("/chat/completions")][0]
    assert up["body"]["model"] == "gpt-4o"
    (t,) = traces(engine)
    assert (t.model, t.alias) == ("openai/gpt-4o", "support-bot")
    names = [m.id for m in sdk.models.list().data]
    assert "support-bot" in names and "gpt-4o" in names  # upstream models plus aliases


@pytest.mark.parametrize("status", [429, 500])
def test_upstream_errors_pass_through_and_are_recorded(
    engine: Engine, mock: MockLLM, sdk: openai.OpenAI, status: int
) -> None:
    mock.script = lambda req: Reply(
        status=status, content=f"upstream says {status}", headers={"retry-after": "7"}
    )
    with pytest.raises(openai.APIStatusError) as e:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert e.value.status_code == status
    assert e.value.body["message"] == f"upstream says {status}"  # type: ignore[index]
    assert e.value.response.headers.get("retry-after") == "7"
    assert len([q for q in mock.requests if q["path"].endswith("/chat/completions")]) == 1  # no retry by us
    (t,) = traces(engine)
    assert (
        t.status_code == status and t.error == f"HTTP {status}: upstream says {status}" and t.response is None
    )


def test_unreachable_upstream_is_a_502_and_an_error_trace(engine: Engine, proxy: ServerThread) -> None:
    from conftest import free_port

    engine.gateway.endpoints["dead"] = engine.gateway.endpoints["openai"].__class__(
        "dead", f"http://127.0.0.1:{free_port()}/v1", None, 4
    )
    with httpx.Client(base_url=proxy.url) as h:
        r = h.post("/v1/chat/completions", json={"model": "dead/m", "messages": MSG})
    assert r.status_code == 502 and "cannot reach" in r.json()["error"]["message"]
    (t,) = traces(engine)
    assert t.model == "dead/m" and t.status_code == 502 and "cannot reach" in t.error


def test_labels_from_headers_and_no_header_is_stored(engine: Engine, sdk: openai.OpenAI) -> None:
    sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=MSG,
        extra_headers={
            "X-Opentracy-Tags": "prod, billing",
            "X-Opentracy-User": "u-42",
            "X-Opentracy-Session": "s-1",
            "X-Opentracy-Metadata": '{"feature": "invoices"}',
        },
    )
    (t,) = traces(engine)
    assert t.tags == ["prod", "billing"] and t.user_id == "u-42" and t.session_id == "s-1"
    assert t.metadata == {"feature": "invoices"}
    with engine.catalog.engine.connect() as c:
        raw = " ".join(str(x) for x in c.exec_driver_sql("SELECT * FROM traces").fetchone())
    assert "caller-key" not in raw and UPSTREAM_KEY not in raw


def test_callers_key_is_forwarded_when_none_is_configured(engine: Engine, mock: MockLLM) -> None:
    engine._gateway = Gateway(
        endpoints=load_endpoints({"OPENAI_BASE_URL": mock.base_url}), aliases=engine.aliases
    )
    with ServerThread(engine) as s, openai.OpenAI(base_url=f"{s.url}/v1", api_key="callers-own-key") as c:
        c.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    up = [q for q in mock.requests if q["path"].endswith("/chat/completions")][0]
    assert up["headers"]["authorization"] == "Bearer callers-own-key"


def test_bad_requests_get_openai_errors(engine: Engine, proxy: ServerThread, mock: MockLLM) -> None:
    with httpx.Client(base_url=proxy.url) as h:
        r = h.post("/v1/chat/completions", content=b"{nope")
        assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
        r = h.post("/v1/chat/completions", json={"messages": MSG})
        assert r.status_code == 400 and "model" in r.json()["error"]["message"]
        r = h.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MSG},
            headers={"X-Opentracy-Metadata": "[1]"},
        )
        assert r.status_code == 422 and "X-Opentracy-Metadata" in r.json()["error"]["message"]
        # The upstream refuses a request that is not a chat request: passed through and still recorded.
        r = h.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": "hi"})
        assert r.status_code == 400
    (t,) = traces(engine)
    assert t.status_code == 400 and t.error


def test_api_key_protects_the_proxy(settings, mock: MockLLM) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    eng = Engine(replace(settings, api_key="server-secret")).start()
    eng._gateway = Gateway(endpoints=load_endpoints({"OPENAI_BASE_URL": mock.base_url}), aliases=eng.aliases)
    try:
        with ServerThread(eng) as s:
            with (
                openai.OpenAI(base_url=f"{s.url}/v1", api_key="wrong", max_retries=0) as c,
                pytest.raises(openai.AuthenticationError),
            ):
                c.chat.completions.create(model="gpt-4o-mini", messages=MSG)
            with openai.OpenAI(base_url=f"{s.url}/v1", api_key="server-secret") as c:
                c.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        up = [q for q in mock.requests if q["path"].endswith("/chat/completions")][0]
        assert "authorization" not in up["headers"]  # our own key is never sent upstream
    finally:
        eng.close()


async def _async_calls(url: str, n: int) -> list[str]:
    import asyncio

    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k") as c:
        rs = await asyncio.gather(
            *(c.chat.completions.create(model="gpt-4o-mini", messages=MSG, seed=i) for i in range(n))
        )
    return [r.choices[0].message.content for r in rs]


def test_concurrent_calls_are_all_recorded(engine: Engine, proxy: ServerThread) -> None:
    import asyncio

    answers = asyncio.run(_async_calls(proxy.url, 50))
    got = traces(engine, 50)
    assert len(got) == 50
    assert sorted(t.response["message"]["content"] for t in got) == sorted(answers)
