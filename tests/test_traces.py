"""Traces: the batch API and client, filters and cursors, secrets, the writer, traces → dataset."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from opentracy.engine import Engine
from opentracy.errors import InvalidInput, NotFound
from opentracy.traces.service import TraceFilter


def trace(i: int = 0, **kw) -> dict:
    t = {
        "model": "openai/gpt-4o-mini",
        "messages": [{"role": "user", "content": f"Where is my card? ticket {i}"}],
        "response": f"answer {i}",
        "usage": {"input_tokens": 10 + i, "output_tokens": 2},
        "latency_ms": 100 + i,
        "started_at": (datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=i)).isoformat(),
    }
    t.update(kw)
    return t


def test_ingest_get_and_price(engine: Engine) -> None:
    r = engine.traces.ingest([trace(1, tags=["prod"], user_id="u1", metadata={"team": "cards"})])
    assert r.inserted == 1 and len(r.trace_ids) == 1 and r.trace_ids[0].startswith("t_")
    t = engine.traces.get(r.trace_ids[0])
    assert t.model == "openai/gpt-4o-mini" and t.provider == "openai" and t.source == "api"
    assert t.request == {"messages": [{"role": "user", "content": "Where is my card? ticket 1"}]}
    assert t.response == {"message": {"role": "assistant", "content": "answer 1"}}
    assert (t.input_tokens, t.output_tokens, t.latency_ms) == (11, 2, 101)
    assert t.cost_usd == pytest.approx(engine.pricing.cost("openai/gpt-4o-mini", 11, 2))
    assert t.ended_at - t.started_at == timedelta(milliseconds=101)
    assert t.tags == ["prod"] and t.user_id == "u1" and t.metadata == {"team": "cards"}
    with pytest.raises(NotFound):
        engine.traces.get("t_nope")


def test_openai_shaped_request_and_response(engine: Engine) -> None:
    completion = {
        "id": "chatcmpl-1",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "billing"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 30, "completion_tokens": 1, "total_tokens": 31},
    }
    req = {
        "messages": [{"role": "system", "content": "Classify."}, {"role": "user", "content": "invoice?"}],
        "temperature": 0,
    }
    (tid,) = engine.traces.ingest(
        [{"model": "openai/gpt-4o-mini", "request": req, "response": completion}]
    ).trace_ids
    t = engine.traces.get(tid)
    assert t.request["params"] == {"temperature": 0} and len(t.request["messages"]) == 2
    assert t.response["message"]["content"] == "billing" and t.response["id"] == "chatcmpl-1"
    assert (t.finish_reason, t.input_tokens, t.output_tokens) == ("stop", 30, 1)
    assert t.metadata["response_model"] == "gpt-4o-mini-2024-07-18"


def test_secrets_are_never_stored(engine: Engine) -> None:
    key = "sk-proj-" + "a1B2" * 12
    (tid,) = engine.traces.ingest(
        [
            {
                "model": "openai/gpt-4o",
                "request": {
                    "messages": [{"role": "user", "content": f"my key is {key}, keep it"}],
                    "api_key": key,
                    "extra_headers": {
                        "Authorization": f"Bearer {key}",
                        "Cookie": "session=abc",
                        "X-Trace": "ok",
                    },
                },
                "response": "noted",
                "metadata": {
                    "password": "hunter2",
                    "OPENAI_API_KEY": key,
                    "note": f"Bearer {key}",
                    "safe": 1,
                },
            }
        ]
    ).trace_ids
    with engine.catalog.engine.connect() as c:
        raw = " ".join(str(x) for x in c.exec_driver_sql("SELECT * FROM traces").fetchone())
    for secret in (key, "hunter2", "session=abc"):
        assert secret not in raw
    t = engine.traces.get(tid)
    assert t.request["messages"][0]["content"] == "my key is [REDACTED], keep it"
    assert t.request["params"] == {"extra_headers": {"X-Trace": "ok"}}
    assert t.metadata == {"note": "[REDACTED]", "safe": 1}


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        (trace(0, model=7), "model"),
        (trace(0, messages=[]), "non-empty list"),
        (trace(0, messages=[{"role": "robot", "content": "x"}]), "role"),
        (trace(0, messages=[{"role": "user", "content": 5}]), "content"),
        (trace(0, usage={"input_tokens": -1, "output_tokens": 1}), "input_tokens"),
        (trace(0, latency_ms=-5), "latency_ms"),
        (trace(0, started_at="yesterday"), "started_at"),
        (trace(0, trace_id="has space"), "trace_id"),
        (trace(0, surprise=1), "surprise"),
        (trace(0, response=12), "response"),
        (trace(0, tags=[""]), "tags"),
    ],
)
def test_a_bad_trace_names_its_position_and_nothing_is_written(
    engine: Engine, bad: dict, fragment: str
) -> None:
    with pytest.raises(InvalidInput) as e:
        engine.traces.ingest([trace(0), trace(1), bad])
    assert "trace 3" in e.value.message and fragment in e.value.message
    assert engine.traces.count() == 0


def test_skip_mode_and_duplicates(engine: Engine) -> None:
    r = engine.traces.ingest(
        [trace(0, trace_id="t_a"), {"model": ""}, trace(2, trace_id="t_b")], on_error="skip"
    )
    assert (r.inserted, r.skipped) == (2, 1) and r.skipped_items[0]["item"] == 2
    again = engine.traces.ingest([trace(0, trace_id="t_a"), trace(3, trace_id="t_c")])
    assert (again.inserted, again.duplicates) == (1, 1)
    with pytest.raises(InvalidInput, match="appears twice"):
        engine.traces.ingest([trace(5, trace_id="t_x"), trace(6, trace_id="t_x")])
    assert engine.traces.count() == 3


def test_filters_sort_and_cursor_pagination(engine: Engine) -> None:
    items = []
    for i in range(30):
        kw: dict = {"tags": ["even" if i % 2 == 0 else "odd"] + (["vip"] if i % 5 == 0 else [])}
        kw["metadata"] = {"team": "cards" if i < 10 else "loans", "n": i}
        if i % 7 == 0:
            kw.update(error="HTTP 500: boom", response=None, status_code=500)
        if i % 3 == 0:
            kw["model"] = "anthropic/claude-sonnet-4-5"
            kw["alias"] = "support-bot"
        if i == 4:
            kw["finish_reason"] = "length"
        items.append(trace(i, **kw))
    engine.traces.ingest(items)
    ts = engine.traces

    def ids(f: TraceFilter, **kw) -> list[int]:
        return [
            int(t.request["messages"][0]["content"].rsplit(" ", 1)[1])
            for t in ts.list(f, limit=1000, **kw).items
        ]

    assert ids(TraceFilter()) == list(range(29, -1, -1))  # newest first
    assert ids(TraceFilter(), sort="started_at")[:3] == [0, 1, 2]
    assert sorted(ids(TraceFilter(model="anthropic/claude-sonnet-4-5"))) == list(range(0, 30, 3))
    assert sorted(ids(TraceFilter(alias="support-bot"))) == list(range(0, 30, 3))
    assert sorted(ids(TraceFilter(tags=["even", "vip"]))) == [0, 10, 20]
    assert sorted(ids(TraceFilter(meta={"team": "cards"}))) == list(range(10))
    assert sorted(ids(TraceFilter(error=True))) == [0, 7, 14, 21, 28]
    assert len(ids(TraceFilter(error=False))) == 25
    assert ids(TraceFilter(finish_reason="length")) == [4]
    assert ids(TraceFilter(q="TICKET 17")) == [17]
    assert ids(TraceFilter(q="answer 2%")) == []  # LIKE wildcards are literal
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    assert sorted(ids(TraceFilter(since=t0 + timedelta(minutes=5), until=t0 + timedelta(minutes=8)))) == [
        5,
        6,
        7,
    ]
    assert ids(TraceFilter(), sort="-latency")[:2] == [29, 28]
    # Cursor pages cover everything exactly once, in order, for every sort.
    for sort in ("-started_at", "started_at", "latency", "-cost", "tokens"):
        seen, cursor = [], None
        while True:
            page = ts.list(TraceFilter(), sort=sort, limit=7, cursor=cursor)
            seen += [t.trace_id for t in page.items]
            cursor = page.next_cursor
            if not cursor:
                break
        assert len(seen) == len(set(seen)) == 30, sort
    with pytest.raises(InvalidInput, match="sort"):
        ts.list(sort="price")
    with pytest.raises(InvalidInput, match="cursor"):
        ts.list(cursor="garbage")
    page = ts.list(sort="latency", limit=2)
    with pytest.raises(InvalidInput, match="cursor"):
        ts.list(sort="started_at", cursor=page.next_cursor)


def test_writer_drains_on_close(settings) -> None:  # type: ignore[no-untyped-def]
    from msgspec import convert

    from opentracy.traces.schema import TraceIn, to_row

    eng = Engine(settings).start()
    for i in range(2500):
        eng.trace_writer.put(lambda i=i: to_row(convert(trace(i), TraceIn), source="proxy"))
    eng.close()  # a clean shutdown writes every queued trace
    eng2 = Engine(settings).start()
    try:
        assert eng2.traces.count() == 2500
        assert eng2.traces.count(TraceFilter(source="proxy")) == 2500
    finally:
        eng2.close()


def test_gateway_calls_become_traces_but_internal_ones_do_not(engine: Engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from opentracy.testing import MockLLM

    with MockLLM() as mock:
        monkeypatch.setenv("OPENAI_BASE_URL", mock.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        gw = engine.gateway
        msgs = [{"role": "user", "content": "hello there"}]
        c = gw.complete_sync("openai/gpt-4o-mini", msgs)
        gw.complete_sync("openai/gpt-4o-mini", [{"role": "user", "content": "judge this"}], internal=True)
        engine.trace_writer.flush()
    items = engine.traces.list().items
    assert len(items) == 1
    t = items[0]
    assert t.source == "gateway" and t.response["message"]["content"] == c.content
    assert (t.input_tokens, t.output_tokens) == (c.input_tokens, c.output_tokens)
    assert t.cost_usd == pytest.approx(c.cost_usd)


# -- HTTP API and client ------------------------------------------------------------------------------


def test_http_api(server) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=server.url) as h:
        r = h.post("/v1/traces", json={"traces": [trace(1, tags=["a"]), trace(2)]})
        assert r.status_code == 201, r.text
        ids = r.json()["trace_ids"]
        r = h.post(
            "/v1/traces", content=b'[{"model": "openai/x", "messages": [{"role": "user", "content": 3}]}]'
        )
        assert r.status_code == 422 and "trace 1" in r.json()["error"]["message"]
        r = h.post("/v1/traces", content=b"{not json")
        assert r.status_code == 422 and "JSON" in r.json()["error"]["message"]
        r = h.post("/v1/traces", json=[{"model": 5}])
        assert r.status_code == 422
        page = h.get("/v1/traces", params={"tag": "a"}).json()
        assert [t["trace_id"] for t in page["items"]] == [ids[0]]
        assert h.get("/v1/traces", params={"meta.none": "x"}).json()["items"] == []
        assert h.get(f"/v1/traces/{ids[1]}").json()["response"]["message"]["content"] == "answer 2"
        assert h.get("/v1/traces/t_missing").status_code == 404
        assert h.get("/v1/traces/count").json() == {"count": 2}
        assert h.get("/v1/traces", params={"sort": "bogus"}).status_code == 422


def test_client_log_list_export_import_roundtrip(client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = client.log_traces([trace(i, tags=["x"] if i % 2 else []) for i in range(12)])
    assert r["inserted"] == 12
    assert client.log_traces(trace(99))["inserted"] == 1
    got = list(client.list_traces(tags=["x"], page_size=2))
    assert len(got) == 6
    assert len(list(client.list_traces(limit=5))) == 5
    assert client.count_traces(q="ticket 99") == 1
    path = client.export_traces(tmp_path / "t.jsonl")
    lines = path.read_text().splitlines()
    assert len(lines) == 13
    # Re-importing the export changes nothing (same ids).
    res = client.import_traces(path)
    assert (res["inserted"], res["duplicates"]) == (0, 13)


def test_traces_to_dataset_with_lineage(engine: Engine) -> None:
    from opentracy.datasets.from_traces import add_traces

    ids = engine.traces.ingest(
        [trace(i, tags=["support"]) for i in range(5)]
        + [trace(5, error="timeout", response=None, tags=["support"])]
        + [
            trace(
                6,
                messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                tags=["support"],
            )
        ]
        + [trace(7, tags=["other"])]
    ).trace_ids
    res = add_traces(engine.datasets, engine.traces, "support-v1", filter=TraceFilter(tags=["support"]))
    assert (res.matched, res.added, res.skipped_errors) == (7, 6, 1)
    rows = list(engine.datasets.iter_rows("support-v1"))
    assert len(rows) == 6
    by_trace = {r.metadata["source_trace_id"]: r for r in rows}
    assert set(by_trace) == set(ids[:5]) | {ids[6]}
    assert by_trace[ids[0]].prompt == "Where is my card? ticket 0" and by_trace[ids[0]].response == "answer 0"
    assert by_trace[ids[6]].prompt == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert by_trace[ids[0]].metadata["tags"] == ["support"]
    # The same traces again: nothing new. By ids: appended.
    again = add_traces(engine.datasets, engine.traces, "support-v1", filter=TraceFilter(tags=["support"]))
    assert (again.added, again.already_present) == (0, 6)
    by_ids = add_traces(engine.datasets, engine.traces, "support-v1", trace_ids=[ids[7]])
    assert by_ids.added == 1
    v = engine.datasets.version("support-v1")
    assert v.row_count == 7 and [p["kind"] for p in v.provenance][-3:] == ["traces", "traces", "traces"]
    with pytest.raises(NotFound):
        add_traces(engine.datasets, engine.traces, "support-v1", trace_ids=["t_nope"])
    with pytest.raises(NotFound):
        add_traces(engine.datasets, engine.traces, "absent", trace_ids=[ids[0]], create=False)
    # A frozen dataset refuses new rows with the usual message.
    engine.datasets.freeze("support-v1")
    from opentracy.errors import Conflict

    with pytest.raises((Conflict, NotFound)) as e:
        add_traces(engine.datasets, engine.traces, "support-v1", trace_ids=[ids[1]])
    assert "new version" in e.value.message or "new-version" in e.value.message


def test_client_traces_to_dataset(client) -> None:  # type: ignore[no-untyped-def]
    ids = client.log_traces([trace(i, metadata={"team": "cards" if i < 3 else "loans"}) for i in range(6)])[
        "trace_ids"
    ]
    r = client.traces_to_dataset("cards", where={"team": "cards"})
    assert r["added"] == 3
    r = client.traces_to_dataset("cards", trace_ids=ids[4:])
    assert r["added"] == 2
    rows = list(client.get_dataset("cards").rows())
    assert sorted(x.metadata["source_trace_id"] for x in rows) == sorted(ids[:3] + ids[4:])


def test_timestamps_in_epoch_units(engine: Engine) -> None:
    base = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    for v in (base.timestamp(), base.timestamp() * 1000, int(base.timestamp() * 1e9)):
        (tid,) = engine.traces.ingest([trace(0, started_at=v)]).trace_ids
        got = engine.traces.get(tid).started_at
        assert abs((got - base).total_seconds()) < 0.01, v
    time.sleep(0)
