"""opentracy.testing.MockLLM and `opentracy mock-llm`: a real OpenAI-compatible server, driven by the
unmodified `openai` SDK."""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import openai
import pytest
from click.testing import CliRunner
from conftest import free_port
from pydantic import BaseModel, Field, TypeAdapter

from opentracy.cli import main
from opentracy.testing import (
    MockLLM,
    Reply,
    completion_tokens,
    embedding,
    estimate_tokens,
    prompt_tokens,
    schema_instance,
)

MSG = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Where is my card?"}]


@pytest.fixture(scope="module")
def _server() -> Iterator[MockLLM]:
    with MockLLM() as m:
        yield m


@pytest.fixture
def mock(_server: MockLLM) -> MockLLM:
    """One server for the module, reset to the defaults for each test."""
    _server.script = None
    _server.latency_ms = 0
    _server.reset()
    return _server


@pytest.fixture
def client(mock: MockLLM) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=mock.base_url, api_key="x", max_retries=0) as c:
        yield c


def ask(client: openai.OpenAI, **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("model", "gpt-4o-mini")
    kw.setdefault("messages", MSG)
    return client.chat.completions.create(**kw)


# --- defaults ---------------------------------------------------------------------------------------


def test_chat_has_the_openai_shape_and_predictable_usage(client: openai.OpenAI, mock: MockLLM) -> None:
    r = ask(client)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.created > 0
    assert r.model == "gpt-4o-mini" and len(r.choices) == 1
    ch = r.choices[0]
    assert ch.index == 0 and ch.finish_reason == "stop" and ch.message.role == "assistant"
    assert ch.message.content and ch.message.content.endswith(".")
    assert r.usage is not None
    assert r.usage.prompt_tokens == prompt_tokens(MSG) == 3 + (4 + 4) + (4 + 5)
    assert r.usage.completion_tokens == completion_tokens(ch.message.content)
    assert r.usage.completion_tokens == estimate_tokens(ch.message.content) > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    rec = mock.requests[-1]
    assert rec["method"] == "POST" and rec["path"] == "/v1/chat/completions"
    assert rec["body"]["messages"] == MSG and rec["body"]["model"] == "gpt-4o-mini"
    assert rec["headers"]["authorization"] == "Bearer x" and "content-type" in rec["headers"]


def test_n_choices_differ_seed_changes_the_answer_and_runs_repeat(client: openai.OpenAI) -> None:
    r = ask(client, n=4)
    texts = [c.message.content for c in r.choices]
    assert [c.index for c in r.choices] == [0, 1, 2, 3] and len(set(texts)) == 4
    assert r.usage.completion_tokens == sum(estimate_tokens(t) for t in texts)  # type: ignore[union-attr]
    by_seed = {s: ask(client, seed=s).choices[0].message.content for s in range(5)}
    assert len(set(by_seed.values())) == 5
    assert ask(client, seed=3).choices[0].message.content == by_seed[3]
    other_prompt = ask(client, seed=3, messages=[{"role": "user", "content": "something else"}])
    assert other_prompt.choices[0].message.content != by_seed[3]
    # a fresh server (another run) answers the same
    with MockLLM() as other, openai.OpenAI(base_url=other.base_url, api_key="y", max_retries=0) as c2:
        assert [c.message.content for c in ask(c2, n=4).choices] == texts
        assert ask(c2, seed=3).choices[0].message.content == by_seed[3]


def test_streaming_assembles_to_the_same_answer_with_a_usage_chunk(client: openai.OpenAI) -> None:
    plain = ask(client, seed=7, n=2)
    stream = ask(client, seed=7, n=2, stream=True, stream_options={"include_usage": True})
    parts: dict[int, list[str]] = {0: [], 1: []}
    finish: dict[int, str | None] = {}
    usage = None
    chunks = 0
    for chunk in stream:
        chunks += 1
        assert chunk.object == "chat.completion.chunk" and chunk.model == "gpt-4o-mini"
        if not chunk.choices:
            usage = chunk.usage
            continue
        for ch in chunk.choices:
            parts[ch.index].append(ch.delta.content or "")
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    assert chunks > 6
    assert ["".join(parts[i]) for i in (0, 1)] == [c.message.content for c in plain.choices]
    assert finish == {0: "stop", 1: "stop"}
    assert usage is not None and usage.model_dump() == plain.usage.model_dump()  # type: ignore[union-attr]
    # without include_usage, no usage chunk
    no_usage = list(ask(client, stream=True))
    assert all(c.choices and c.usage is None for c in no_usage)


def test_embeddings_are_deterministic_unit_vectors(client: openai.OpenAI, mock: MockLLM) -> None:
    texts = ["the card was charged twice", "my card was charged twice", "reset my password please"]
    e = client.embeddings.create(model="text-embedding-3-small", input=texts)  # SDK asks for base64
    vecs = [d.embedding for d in e.data]
    assert [d.index for d in e.data] == [0, 1, 2] and all(len(v) == 384 for v in vecs)
    assert all(abs(math.fsum(x * x for x in v) - 1) < 1e-5 for v in vecs)
    assert mock.requests[-1]["body"]["encoding_format"] == "base64"
    floats = client.embeddings.create(model="m", input=texts, encoding_format="float").data
    assert all(
        max(abs(a - b) for a, b in zip(f.embedding, v, strict=True)) < 1e-6
        for f, v in zip(floats, vecs, strict=True)
    )
    assert floats[0].embedding == pytest.approx(embedding(texts[0]), abs=1e-12)

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vecs[0], vecs[1]) > 0.5 > cos(vecs[0], vecs[2])  # shared words make texts close
    assert e.usage.prompt_tokens == sum(estimate_tokens(t) for t in texts) == e.usage.total_tokens
    small = client.embeddings.create(model="m", input="one text", dimensions=64).data[0].embedding
    assert len(small) == 64 and abs(math.fsum(x * x for x in small) - 1) < 1e-5
    again = client.embeddings.create(model="m", input="one text", dimensions=64).data[0].embedding
    assert again == small


