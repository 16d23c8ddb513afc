"""Curation and review through the faces: the HTTP API, the Distiller client and the CLI, on a real server."""

from __future__ import annotations

import json

import httpx
import pytest
from click.testing import CliRunner, Result
from curation_fixtures import judge_script, noisy_rows, write_rows

from opentracy.cli import main
from opentracy.errors import Conflict, InvalidInput
from opentracy.testing import MockLLM

CLEAN_ENV = {"OPENTRACY_API_KEY": None, "OPENTRACY_URL": None, "COLUMNS": "120", "USER": "cli-user"}


@pytest.fixture
def mock(monkeypatch):
    with MockLLM(script=judge_script) as m:
        monkeypatch.setenv("OPENAI_BASE_URL", m.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        yield m


@pytest.fixture
def uploaded(client, tmp_path):
    rows, truth = noisy_rows(120)
    p = tmp_path / "tickets.jsonl"
    write_rows(p, rows)
    client.upload_dataset("tickets", p)
    return rows, truth


def cli(url: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--url", url, *args], env=CLEAN_ENV)


def test_client_curate_review_and_finish(client, mock, uploaded, tmp_path):
    rows, truth = uploaded
    ds = client.curate("tickets", threshold=0.5, pii="redact", review=4)
    assert ds.label == "tickets-v2" and ds.status == "active" and ds.parent == "tickets-v1"
    assert "not_curated" not in [w.code for w in ds.warnings]
    rep = client.curation_report("tickets")
    assert rep["output"] == "tickets-v2" and rep["config"]["pii"]["action"] == "redact"
    r = rep["report"]
    assert r["rows_in"] == len(rows) == r["rows_out"] + r["dropped_total"] and r["redacted"] == 3
    assert "pii" not in r["dropped"]
    # redacted rows are in the version, masked
    masked = client.get_row("tickets", "pii_0")
    assert "[EMAIL]" in masked.prompt and "pii_redacted" in masked.metadata["curation_flags"]
    dropped = list(client.dropped_rows("tickets", page_size=5))
    assert len(dropped) == r["dropped_total"] and all(d["reason"] for d in dropped)
    assert {d["row_id"] for d in client.dropped_rows("tickets", rule="empty_response")} == {
        f"empty_{k}" for k in range(4)
    }
    queue = client.review_queue("tickets")
    assert len(queue) == 4 and client.review_progress("tickets")["pending"] == 4
    first, second = queue[0]["row_id"], queue[1]["row_id"]
    got = client.approve("tickets", first, reviewer="ana", note="ok")
    assert got["status"] == "approved" and got["reviewer"] == "ana"
    got = client.edit("tickets", second, response="exchange_rate", reviewer="ana")
    assert got["status"] == "edited" and got["edited"]["response"] == "exchange_rate"
    out = client.export_review("tickets", tmp_path / "review.jsonl")
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert {x["row_id"] for x in recs} == {first, second}
    frozen = client.finish_review("tickets", pending="include")
    assert frozen.status == "frozen" and frozen.provenance[-1]["kind"] == "review"
    assert frozen.provenance[-1]["pending_policy"] == "include"
    assert client.get_row("tickets", second, 2).response == "exchange_rate"
    with pytest.raises(Conflict, match="frozen"):
        client.reject("tickets", first, reviewer="ana")
    assert len(client.curation_runs("tickets")) == 1


def test_http_errors_have_the_one_shape(client, server, mock, uploaded):
    r = httpx.post(f"{server.url}/v1/datasets/tickets/curate", json={"config": {"dedup": {"threshold": 5}}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
    assert "dedup.threshold" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1/datasets/nope/curate", json={})
    assert r.status_code == 404
    r = httpx.post(
        f"{server.url}/v1/datasets/tickets/review/r_0001", json={"decision": "maybe", "reviewer": "x"}
    )
    assert r.status_code == 422
    r = httpx.get(f"{server.url}/v1/datasets/tickets/review/export", params={"format": "xml"})
    assert r.status_code == 422 and "jsonl or csv" in r.json()["error"]["message"]
    with pytest.raises(InvalidInput, match="bad curation config"):
        client.curate("tickets", config={"review": {"pending": "maybe"}})
    # a job can be started without waiting
    job = client.curate("tickets", wait=False, review=False)
    assert job.kind == "dataset.curate" and job.wait().status == "succeeded"


def test_cli_curate_and_review(server, mock, uploaded, tmp_path):
    r = cli(
        server.url,
        "curate",
        "tickets",
        "--threshold",
        "0.5",
        "--review-size",
        "3",
        "--keep-if",
        "cluster_id == 34",
    )
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].startswith("tickets-v2  active")
    assert "dropped" in r.stdout and "empty_response" in r.stdout and "judge openai/gpt-4o-mini" in r.stdout
    r = cli(server.url, "curation", "report", "tickets", "--json")
    run = json.loads(r.stdout)
    assert run["config"]["rules"] == [{"name": "keep_if_1", "keep_if": "cluster_id == 34", "drop_if": None}]
    r = cli(server.url, "curation", "dropped", "tickets", "--rule", "refusal", "--json")
    assert {json.loads(x)["row_id"] for x in r.stdout.splitlines()} == {"refusal_0", "refusal_1", "refusal_2"}
    r = cli(server.url, "curation", "runs", "tickets")
    assert r.exit_code == 0 and "tickets-v2" in r.stdout
    r = cli(server.url, "review", "list", "tickets", "--json")
    items = json.loads(r.stdout)
    assert len(items) == 3
    row_id = items[0]["row_id"]
    r = cli(server.url, "review", "approve", "tickets", row_id, "--note", "fine")
    assert r.exit_code == 0 and r.stdout.strip() == f"{row_id}  approved  by cli-user"
    r = cli(server.url, "review", "reject", "tickets", items[1]["row_id"], "--by", "bo")
    assert "rejected  by bo" in r.stdout
    r = cli(server.url, "review", "list", "tickets")
    assert r.exit_code == 0 and "2 of 3 decided" in r.stderr
    r = cli(server.url, "review", "export", "tickets", str(tmp_path / "d.csv"), "--format", "csv")
    assert r.exit_code == 0 and (tmp_path / "d.csv").read_text().count("\n") == 3
    r = cli(
        server.url, "review", "export", "tickets", str(tmp_path / "by-suffix.csv")
    )  # csv: the name says so
    assert r.exit_code == 0 and (tmp_path / "by-suffix.csv").read_text() == (tmp_path / "d.csv").read_text()
    r = cli(server.url, "review", "export", "tickets", str(tmp_path / "d.parquet"))
    assert r.exit_code != 0 and "pass format= (one of jsonl, csv)" in r.stderr
    r = cli(server.url, "review", "finish", "tickets")
    assert r.exit_code == 0 and r.stdout.startswith("tickets-v2  frozen")
    # mistakes: one line, non-zero exit
    r = cli(server.url, "review", "approve", "tickets", row_id)
    assert r.exit_code != 0 and r.stderr.startswith("error:") and "frozen" in r.stderr
    r = cli(server.url, "curate", "tickets", "--keep-if", "tags contains")
    assert r.exit_code != 0 and "expected a value" in r.stderr and "Traceback" not in r.output
