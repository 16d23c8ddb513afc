"""`opentracy traces import`: every format, and bad files (named line, nothing half-imported)."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from opentracy.cli import main
from opentracy.engine import Engine
from opentracy.errors import InvalidInput
from opentracy.traces.importers import import_file

MSGS = [{"role": "system", "content": "Classify."}, {"role": "user", "content": "Where is my card?"}]


def completion(text: str, pt: int = 20, ct: int = 3, model: str = "gpt-4o-mini") -> dict:
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1764500000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
    }


def write(tmp_path: Path, lines: list, name: str = "t.jsonl") -> Path:
    p = tmp_path / name
    with open(p, "wb") as f:
        for x in lines:
            f.write(
                (x if isinstance(x, bytes) else (x if isinstance(x, str) else json.dumps(x)).encode()) + b"\n"
            )
    return p


def ours(i: int) -> dict:
    return {
        "trace_id": f"t_imp{i}",
        "model": "openai/gpt-4o",
        "messages": [{"role": "user", "content": f"q{i}"}],
        "response": f"a{i}",
    }


def test_our_jsonl(engine: Engine, tmp_path: Path) -> None:
    res = import_file(engine.traces, write(tmp_path, [ours(i) for i in range(5)]))
    assert (res.inserted, res.lines) == (5, 5)
    t = engine.traces.get("t_imp3")
    assert t.source == "import" and t.response["message"]["content"] == "a3"


def test_openai_request_response_logs(engine: Engine, tmp_path: Path) -> None:
    lines = [
        {
            "request": {"model": "gpt-4o-mini", "messages": MSGS, "temperature": 0},
            "response": completion("card_arrival"),
            "latency_ms": 420,
            "tags": ["prod"],
        },
        {
            "request": {"model": "gpt-4o-mini", "messages": MSGS},
            "response": {"error": {"message": "Rate limit"}},
            "status_code": 429,
        },
    ]
    res = import_file(engine.traces, write(tmp_path, lines))
    assert res.inserted == 2
    ok, bad = sorted(engine.traces.list().items, key=lambda t: bool(t.error))
    assert ok.model == "openai/gpt-4o-mini" and ok.response["message"]["content"] == "card_arrival"
    assert (ok.input_tokens, ok.output_tokens, ok.latency_ms, ok.tags) == (20, 3, 420, ["prod"])
    assert ok.request["params"] == {"temperature": 0} and ok.cost_usd and ok.started_at.year == 2025
    assert bad.error == "Rate limit" and bad.status_code == 429


def test_openai_batch_input_and_output_joined(engine: Engine, tmp_path: Path) -> None:
    inputs = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]},
        }
        for i in range(3)
    ]
    outputs = [
        {
            "id": "b1",
            "custom_id": "req-1",
            "response": {"status_code": 200, "request_id": "rq1", "body": completion("a1")},
            "error": None,
        },
        {
            "id": "b0",
            "custom_id": "req-0",
            "response": {"status_code": 200, "request_id": "rq0", "body": completion("a0")},
            "error": None,
        },
    ]
    res = import_file(engine.traces, write(tmp_path, outputs[:1] + inputs + outputs[1:]))
    assert (res.inserted, res.ignored) == (2, 1)  # req-2 has no result
    got = {t.metadata["batch_custom_id"]: t for t in engine.traces.list().items}
    assert (
        got["req-1"].response["message"]["content"] == "a1"
        and got["req-1"].request["messages"][0]["content"] == "q1"
    )
    # A result whose request is not in the file is an error naming its line.
    with pytest.raises(InvalidInput, match=r"line 1: .*custom_id 'req-9'"):
        import_file(engine.traces, write(tmp_path, [{**outputs[0], "custom_id": "req-9"}], "o.jsonl"))


def _attr(k: str, v) -> dict:  # type: ignore[no-untyped-def]
    if isinstance(v, bool):
        return {"key": k, "value": {"boolValue": v}}
    if isinstance(v, int):
        return {"key": k, "value": {"intValue": str(v)}}
    if isinstance(v, float):
        return {"key": k, "value": {"doubleValue": v}}
    if isinstance(v, list):
        return {"key": k, "value": {"arrayValue": {"values": [{"stringValue": x} for x in v]}}}
    return {"key": k, "value": {"stringValue": v}}


def otlp(spans: list[dict]) -> dict:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [_attr("service.name", "support-app")]},
                "scopeSpans": [{"scope": {"name": "genai"}, "spans": spans}],
            }
        ]
    }


def span(sid: str, attrs: dict, **kw) -> dict:  # type: ignore[no-untyped-def]
    return {
        "traceId": "0af7651916cd43dd8448eb211c80319c",
        "spanId": sid,
        "name": "chat gpt-4o",
        "startTimeUnixNano": "1764500000000000000",
        "endTimeUnixNano": "1764500000850000000",
        "attributes": [_attr(k, v) for k, v in attrs.items()],
        **kw,
    }


def test_otel_genai_spans(engine: Engine, tmp_path: Path) -> None:
    current = span(
        "b7ad6b7169203331",
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.request.temperature": 0.5,
            "gen_ai.input.messages": json.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]}]
            ),
            "gen_ai.output.messages": json.dumps(
                [
                    {
                        "role": "assistant",
                        "parts": [{"type": "text", "content": "Rainy."}],
                        "finish_reason": "stop",
                    }
                ]
            ),
            "gen_ai.usage.input_tokens": 12,
            "gen_ai.usage.output_tokens": 3,
            "gen_ai.conversation.id": "conv-1",
        },
    )
    legacy = span(
        "c7ad6b7169203332",
        {
            "gen_ai.system": "anthropic",
            "gen_ai.request.model": "claude-sonnet-4-5",
            "gen_ai.prompt.0.role": "user",
            "gen_ai.prompt.0.content": "Summarise this.",
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.content": "A summary.",
            "gen_ai.completion.0.finish_reason": "end_turn",
            "gen_ai.usage.prompt_tokens": 40,
            "gen_ai.usage.completion_tokens": 5,
        },
        status={"code": 2, "message": "overloaded"},
    )
    other = span("d7ad6b7169203333", {"http.method": "GET"})
    events = span(
        "e7ad6b7169203334",
        {
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.response.finish_reasons": ["stop"],
        },
        events=[
            {"name": "gen_ai.user.message", "attributes": [_attr("content", "Hi!")]},
            {"name": "gen_ai.choice", "attributes": [_attr("message", json.dumps({"content": "Hello."}))]},
        ],
    )
    p = write(tmp_path, [otlp([current, other]), otlp([legacy, events])], "spans.jsonl")
    res = import_file(engine.traces, p)
    assert (res.inserted, res.ignored) == (3, 1)
    a = engine.traces.get("t_b7ad6b7169203331")
    assert a.model == "openai/gpt-4o" and a.request["messages"] == [
        {"role": "user", "content": "Weather in Paris?"}
    ]
    assert a.response["message"]["content"] == "Rainy." and a.finish_reason == "stop"
    assert (a.input_tokens, a.output_tokens, a.latency_ms) == (12, 3, 850) and a.session_id == "conv-1"
    assert a.request["params"] == {"temperature": 0.5} and a.metadata["service"] == "support-app"
    b = engine.traces.get("t_c7ad6b7169203332")
    assert (
        b.model == "anthropic/claude-sonnet-4-5" and b.error == "overloaded" and b.finish_reason == "end_turn"
    )
    assert b.response["message"]["content"] == "A summary." and (b.input_tokens, b.output_tokens) == (40, 5)
    c = engine.traces.get("t_e7ad6b7169203334")
    assert (
        c.request["messages"] == [{"role": "user", "content": "Hi!"}]
        and c.response["message"]["content"] == "Hello."
    )
    # One pretty-printed document for the whole file works too; importing again adds nothing.
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(otlp([current, legacy]), indent=2))
    again = import_file(engine.traces, pretty)
    assert (again.inserted, again.duplicates) == (0, 2)


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("{not json", "malformed JSON"),
        (b"\xff\xfe bad bytes", "not UTF-8"),
        ({"model": "openai/x", "messages": [{"role": "user", "content": 1}]}, "content"),
        ({"model": "openai/x", "messages": [{"role": "user", "content": "x"}], "tags": "prod"}, "tags"),
        ({"model": 3, "messages": []}, "model"),
        ({"hello": "world"}, "not a trace"),
        ([1, 2], "JSON object"),
        ({"request": {"messages": MSGS}, "response": completion("x", model="")}, "request.model"),
        (otlp([span("f1", {"gen_ai.system": "openai"})]), "gen_ai.request.model"),
        (ours(1), "appears twice"),
    ],
)
def test_bad_lines_are_named_and_nothing_is_imported(
    engine: Engine, tmp_path: Path, bad, fragment: str
) -> None:  # type: ignore[no-untyped-def]
    lines = [ours(i) for i in range(3)] + [bad] + [ours(i) for i in range(10, 12)]
    p = write(tmp_path, lines)
    with pytest.raises(InvalidInput) as e:
        import_file(engine.traces, p)
    assert e.value.message.startswith("t.jsonl, line 4: ") and fragment in e.value.message, e.value.message
    assert engine.traces.count() == 0
    res = import_file(engine.traces, p, on_error="skip")
    assert res.inserted == 5 and res.skipped == 1 and res.skipped_items[0]["line"] == 4


def test_empty_and_all_bad_files(engine: Engine, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(InvalidInput, match="empty"):
        import_file(engine.traces, empty)
    with pytest.raises(InvalidInput, match="every trace was bad"):
        import_file(engine.traces, write(tmp_path, ["{x", "{y"]), on_error="skip")
    with pytest.raises(InvalidInput, match="format"):
        import_file(engine.traces, write(tmp_path, [ours(0)]), fmt="csv")
    with pytest.raises(InvalidInput, match="not the otel format"):
        import_file(engine.traces, write(tmp_path, [ours(0)]), fmt="otel")


def test_cli_import_list_show_export_to_dataset(server, engine: Engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {"OPENTRACY_API_KEY": None, "OPENTRACY_URL": None, "COLUMNS": "200"}

    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, ["--url", server.url, *args], env=env)

    p = write(tmp_path, [{**ours(i), "tags": ["cli"] if i < 4 else []} for i in range(6)])
    r = run("traces", "import", str(p))
    assert r.exit_code == 0 and "imported 6 traces" in r.output, r.output
    gz = tmp_path / "more.jsonl.gz"  # through the server, packed
    gz.write_bytes(gzip.compress(write(tmp_path, [ours(30), ours(31)], "more.jsonl").read_bytes()))
    r = run("traces", "import", str(gz))
    assert r.exit_code == 0 and "imported 2 traces" in r.output, r.output
    r = run("traces", "list", "--tag", "cli", "--json")
    assert r.exit_code == 0 and len(r.output.splitlines()) == 4
    r = run("traces", "list", "-q", "q5")
    assert r.exit_code == 0 and "t_imp5" in r.output
    r = run("traces", "show", "t_imp2")
    assert r.exit_code == 0 and json.loads(r.output)["response"]["message"]["content"] == "a2"
    r = run("traces", "export", str(tmp_path / "out.jsonl"), "--tag", "cli")
    assert r.exit_code == 0 and "wrote 4 traces" in r.output
    r = run("traces", "to-dataset", "from-cli", "--tag", "cli")
    assert r.exit_code == 0 and "added 4 rows to from-cli-v1" in r.output, r.output
    assert engine.datasets.version("from-cli").row_count == 4
    bad = write(tmp_path, [ours(20), "{oops"], "bad.jsonl")
    r = run("traces", "import", str(bad))
    assert (
        r.exit_code != 0 and "bad.jsonl, line 2: malformed JSON" in r.stderr and "Traceback" not in r.output
    )
    r = run("traces", "show", "t_nope")
    assert r.exit_code != 0 and "no trace 't_nope'" in r.stderr
    r = run("traces", "to-dataset", "x")
    assert r.exit_code != 0 and "say which traces" in r.stderr


def test_listeners_hear_of_imported_traces_only_once_committed(engine: Engine, tmp_path: Path) -> None:
    heard: list[str] = []
    engine.traces.on_insert.append(lambda rows: heard.extend(r["id"] for r in rows))
    # More good lines than one insert batch before the bad one: a batch is written, then rolled back.
    bad = write(tmp_path, [ours(i) for i in range(1100)] + ["{oops"], "bad.jsonl")
    with pytest.raises(InvalidInput):
        import_file(engine.traces, bad)
    assert heard == []  # rolled back: nobody is told of traces that were never stored
    import_file(engine.traces, write(tmp_path, [ours(i) for i in range(5)]))
    assert engine.traces.count() == 5
    assert sorted(heard) == sorted(f"t_imp{i}" for i in range(5))
    assert all(isinstance(r, str) for r in heard)


@pytest.mark.parametrize("pack", ["gzip", "bz2", "xz"])
def test_compressed_files_are_read_as_they_decompress(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pack: str
) -> None:
    import bz2
    import lzma

    from opentracy.traces import importers

    monkeypatch.setattr(importers, "BATCH", 250)  # progress is told once a batch
    compress = {"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[pack]
    rng = random.Random(5)
    lines = [{**ours(i), "response": f"a{i} {rng.randbytes(24).hex()}"} for i in range(4000)]
    plain = write(tmp_path, [*lines, "", "{oops"])
    p = tmp_path / "traces.jsonl"  # no telling suffix: the first bytes say how it is packed
    p.write_bytes(compress(plain.read_bytes()))
    seen: list[float] = []
    res = import_file(engine.traces, p, on_error="skip", progress=lambda f, _m: seen.append(f))
    assert (res.inserted, res.lines, res.skipped) == (4000, 4002, 1) and res.skipped_items[0]["line"] == 4002
    assert engine.traces.get("t_imp3999").response["message"]["content"] == lines[3999]["response"]
    # progress follows the file's bytes as read, not the larger content they unpack to (bz2 unpacks whole
    # blocks of up to 900 KB: this file is one, read at once)
    assert len(seen) >= 10 and seen == sorted(seen) and seen[-1] > 0.5, seen
    if pack != "bz2":
        assert seen[0] < 0.5, seen
    # a pretty-printed document, packed, is read whole as it is unpacked
    doc = tmp_path / "doc.json"
    doc.write_bytes(compress(json.dumps([ours(i) for i in range(5000, 5003)], indent=2).encode()))
    assert import_file(engine.traces, doc).inserted == 3


@pytest.mark.parametrize("pack", ["gzip", "xz"])
def test_a_damaged_compressed_file_is_named_and_nothing_is_imported(
    engine: Engine, tmp_path: Path, pack: str
) -> None:
    import lzma

    compress = {"gzip": gzip.compress, "xz": lzma.compress}[pack]
    data = compress(write(tmp_path, [ours(i) for i in range(2000)]).read_bytes())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])  # truncated
    with pytest.raises(InvalidInput) as e:
        import_file(engine.traces, cut)
    assert e.value.message.startswith(f"cut.jsonl.gz: not a readable {pack} file"), e.value.message
    assert "read up to line" in e.value.message
    assert engine.traces.count() == 0
    short = tmp_path / "short.jsonl.gz"
    short.write_bytes(data[:40])  # damaged before the first line ends
    with pytest.raises(InvalidInput, match=f"^short.jsonl.gz: not a readable {pack} file"):
        import_file(engine.traces, short)
    assert engine.traces.count() == 0
