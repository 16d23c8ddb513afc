"""The job framework: persisted records, progress, logs, cancel, errors, recovery after a restart."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import spec_rows

from opentracy.engine import Engine
from opentracy.errors import InvalidInput, NotFound
from opentracy.store.tables import JobRecord


def test_job_succeeds_with_progress_result_and_logs(engine):
    go = threading.Event()  # held until the submitted record is checked: a quick job could end before

    def work(ctx):
        assert go.wait(10)
        for i in range(3):
            ctx.progress(i / 3, f"step {i}")
            ctx.log(f"did step {i}")
        return {"answer": 42}

    engine.jobs.register("test.work", work)
    job = engine.jobs.submit("test.work", {"x": 1})
    assert job.status in ("queued", "running") and job.params == {"x": 1}
    go.set()
    done = engine.jobs.wait(job.id, timeout=10)
    assert done.status == "succeeded" and done.progress == 1.0 and done.result == {"answer": 42}
    assert done.started_at and done.finished_at and done.attempts == 1
    msgs = [line["message"] for line in engine.jobs.logs(job.id)]
    assert "did step 2" in msgs and msgs[-1] == "succeeded"
    assert [j.id for j in engine.jobs.list(kind="test.work")] == [job.id]
    assert engine.jobs.list(status="failed") == []


def test_job_errors_are_recorded(engine):
    def bad_input(ctx):
        raise InvalidInput("line 3 is wrong", file="f.jsonl", line=3)

    def crash(ctx):
        raise RuntimeError("boom")

    engine.jobs.register("test.bad", bad_input)
    engine.jobs.register("test.crash", crash)
    a = engine.jobs.wait(engine.jobs.submit("test.bad", {}).id, timeout=10)
    assert (
        a.status == "failed"
        and a.error["code"] == "invalid_input"
        and a.error["message"] == "f.jsonl, line 3: line 3 is wrong"
    )
    b = engine.jobs.wait(engine.jobs.submit("test.crash", {}).id, timeout=10)
    assert b.status == "failed" and b.error == {"code": "internal_error", "message": "RuntimeError: boom"}
    assert any("Traceback" in line["message"] for line in engine.jobs.logs(b.id))


def test_cancel_running_and_queued_jobs(engine):
    started = threading.Event()

    def slow(ctx):
        started.set()
        for i in range(200):
            time.sleep(0.02)
            ctx.progress(i / 200, "working")
        return {}

    engine.jobs.register("test.slow", slow)
    running = engine.jobs.submit("test.slow", {})
    assert started.wait(5)
    other = engine.jobs.submit("test.slow", {})
    third = engine.jobs.submit("test.slow", {})  # two workers: this one waits in the queue
    engine.jobs.cancel(third.id)
    engine.jobs.cancel(running.id)
    engine.jobs.cancel(other.id)
    assert engine.jobs.wait(running.id, timeout=10).status == "cancelled"
    assert engine.jobs.wait(other.id, timeout=10).status == "cancelled"
    assert engine.jobs.get(third.id).status == "cancelled"
    # cancelling a finished job changes nothing
    assert engine.jobs.cancel(running.id).status == "cancelled"
    with pytest.raises(NotFound):
        engine.jobs.cancel("job_nope")


def test_cancelled_upload_writes_nothing(engine, write_jsonl):
    from conftest import segment_files

    path = write_jsonl(spec_rows(40_000))
    job = engine.jobs.submit(
        "dataset.upload",
        {"dataset": "big", "staged": "slot/rows.jsonl", "filename": "rows.jsonl", "options": {}},
    )
    # (the file is not staged: the job fails clearly instead)
    assert (
        engine.jobs.wait(job.id, timeout=10)
        .error["message"]
        .startswith("the uploaded file is no longer staged")
    )
    staged = engine.settings.staging_dir / "slot2"
    staged.mkdir(parents=True)
    (staged / "rows.jsonl").write_bytes(path.read_bytes())
    job = engine.jobs.submit(
        "dataset.upload", {"dataset": "big", "staged": "slot2/rows.jsonl", "filename": "rows.jsonl"}
    )
    engine.jobs.cancel(job.id)
    end = engine.jobs.wait(job.id, timeout=30)
    if end.status == "cancelled":
        with pytest.raises(NotFound):
            engine.datasets.get("big")
        assert segment_files(engine) == []
    else:  # the upload finished before the cancel landed: then it is complete, never partial
        assert end.status == "succeeded" and engine.datasets.version("big").row_count == 40_000
    assert not staged.exists()  # the staged file is released either way


def test_recover_after_restart(settings):
    eng = Engine(settings)  # not started: nothing recovers yet
    with eng.catalog.session() as s:
        for jid, kind, status in (
            ("job_lost", "test.unknown", "running"),
            ("job_freeze", "dataset.freeze", "running"),
            ("job_queued", "dataset.freeze", "queued"),
        ):
            s.add(
                JobRecord(
                    id=jid,
                    kind=kind,
                    status=status,
                    progress=0.3,
                    message="",
                    params={"dataset": "nope", "version": 1},
                    attempts=1,
                    cancel_requested=False,
                )
            )
        s.add(
            JobRecord(
                id="job_cancel",
                kind="dataset.freeze",
                status="running",
                progress=0.3,
                message="",
                params={},
                attempts=1,
                cancel_requested=True,
            )
        )
    eng.start()
    try:
        lost = eng.jobs.get("job_lost")
        assert lost.status == "failed" and lost.error["code"] == "interrupted" and "restart" in lost.message
        assert eng.jobs.get("job_cancel").status == "cancelled"
        for jid in ("job_freeze", "job_queued"):
            end = eng.jobs.wait(jid, timeout=10)
            # resumed, then failed for its own reason (the dataset does not exist) - not left running
            assert end.status == "failed" and end.error["code"] == "not_found" and end.attempts == 2
            assert any("restarted" in line["message"] for line in eng.jobs.logs(jid))
    finally:
        eng.close()


def test_freeze_job_resumed_after_it_already_froze(engine, write_jsonl):
    """A freeze that committed but died before recording success finishes cleanly when resumed."""
    engine.datasets.upload("t", write_jsonl(spec_rows(10)))
    engine.datasets.freeze("t")
    handler = engine.jobs.kinds["dataset.freeze"].handler
    from opentracy.jobs.runner import JobContext

    out = handler(JobContext(engine.jobs, "job_x", {"dataset": "t", "version": 1}, attempt=2))
    assert out["status"] == "frozen"


def test_long_polling_answers_when_the_job_ends(engine, server, client):
    """GET /v1/jobs/{id}?wait=S holds the answer until the job ends (or S seconds pass); the client's
    wait_job uses it, so it learns of the end at once instead of at its next poll."""
    import httpx

    gate = threading.Event()

    def gated(ctx):
        ctx.progress(0.5, "waiting for the gate")
        gate.wait(20)
        return {"ok": True}

    engine.jobs.register("test.gated", gated)
    job = engine.jobs.submit("test.gated", {})
    with httpx.Client(base_url=server.url, timeout=30) as http:
        t0 = time.monotonic()
        held = http.get(f"/v1/jobs/{job.id}", params={"wait": 0.5}).json()
        assert held["status"] in ("queued", "running") and 0.4 < time.monotonic() - t0 < 5
        threading.Timer(0.3, gate.set).start()
        t0 = time.monotonic()
        done = http.get(f"/v1/jobs/{job.id}", params={"wait": 20}).json()
        assert done["status"] == "succeeded" and done["result"] == {"ok": True}
        assert time.monotonic() - t0 < 5  # answered when the job ended, not after 20 s
        assert http.get(f"/v1/jobs/{job.id}", params={"wait": 31}).status_code == 422
        assert http.get("/v1/jobs/job_nope", params={"wait": 1}).status_code == 404
    # the client: ends as soon as the job does
    gate.clear()
    job = engine.jobs.submit("test.gated", {})
    threading.Timer(0.5, gate.set).start()
    t0 = time.monotonic()
    assert client.wait_job(job.id).status == "succeeded"
    assert time.monotonic() - t0 < 5
