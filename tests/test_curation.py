"""Curation of stored datasets as a job (SQLite and PostgreSQL): versions, provenance, report, review."""

from __future__ import annotations

import json

import pytest
from curation_fixtures import judge_script, noisy_rows, write_rows

from opentracy.errors import Conflict, InvalidInput, NotFound
from opentracy.testing import MockLLM


@pytest.fixture
def mock(monkeypatch):
    with MockLLM(script=judge_script) as m:
        monkeypatch.setenv("OPENAI_BASE_URL", m.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        yield m


@pytest.fixture
def tickets(engine, tmp_path):
    rows, truth = noisy_rows()
    p = tmp_path / "tickets.jsonl"
    write_rows(p, rows)
    engine.datasets.upload("tickets", p)
    return rows, truth


def chats(mock) -> int:
    return sum(1 for r in mock.requests if r["path"].endswith("/chat/completions"))


def run(engine, config=None, version=None):
    job = engine.curation.submit("tickets", config, version)
    done = engine.jobs.wait(job.id, timeout=120)
    assert done.status == "succeeded", (done.error, engine.jobs.logs(job.id))
    return done


def test_curate_writes_the_next_version_with_a_report_that_adds_up(engine, mock, tickets):
    rows, truth = tickets
    done = run(engine, {"review": {"size": 8}})
    v1, v2 = engine.datasets.versions("tickets")
    # the raw rows stay reachable as their own, frozen version
    assert (v1.label, v1.status, v1.row_count) == ("tickets-v1", "frozen", len(rows))
    assert v2.status == "active" and v2.parent == "tickets-v1"
    assert done.result["version"]["label"] == "tickets-v2"
    step = v2.provenance[-1]
    assert (
        step["kind"] == "curation"
        and step["parent"] == "tickets-v1"
        and step["parent_hash"] == v1.content_hash
    )
    assert step["judge_model"] == "openai/gpt-4o-mini" and not step["judge_skipped"]
    assert step["config"]["judge"]["threshold"] == 0.5 and step["config"]["review"]["size"] == 8
    rep = step["report"]
    assert (
        rep["rows_in"]
        == len(rows)
        == rep["rows_out"] + rep["dropped_total"]
        == v2.row_count + rep["dropped_total"]
    )
    expected: dict[str, int] = {}
    for why in truth.values():
        expected[why] = expected.get(why, 0) + 1
    # Every injected row is dropped by the rule made for it, and nothing else is dropped; rows the judge
    # flags but review holds stay (counted as held).
    held_bad = sum(1 for it in engine.review.items("tickets")[0] if it.row_id.startswith("bad_"))
    expected["judge_flagged"] -= held_bad
    assert rep["dropped"] == {k: v for k, v in expected.items() if v}
    for rule_rep in rep["rules"]:
        assert sum(rule_rep["dropped"].values()) == sum(rep["dropped"].get(k, 0) for k in rule_rep["dropped"])
    # judge: rows dropped by the cheap rules were never sent; costs and a histogram are reported
    judged = len(rows) - sum(
        1 for w in truth.values() if w not in ("exact_duplicate", "near_duplicate", "judge_flagged")
    )
    assert rep["judge"]["rows_judged"] == judged
    # exact copies ask the very same question: the cache answers them, so they are paid once
    assert rep["judge"]["cached"] == 4 and rep["judge"]["calls"] == judged - 4 == chats(mock)
    assert rep["judge"]["input_tokens"] == 400 * (judged - 4)
    assert rep["judge"]["cost_usd"] > 0 and sum(rep["judge"]["histogram"]) == judged
    assert rep["held_for_review"] == 8
    # the "no curation" warning is gone for the curated version, and still there for the raw one
    assert "not_curated" in [w.code for w in v1.warnings]
    assert "not_curated" not in [w.code for w in v2.warnings]
    # kept rows carry the judge's scores
    row = engine.datasets.get_row("tickets", "r_0010")
    assert 0 <= row.metadata["judge_score"] <= 1 and row.metadata["judge"]["model"] == "openai/gpt-4o-mini"
    assert set(row.metadata["judge"]["scores"]) == {"helpfulness", "relevance", "format"}
    # every dropped row is inspectable, whole, with its rule and reason
    page = engine.curation.dropped("tickets", limit=1000)
    assert page["total"] == rep["dropped_total"] and page["by_rule"] == rep["dropped"]
    got = {d["row_id"]: d for d in page["items"]}
    assert got["pii_1"]["rule"] == "pii" and got["pii_1"]["reason"] == "contains PII: credit_card"
    assert got["pii_1"]["prompt"].endswith("card 4111 1111 1111 1111")
    assert got["dup_0"]["reason"] == "exact duplicate of r_0000" and got["empty_0"]["response"] == ""
    only = engine.curation.dropped("tickets", rule="refusal")
    assert only["total"] == 3 and {d["row_id"] for d in only["items"]} == {
        "refusal_0",
        "refusal_1",
        "refusal_2",
    }
    # runs are listed with their report
    runs = engine.curation.runs("tickets")
    assert len(runs) == 1 and runs[0].output == "tickets-v2" and runs[0].job_id == done.id


def test_recurating_a_frozen_version_with_a_stricter_threshold_costs_nothing(engine, mock, tickets):
    run(engine, {"review": False})
    engine.datasets.freeze("tickets")
    before = chats(mock)
    done = run(engine, {"judge": {"threshold": 0.8}, "review": False}, version=2)
    v3 = engine.datasets.version("tickets", 3)
    assert v3.parent == "tickets-v2" and done.result["version"]["label"] == "tickets-v3"
    rep = v3.provenance[-1]["report"]
    assert chats(mock) == before  # every judge answer came from the cache
    assert rep["judge"]["cached"] == rep["judge"]["rows_judged"] > 0 and rep["judge"]["cost_usd"] == 0
    assert rep["dropped"].get("judge_flagged", 0) > 0
    assert v3.row_count == engine.datasets.version("tickets", 2).row_count - rep["dropped_total"]
    scores = [r.metadata["judge_score"] for r in engine.datasets.iter_rows("tickets", 3)]
    assert scores and min(scores) >= 0.8
    # provenance keeps the whole chain
    kinds = [s["kind"] for s in v3.provenance]
    assert kinds.count("curation") == 2 and v3.provenance[-1]["config"]["judge"]["threshold"] == 0.8


def test_without_a_reachable_judge_the_rules_run_and_the_version_says_so(engine, tickets, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    rows, truth = tickets
    done = run(engine)
    v2 = engine.datasets.version("tickets", 2)
    step = v2.provenance[-1]
    assert step["judge_skipped"] and "no OPENAI_API_KEY" in step["judge_skipped_reason"]
    assert step["judge_model"] is None
    warnings = {w.code: w.message for w in v2.warnings}
    assert (
        warnings["curated_without_judge"] == "curated without an LLM judge." and "not_curated" not in warnings
    )
    rep = step["report"]
    assert rep["judge"]["skipped"] and rep["held_for_review"] == 0
    assert "judge_flagged" not in rep["dropped"] and rep["dropped"]["pii"] == 3
    assert any("judge skipped" in line["message"] for line in engine.jobs.logs(done.id))


def test_review_decisions_flow_into_the_next_version(engine, mock, tickets):
    run(engine, {"review": {"size": 6, "pending": "exclude"}})
    items, total = engine.review.items("tickets", status="pending")
    assert total == 6 and all(it.version == "tickets-v2" for it in items)
    # closest to the threshold first
    assert [abs(it.score - 0.5) for it in items] == sorted(abs(it.score - 0.5) for it in items)
    a, r, e = items[0].row_id, items[1].row_id, items[2].row_id
    engine.review.decide("tickets", a, "approve", reviewer="ana", note="label is right")
    engine.review.decide("tickets", r, "reject", reviewer="ana", note="wrong label")
    edited = engine.review.decide("tickets", e, "edit", reviewer="bo", response="card_arrival")
    assert edited.status == "edited" and edited.edited["response"] == "card_arrival"
    assert edited.original["response"] != "card_arrival" or edited.original["row_id"] == e
    # applied to the active version at once
    got = engine.datasets.get_row("tickets", a)
    assert got.metadata["review"]["status"] == "approved" and "reviewed" in got.metadata["tags"]
    with pytest.raises(NotFound):
        engine.datasets.get_row("tickets", r)
    assert engine.datasets.get_row("tickets", e).response == "card_arrival"
    prog = engine.review.progress("tickets")
    assert (prog.total, prog.pending, prog.decided) == (6, 3, 3) and prog.fraction_done == 0.5
    # a user rule can now keep only reviewed rows: `tags contains "reviewed"`
    pending_ids = {it.row_id for it in engine.review.items("tickets", status="pending")[0]}
    before = engine.datasets.version("tickets").row_count
    frozen = engine.datasets.freeze("tickets")
    # pending rows were excluded by the run's policy, and the review is in the provenance
    assert frozen.row_count == before - len(pending_ids)
    step = frozen.provenance[-1]
    assert step["kind"] == "review" and step["pending_policy"] == "exclude" and step["pending_at_close"] == 3
    assert step["decisions"] == {"approved": 1, "rejected": 1, "edited": 1, "excluded": 3}
    ids = {row.row_id for row in engine.datasets.iter_rows("tickets", 2)}
    assert a in ids and e in ids and r not in ids and not (pending_ids & ids)
    # the review of a frozen version is closed
    with pytest.raises(Conflict, match="frozen"):
        engine.review.decide("tickets", a, "reject", reviewer="ana")
    # decisions export as data, with labels
    recs = [json.loads(x) for x in b"".join(engine.review.export_bytes("tickets")).splitlines()]
    by = {x["row_id"]: x for x in recs}
    assert by[a]["label"] == 1 and by[r]["label"] == 0 and by[e]["edited_response"] == "card_arrival"
    assert (
        by[a]["reviewer"] == "ana" and by[a]["note"] == "label is right" and by[a]["judge_score"] is not None
    )
    assert len(recs) == 6  # excluded rows are decisions too (by the policy)
    csv_text = b"".join(engine.review.export_bytes("tickets", "csv")).decode()
    assert csv_text.splitlines()[0].startswith("dataset,version,row_id,decision,label")


def test_a_row_is_queued_at_most_once(engine, mock, tickets):
    run(engine, {"review": {"size": 5}})
    first = {it.row_id for it in engine.review.items("tickets")[0]}
    engine.review.finish("tickets", "include")
    engine.datasets.freeze("tickets")
    # the included rows stay, marked by the policy
    row = engine.datasets.get_row("tickets", next(iter(first)), 2)
    assert row.metadata["review"]["status"] == "included"
    run(engine, {"review": {"size": 5}}, version=2)
    items, total = engine.review.items("tickets", limit=100)
    assert total == 10 and len({it.row_id for it in items}) == 10
    second = {it.row_id for it in items if it.version == "tickets-v3"}
    assert len(second) == 5 and not (first & second)


def test_curation_mistakes_fail_before_the_job(engine, mock, tickets):
    with pytest.raises(InvalidInput, match="bad curation config"):
        engine.curation.submit("tickets", {"judge": {"threshold": 3}})
    with pytest.raises(NotFound):
        engine.curation.submit("nope")
    engine.datasets.freeze("tickets")
    engine.datasets.new_version("tickets")
    with pytest.raises(Conflict, match="tickets-v2 is active"):
        engine.curation.submit("tickets", None, version=1)
    with pytest.raises(NotFound, match="never curated"):
        engine.curation.run("tickets")
    with pytest.raises(NotFound, match="not in the review queue"):
        engine.review.decide("tickets", "r_0001", "approve", reviewer="ana")
    with pytest.raises(InvalidInput, match="reviewer"):
        engine.review.decide("tickets", "r_0001", "approve", reviewer=" ")
    with pytest.raises(InvalidInput, match="an edit needs"):
        engine.review.decide("tickets", "r_0001", "edit", reviewer="ana")


def test_cancelling_a_curation_stops_the_judge_and_writes_nothing(engine, mock, tickets):
    import time

    mock.latency_ms = 200
    job = engine.curation.submit("tickets", {"judge": {"concurrency": 2}})
    deadline = time.monotonic() + 30
    while chats(mock) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    engine.jobs.cancel(job.id)
    done = engine.jobs.wait(job.id, timeout=30)
    assert done.status == "cancelled"
    asked = chats(mock)
    time.sleep(0.5)
    assert chats(mock) <= asked + 2  # nothing new is started after the cancel
    # the source was frozen (its raw rows are a version of their own), no curated version was written
    assert [(v.label, v.status) for v in engine.datasets.versions("tickets")] == [("tickets-v1", "frozen")]
    assert engine.curation.runs("tickets") == []