def test_models_list(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "gpt-4o" in ids and "gpt-4o-mini" in ids


def test_unknown_route_and_bad_request_get_openai_errors(client: openai.OpenAI, mock: MockLLM) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="m", prompt="x")
    assert e.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=[], n=0)


# --- structured output ------------------------------------------------------------------------------


class Judgement(BaseModel):
    score: float = Field(ge=0, le=1)
    relevance: float = Field(ge=0.0, le=1.0)
    verdict: Literal["pass", "fail"]
    reason: str = Field(min_length=10)


class Tag(BaseModel):
    name: str
    weight: int = Field(ge=1, le=5)


class Cluster(BaseModel):
    title: str
    keywords: list[str] = Field(min_length=2)
    tags: list[Tag]
    parent: Tag | None
    confident: bool


def test_parse_gives_valid_instances(client: openai.OpenAI) -> None:
    for seed in range(8):
        r = client.chat.completions.parse(model="gpt-4o", messages=MSG, response_format=Judgement, seed=seed)
        j = r.choices[0].message.parsed
        assert isinstance(j, Judgement) and 0 <= j.score <= 1 and 0 <= j.relevance <= 1
    r = client.chat.completions.parse(model="gpt-4o", messages=MSG, response_format=Cluster, n=3)
    parsed = [c.message.parsed for c in r.choices]
    assert all(isinstance(p, Cluster) and len(p.keywords) >= 2 for p in parsed)
    assert len({p.model_dump_json() for p in parsed}) == 3  # type: ignore[union-attr]


class Tree(BaseModel):
    label: str
    children: list[Tree] = []


