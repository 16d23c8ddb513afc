"""The LLM judge, through the production gateway, against the scripted OpenAI-compatible test server."""

from __future__ import annotations

import asyncio
import json

import pytest

from opentracy.distillation.curation import CurationRow, Judge, JudgeUnavailable, curate_rows
from opentracy.llm.gateway import Endpoint, Gateway
from opentracy.testing import MockLLM, Reply


def gateway(mock, engine=None, **kw) -> Gateway:
    eps = {"openai": Endpoint("openai", mock.base_url, "test-key", kw.pop("max_in_flight", 16))}
    kw.setdefault("backoff_base", 0.01)
    if engine is not None:
        kw.update(cache=engine.llm_cache, pricing=engine.pricing)
    return Gateway(endpoints=eps, **kw)


def chats(mock) -> list[dict]:
    return [r["body"] for r in mock.requests if r["path"].endswith("/chat/completions")]


ROWS = [
    CurationRow("good", "Classify: where is my card?", "card_arrival"),
    CurationRow("bad", "Classify: I lost my PIN", "weather_forecast"),
    CurationRow("mid", "Classify: top up failed", "top_up_failed, probably"),
]
VERDICTS = {
    "where is my card": {"helpfulness": 5, "relevance": 5, "format": 5, "reason": "correct label"},
    "lost my PIN": {"helpfulness": 1, "relevance": 1, "format": 3, "reason": "wrong intent"},
    "top up failed": {"helpfulness": 4, "relevance": 4, "format": 2, "reason": "extra words after the label"},
}


def scripted(req):
    user = req["body"]["messages"][-1]["content"]
    for key, verdict in VERDICTS.items():
        if key in user:
            return Reply(content=json.dumps(verdict), usage={"prompt_tokens": 1000, "completion_tokens": 100})
    return None


def test_scores_reasons_flags_and_the_request(engine):
    with MockLLM(script=scripted) as mock:
        gw = gateway(mock, engine)
        judge = Judge(gw, threshold=0.5)
        res = judge.score_rows_sync(ROWS)
        gw.close()
    by = {r.row_id: r for r in res}
    assert by["good"].score == 1.0 and not by["good"].flagged and by["good"].reason == "correct label"
    assert by["bad"].scores == {"helpfulness": 0.0, "relevance": 0.0, "format": 0.5}
    assert by["bad"].score == pytest.approx(0.1667, abs=1e-4) and by["bad"].flagged
    assert by["mid"].score == pytest.approx((0.75 + 0.75 + 0.25) / 3, abs=1e-4) and not by["mid"].flagged
    assert by["good"].metadata() == {
        "judge_score": 1.0,
        "judge": {
            "model": "openai/gpt-4o-mini",
            "scores": by["good"].scores,
            "reason": "correct label",
            "threshold": 0.5,
        },
    }
    body = chats(mock)[0]
    assert body["model"] == "gpt-4o-mini" and body["temperature"] == 0
    schema = body["response_format"]["json_schema"]["schema"]
    assert set(schema["properties"]) == {"helpfulness", "relevance", "format", "reason"}
    assert schema["properties"]["format"]["minimum"] == 1 and schema["properties"]["format"]["maximum"] == 5
    assert "<response>\ncard_arrival\n</response>" in body["messages"][1]["content"]
    # cost: 3 calls of 1000 + 100 tokens at gpt-4o-mini's price
    u = judge.usage
    assert (u.calls, u.cached, u.input_tokens, u.output_tokens) == (3, 0, 3000, 300)
    expected = float(engine.pricing.cost("openai/gpt-4o-mini", 1000, 100)) * 3
    assert u.cost_usd == pytest.approx(expected) and u.cost_usd > 0


def test_custom_criteria_weights_and_reference_answers(engine):
    seen = []

    def script(req):
        seen.append(req["body"])
        props = req["body"]["response_format"]["json_schema"]["schema"]["properties"]
        v = {k: 5 for k in props if k != "reason"}
        v["cites_policy"] = 1
        if "correctness" in props:
            v["correctness"] = 1
        return Reply(content=json.dumps({k: x for k, x in {**v, "reason": "r"}.items() if k in props}))

    crit = [
        "helpfulness",
        {"name": "cites_policy", "description": "Does it cite the refund policy?", "weight": 3},
    ]
    rows = [
        CurationRow("plain", "Can I get a refund?", "Yes, within 30 days."),
        CurationRow("ref", "Can I get a refund?", "No.", {"expected": "Yes, within 30 days (policy 4.2)."}),
    ]
    with MockLLM(script=script) as mock:
        gw = gateway(mock, engine)
        res = {r.row_id: r for r in Judge(gw, criteria=crit).score_rows_sync(rows)}
        gw.close()
    assert res["plain"].score == pytest.approx((1.0 * 1 + 0.0 * 3) / 4)
    assert set(res["ref"].scores) == {"helpfulness", "cites_policy", "correctness"}
    assert res["ref"].score == pytest.approx((1.0 + 0.0 + 0.0) / 5)
    ref_req = next(b for b in seen if "<reference_answer>" in b["messages"][1]["content"])
    assert "policy 4.2" in ref_req["messages"][1]["content"]
    assert "cites_policy: Does it cite the refund policy?" in ref_req["messages"][0]["content"]


