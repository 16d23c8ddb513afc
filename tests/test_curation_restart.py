"""A real server process killed while the judge is half-way through a curation job: the restarted server
resumes the job, finishes it, and pays nothing again for the rows judged before the kill."""

from __future__ import annotations

import time

import httpx
from conftest import free_port
from curation_fixtures import judge_script, noisy_rows, write_rows
from test_restart import ServerProcess, wait_end

from opentracy.testing import MockLLM


def judged_prompts(mock) -> list[str]:
    return [
        r["body"]["messages"][-1]["content"]
        for r in list(mock.requests)
        if r["path"].endswith("/chat/completions")
    ]


def test_curation_killed_mid_judge_resumes_without_paying_again(tmp_path, db_url, monkeypatch):
    home = tmp_path / "home"
    rows, _ = noisy_rows(300)
    src = tmp_path / "tickets.jsonl"
    write_rows(src, rows)
    in_flight = 4
    with MockLLM(script=judge_script, latency_ms=40) as mock:
        monkeypatch.setenv("OPENAI_BASE_URL", mock.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        with ServerProcess(home, db_url, free_port()) as srv:
            with open(src, "rb") as f:
                r = httpx.post(
                    f"{srv.url}/v1/datasets/tickets/upload", files={"file": ("t.jsonl", f)}, timeout=30
                )
            assert wait_end(srv.url, r.json()["id"])["status"] == "succeeded"
            job = httpx.post(
                f"{srv.url}/v1/datasets/tickets/curate",
                json={"config": {"review": False, "judge": {"concurrency": in_flight}}},
                timeout=30,
            )
            assert job.status_code == 202, job.text
            job_id = job.json()["id"]
            deadline = time.monotonic() + 60
            while len(judged_prompts(mock)) < 100:
                assert time.monotonic() < deadline, "the judge never got going"
                time.sleep(0.01)
            srv.kill()
        time.sleep(0.3)  # calls in flight at the kill may still arrive
        before = judged_prompts(mock)
        mock.reset()
        assert 100 <= len(before) < 250  # killed half-way
        with ServerProcess(home, db_url, free_port()) as srv:
            done = wait_end(srv.url, job_id, timeout=120)
            assert done["status"] == "succeeded", done
            assert done["attempts"] == 2
            logs = httpx.get(f"{srv.url}/v1/jobs/{job_id}/logs").json()["items"]
            versions = httpx.get(f"{srv.url}/v1/datasets/tickets/versions").json()["items"]
        after = judged_prompts(mock)
    rep = done["result"]["run"]["report"]
    judged = rep["judge"]["rows_judged"]
    # Nothing answered before the kill is asked again; at most the calls in flight at the kill are repeated.
    repeated = set(before) & set(after)
    assert len(repeated) <= in_flight, len(repeated)
    assert len(before) + len(after) <= judged + in_flight
    assert rep["judge"]["cached"] >= len(before) - in_flight
    assert rep["rows_in"] == rep["rows_out"] + rep["dropped_total"]
    assert any("rows the judge already scored come from the cache" in line["message"] for line in logs)
    # exactly one curated version, committed once
    assert [(v["label"], v["status"]) for v in versions] == [
        ("tickets-v1", "frozen"),
        ("tickets-v2", "active"),
    ]