def test_json_schema_and_json_object_requests(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "rank": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 4},
            "step": {"type": "integer", "minimum": 3, "maximum": 30, "multipleOf": 5},
            "label": {"type": "string", "enum": ["billing", "technical", "feature_request"]},
            "code": {"type": "string", "minLength": 12, "maxLength": 12},
            "when": {"type": "string", "format": "date-time"},
            "note": {"anyOf": [{"type": "null"}, {"type": "string"}]},
            "kind": {"type": ["string", "null"], "const": "fixed"},
            "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 4, "maxItems": 4},
        },
        "required": ["score", "rank", "step", "label", "code", "when", "note", "kind", "items"],
        "additionalProperties": False,
        "$defs": {"Item": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}},
    }
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    for seed in range(6):
        out = json.loads(ask(client, response_format=rf, seed=seed).choices[0].message.content)
        assert set(out) == set(schema["properties"])  # type: ignore[arg-type]
        assert 0 <= out["score"] <= 1 and 0 < out["rank"] < 4 and out["step"] in (5, 10, 15, 20, 25, 30)
        assert out["label"] in ("billing", "technical", "feature_request") and len(out["code"]) == 12
        assert out["when"].startswith("2025-") and isinstance(out["note"], str) and out["kind"] == "fixed"
        assert len(out["items"]) == 4 and all(isinstance(i["ok"], bool) for i in out["items"])
    # a recursive pydantic model terminates and validates
    tree_schema = TypeAdapter(Tree).json_schema()
    for seed in range(5):
        Tree.model_validate(schema_instance(tree_schema, __import__("random").Random(seed)))
    content = ask(client, response_format={"type": "json_object"}).choices[0].message.content
    assert isinstance(json.loads(content), dict)


def test_a_forced_tool_gets_arguments_matching_its_parameters(client: openai.OpenAI) -> None:
    tool = {"type": "function", "function": {"name": "judge", "parameters": Judgement.model_json_schema()}}
    r = ask(client, tools=[tool], tool_choice={"type": "function", "function": {"name": "judge"}})
    calls = r.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "judge"
    Judgement.model_validate_json(calls[0].function.arguments)
    assert ask(client, tools=[tool]).choices[0].message.tool_calls is None  # "auto": a text answer


# --- scripts ----------------------------------------------------------------------------------------


def test_fixed_reply_and_rules_with_times(client: openai.OpenAI, mock: MockLLM) -> None:
    mock.script = [
        {"match": {"contains": "refund"}, "reply": {"content": "billing"}},
        {
            "match": {"model": "gpt-4o"},
            "reply": {"content": "big model", "finish_reason": "length"},
            "times": 2,
        },
        {"match": {"path": "/v1/embeddings"}, "reply": {"status": 503}},
        {"reply": "fallback"},
    ]
    assert (
        ask(client, messages=[{"role": "user", "content": "I want a refund"}]).choices[0].message.content
        == "billing"
    )
    first = ask(client, model="gpt-4o").choices[0]
    assert (first.message.content, first.finish_reason) == ("big model", "length")
    assert ask(client, model="gpt-4o").choices[0].message.content == "big model"
    assert ask(client, model="gpt-4o").choices[0].message.content == "fallback"  # times exhausted
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="m", input="x")
    mock.reset()  # counters too
    assert mock.requests == [] and ask(client, model="gpt-4o").choices[0].message.content == "big model"
    # a rule that falls through to the default: only latency, usage and tool calls changed
    mock.script = [
        {
            "reply": {
                "usage": {"prompt_tokens": 1000, "completion_tokens": 500},
                "tool_calls": [{"name": "lookup", "arguments": {"id": 7}}],
                "finish_reason": "tool_calls",
            }
        }
    ]
    r = ask(client)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (1000, 500, 1500)  # type: ignore[union-attr]
    tc = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert tc.function.name == "lookup" and json.loads(tc.function.arguments) == {"id": 7}
    assert r.choices[0].finish_reason == "tool_calls"