def test_a_judge_answer_that_cannot_be_parsed_is_a_judge_error_not_a_score(engine):
    def script(req):
        if "lost my PIN" in req["body"]["messages"][1]["content"]:
            return Reply(content="I think this one is fine.")  # not JSON, twice (the gateway repairs once)
        return scripted(req)

    with MockLLM(script=script) as mock:
        gw = gateway(mock, engine)
        res = {r.row_id: r for r in Judge(gw).score_rows_sync(ROWS)}
        gw.close()
    bad = res["bad"]
    assert bad.score is None and bad.flagged and "did not match the schema" in bad.error
    assert bad.metadata() == {"judge": {"model": "openai/gpt-4o-mini", "error": bad.error}}
    assert res["good"].score == 1.0
    assert sum(1 for b in chats(mock) if "lost my PIN" in json.dumps(b)) == 2  # the answer and one repair


def test_provider_errors_are_retried_then_recorded(engine):
    def script(req):
        if "top up failed" in req["body"]["messages"][1]["content"]:
            return Reply(status=500)
        return scripted(req)

    with MockLLM(script=script) as mock:
        gw = gateway(mock, engine, max_retries=2)
        res = {r.row_id: r for r in Judge(gw).score_rows_sync(ROWS)}
        gw.close()
    assert "HTTP 500" in res["mid"].error and res["mid"].flagged
    assert sum(1 for b in chats(mock) if "top up failed" in json.dumps(b)) == 3


def test_unreachable_judge_is_reported_not_guessed():
    # a server that is not there: the first (probe) call fails and nothing else is tried
    gw = Gateway(endpoints={"openai": Endpoint("openai", "http://127.0.0.1:9/v1", "k", 4)}, backoff_base=0.01)
    with pytest.raises(JudgeUnavailable, match="cannot use openai/gpt-4o-mini"):
        Judge(gw).score_rows_sync(ROWS)
    # no key and no base URL for a hosted provider: known before any call
    gw = Gateway(endpoints={"openai": Endpoint("openai", None, None, 4)})
    assert "no OPENAI_API_KEY" in Judge(gw).unavailable_reason()
    out = curate_rows(ROWS, {"review": False}, gateway=gw)
    assert out.report.judge.skipped and "no OPENAI_API_KEY" in out.report.judge.skipped_reason
    assert out.report.rows_out == 3 and all("judge_score" not in r.metadata for r in out.rows)


def test_a_second_run_is_answered_by_the_cache_and_costs_nothing(engine):
    with MockLLM(script=scripted) as mock:
        gw = gateway(mock, engine)
        first = Judge(gw)
        a = first.score_rows_sync(ROWS)
        again = Judge(gw)
        b = again.score_rows_sync(ROWS)
        gw.close()
    assert [r.score for r in a] == [r.score for r in b]
    assert len(chats(mock)) == 3 and again.usage.cached == 3 and again.usage.calls == 0
    assert again.usage.cost_usd == 0 and first.usage.cost_usd > 0


def test_async_api_and_concurrency_bound(engine):
    import time

    arrivals: list[float] = []

    def script(req):
        arrivals.append(time.monotonic())
        return None  # a valid schema instance, after the server's latency

    rows = [CurationRow(f"r{i}", f"question {i}", f"answer {i}") for i in range(20)]

    async def main(gw):
        try:
            return await Judge(gw, concurrency=4).score_rows(rows)
        finally:
            await gw.aclose()

    with MockLLM(script=script, latency_ms=50) as mock:
        gw = gateway(mock, engine, max_in_flight=64)
        res = asyncio.run(main(gw))
    assert [r.row_id for r in res] == [r.row_id for r in rows]
    assert all(r.score is not None and 0 <= r.score <= 1 for r in res)
    ts = sorted(arrivals)
    assert max(sum(1 for u in ts if t <= u < t + 0.04) for t in ts) <= 4