def test_callable_scripts(client: openai.OpenAI, mock: MockLLM) -> None:
    def script(req: dict) -> Reply | str | dict | None:
        text = req["body"]["messages"][-1]["content"]
        if text == "str":
            return "a plain answer"
        if text == "dict":
            return {
                "id": "chatcmpl-raw",
                "object": "chat.completion",
                "created": 1,
                "model": "raw",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "raw body"},
                    }
                ],
            }
        if text == "reply":
            return Reply(content="from Reply", usage={"prompt_tokens": 1, "completion_tokens": 2})
        if text == "boom":
            raise RuntimeError("script bug")
        return None

    def say(text: str) -> openai.types.chat.ChatCompletion:
        return ask(client, messages=[{"role": "user", "content": text}])

    mock.script = script
    assert say("str").choices[0].message.content == "a plain answer"
    raw = say("dict")
    assert raw.id == "chatcmpl-raw" and raw.choices[0].message.content == "raw body"
    r = say("reply")
    assert r.choices[0].message.content == "from Reply" and r.usage.total_tokens == 3  # type: ignore[union-attr]
    default = say("other")
    mock.script = None
    assert default.choices[0].message.content == say("other").choices[0].message.content
    mock.script = script
    with pytest.raises(openai.InternalServerError, match="script bug"):
        say("boom")

    async def slow(req: dict) -> str:
        await asyncio.sleep(0.01)
        return "async answer"

    mock.script = slow
    assert say("x").choices[0].message.content == "async answer"


def test_429_carries_retry_after_and_500_is_a_server_error(client: openai.OpenAI, mock: MockLLM) -> None:
    mock.script = [
        {"reply": {"status": 429, "headers": {"retry-after": "1"}}, "times": 1},
        {"reply": {"status": 500, "content": "upstream exploded"}, "times": 1},
    ]
    with pytest.raises(openai.RateLimitError) as e:
        ask(client)
    assert e.value.status_code == 429 and e.value.response.headers["retry-after"] == "1"
    assert e.value.code == "rate_limit_exceeded" and e.value.type == "rate_limit_error"
    with pytest.raises(openai.InternalServerError, match="upstream exploded") as e5:
        ask(client)
    assert e5.value.status_code == 500
    assert ask(client).choices[0].message.content  # both rules used up


def test_hang_until_the_client_gives_up(client: openai.OpenAI, mock: MockLLM) -> None:
    mock.script = [{"reply": {"hang": True}, "times": 1}]
    t = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).chat.completions.create(model="m", messages=MSG)
    assert 0.25 < time.perf_counter() - t < 2
    assert ask(client).choices[0].message.content  # the server is fine afterwards


def test_stop_releases_hung_requests() -> None:
    got: list[BaseException] = []
    with MockLLM(script=[{"reply": {"hang": True}}]) as m:
        c = openai.OpenAI(base_url=m.base_url, api_key="x", max_retries=0, timeout=30)

        def call() -> None:
            try:
                c.chat.completions.create(model="m", messages=MSG)
            except BaseException as e:
                got.append(e)

        th = threading.Thread(target=call)
        th.start()
        while not m.requests:
            time.sleep(0.01)
        t = time.perf_counter()
    assert time.perf_counter() - t < 2
    th.join(5)
    assert got and isinstance(got[0], openai.APIError)
    c.close()


def test_malformed_json_makes_the_sdk_raise(client: openai.OpenAI, mock: MockLLM) -> None:
    mock.script = [{"reply": {"malformed": True}}]
    with pytest.raises(ValueError):  # json.JSONDecodeError
        ask(client)
    with pytest.raises(ValueError):
        list(ask(client, stream=True))


def test_latency_is_injected_without_serialising_requests(mock: MockLLM) -> None:
    mock.latency_ms = 200
    with openai.OpenAI(base_url=mock.base_url, api_key="x", max_retries=0) as c:
        t = time.perf_counter()
        ask(c)
        assert time.perf_counter() - t >= 0.2
    mock.latency_ms = 0
    mock.script = [{"match": {"contains": "slow"}, "reply": {"latency_ms": 200}}]
    with openai.OpenAI(base_url=mock.base_url, api_key="x", max_retries=0) as c:
        t = time.perf_counter()
        ask(c, messages=[{"role": "user", "content": "slow one"}])
        assert time.perf_counter() - t >= 0.2
    mock.script = None
    mock.latency_ms = 200

    async def burst() -> float:
        async with openai.AsyncOpenAI(base_url=mock.base_url, api_key="x", max_retries=0) as c:
            t = time.perf_counter()
            out = await asyncio.gather(
                *(c.chat.completions.create(model="m", messages=MSG, seed=i) for i in range(50))
            )
            assert len({o.choices[0].message.content for o in out}) > 40
            return time.perf_counter() - t

    elapsed = asyncio.run(burst())
    assert 0.2 <= elapsed < 1.2


def test_streaming_with_chunk_delay(client: openai.OpenAI, mock: MockLLM) -> None:
    mock.script = [{"reply": {"content": "one two three four", "chunk_delay_ms": 50}}]
    t = time.perf_counter()
    stream = ask(client, stream=True)
    first = next(iter(stream))
    ttft = time.perf_counter() - t
    rest = "".join(c.choices[0].delta.content or "" for c in stream)
    assert first.choices[0].delta.role == "assistant" and rest == "one two three four"
    assert ttft < 0.2 and time.perf_counter() - t >= 0.25


def test_bad_scripts_are_refused() -> None:
    with pytest.raises(ValueError, match="rule 0: unknown reply field"):
        MockLLM(script=[{"reply": {"contnet": "typo"}}])
    with pytest.raises(ValueError, match="rule 1: unknown match key"):
        MockLLM(script=[{"reply": "ok"}, {"match": {"modle": "x"}, "reply": "ok"}])
    with pytest.raises(ValueError, match="times"):
        MockLLM(script=[{"reply": "ok", "times": -1}])


# --- the command line -------------------------------------------------------------------------------


def _start_cli(*args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "opentracy.cli", "mock-llm", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"mock-llm did not start: {proc.communicate()[1].decode()}") from None
            time.sleep(0.05)


def _stop_cli(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:  # pragma: no cover
        proc.kill()
        proc.wait()


def test_cli_mock_llm_answers_the_sdk() -> None:
    proc, port = _start_cli("--latency-ms", "10")
    try:
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0) as c:
            t = time.perf_counter()
            r = ask(c, n=2)
            assert time.perf_counter() - t >= 0.01
            assert len({ch.message.content for ch in r.choices}) == 2
            with MockLLM() as inproc, openai.OpenAI(base_url=inproc.base_url, api_key="x") as c2:
                assert [ch.message.content for ch in ask(c2, n=2).choices] == [
                    ch.message.content for ch in r.choices
                ]
            assert len(c.embeddings.create(model="m", input="x").data[0].embedding) == 384
    finally:
        _stop_cli(proc)
    err = proc.stderr.read().decode()  # type: ignore[union-attr]
    assert "mock LLM on http://127.0.0.1:" in err and "Traceback" not in err


def test_cli_mock_llm_with_a_rules_file(tmp_path: Path) -> None:
    rules = [
        {"match": {"contains": "refund"}, "reply": {"content": "billing"}},
        {"reply": {"status": 429, "headers": {"retry-after": "2"}}, "times": 1},
    ]
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules))
    proc, port = _start_cli("--script", str(path))
    try:
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0) as c:
            refund = [{"role": "user", "content": "refund please"}]
            assert ask(c, messages=refund).choices[0].message.content == "billing"
            with pytest.raises(openai.RateLimitError) as e:
                ask(c)
            assert e.value.response.headers["retry-after"] == "2"
            assert ask(c).choices[0].message.content != "billing"
    finally:
        _stop_cli(proc)


def test_cli_mock_llm_refuses_a_bad_script(tmp_path: Path) -> None:
    bad = tmp_path / "rules.json"
    bad.write_text('[{"reply": {"contnet": "typo"}}]')
    res = CliRunner().invoke(main, ["mock-llm", "--script", str(bad)])
    assert res.exit_code != 0 and "rules.json" in res.output and "unknown reply field" in res.output
    assert "Traceback" not in res.output
    py = tmp_path / "script.py"
    py.write_text("x = 1\n")
    res = CliRunner().invoke(main, ["mock-llm", "--script", str(py)])
    assert res.exit_code != 0 and "reply(request)" in res.output


def test_load_script_reads_a_python_file(tmp_path: Path) -> None:
    from opentracy.testing import load_script

    py = tmp_path / "script.py"
    py.write_text("def reply(request):\n    return 'from file'\n")
    fn = load_script(py)
    with MockLLM(script=fn) as m, openai.OpenAI(base_url=m.base_url, api_key="x") as c:
        assert ask(c).choices[0].message.content == "from file"
