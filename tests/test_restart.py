"""A real server process killed mid-upload: nothing partial is visible, and the restarted server resumes the
job and commits it exactly once. Jobs that cannot resume end failed with a reason instead of staying
"running" forever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port
from sqlalchemy import select

from opentracy.store.catalog import Catalog
from opentracy.store.tables import DatasetRecord, JobRecord

ROWS = 60_000  # ~3 s of ingest with 16 KiB chunks: long enough to be caught in the middle


class ServerProcess:
    """`python -m opentracy.cli serve` in a subprocess; always killed on exit."""

    def __init__(self, home: Path, db_url: str, port: int) -> None:
        self.home, self.db_url, self.port = home, db_url, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = home.parent / f"server-{port}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENTRACY_")}
        env.update(
            OPENTRACY_HOME=str(self.home),
            OPENTRACY_DATABASE_URL=self.db_url,
            OPENTRACY_INGEST_CHUNK_BYTES="16384",
            PYTHONUNBUFFERED="1",
        )
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "opentracy.cli",
                    "serve",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                env=env,
                cwd=self.home.parent,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the server did not answer /health in 30 s:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def __exit__(self, *exc: object) -> None:
        self.kill()


def write_rows(path: Path, n: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(
            "".join(
                f'{{"row_id":"r_{i:07d}","prompt":"Ticket {i}: where is my invoice?","response":"billing",'
                f'"metadata":{{"cluster_id":34}}}}\n'
                for i in range(n)
            )
        )


def get_job(url: str, job_id: str) -> dict:
    r = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def wait_end(url: str, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = get_job(url, job_id)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"job still {job['status']} after {timeout} s: {job}"
        time.sleep(0.1)


def segment_files(home: Path) -> list[Path]:
    root = home / "artifacts" / "segments"
    return sorted(root.rglob("*.parquet")) if root.exists() else []


def test_upload_killed_mid_ingest_resumes_exactly_once(tmp_path, db_url):
    home = tmp_path / "home"
    src = tmp_path / "big.jsonl"
    write_rows(src, ROWS)
    port = free_port()
    with ServerProcess(home, db_url, port) as srv:
        with open(src, "rb") as f:
            r = httpx.post(f"{srv.url}/v1/datasets/big/upload", files={"file": ("big.jsonl", f)}, timeout=60)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        seen = []
        deadline = time.monotonic() + 30
        while True:
            job = get_job(srv.url, job_id)
            seen.append((job["status"], job["progress"]))
            # well into the ingest (rows decoded and being written), but before the commit
            if job["status"] == "running" and 0.15 <= job["progress"] < 0.9:
                break
            assert job["status"] in ("queued", "running"), (
                f"the upload ended before it could be interrupted: {seen[-5:]}"
            )
            assert time.monotonic() < deadline, f"never saw the upload running with progress: {seen[-5:]}"
            time.sleep(0.02)
        srv.kill()  # SIGKILL: no shutdown handler runs

    # The store shows nothing of the interrupted upload.
    cat = Catalog(db_url)
    try:
        with cat.session() as s:
            assert s.scalar(select(DatasetRecord).where(DatasetRecord.name == "big")) is None
            rec = s.get(JobRecord, job_id)
            assert rec.status == "running" and rec.attempts == 1 and 0 < rec.progress < 0.9
    finally:
        cat.dispose()
    assert segment_files(home) == []

    with ServerProcess(home, db_url, port) as srv:
        job = wait_end(srv.url, job_id)
        assert job["status"] == "succeeded", (job, srv.output())
        assert job["attempts"] == 2 and job["progress"] == 1.0
        assert job["result"]["rows_added"] == ROWS
        v = httpx.get(f"{srv.url}/v1/datasets/big/versions/latest", timeout=10).json()
        assert v["label"] == "big-v1" and v["row_count"] == ROWS
        uploads = [p for p in v["provenance"] if p["kind"] == "upload"]
        assert len(uploads) == 1 and uploads[0]["job_id"] == job_id and uploads[0]["rows"] == ROWS
        # every row once, in order
        export = httpx.get(
            f"{srv.url}/v1/datasets/big/versions/1/export", params={"format": "csv"}, timeout=60
        )
        ids = [line.split(",", 1)[0] for line in export.text.splitlines()[1:]]
        assert len(ids) == ROWS and len(set(ids)) == ROWS
        assert ids[0] == "r_0000000" and ids[-1] == f"r_{ROWS - 1:07d}" and ids == sorted(ids)
        page = httpx.get(f"{srv.url}/v1/datasets/big/versions/1/rows", params={"limit": 1}, timeout=10).json()
        assert page["total"] == ROWS
        logs = [
            x["message"] for x in httpx.get(f"{srv.url}/v1/jobs/{job_id}/logs", timeout=10).json()["items"]
        ]
        assert any("restart" in m for m in logs), logs
        assert logs[-1] == "succeeded"
        # one upload, one job, one segment; nothing left staged
        assert len(httpx.get(f"{srv.url}/v1/jobs", timeout=10).json()["items"]) == 1
        assert len(segment_files(home)) == 1
        assert [p for p in (home / "staging").rglob("*") if p.is_file()] == []
        # The killed attempt's half-written segment must not stay on disk for ever: every crash would leak
        # the size of an upload. (Checked last: everything above is about correctness, this about cleanup.)
        scratch = home / "artifacts" / "tmp"
        leftovers = sorted(p.name for p in scratch.rglob("*") if p.is_file()) if scratch.exists() else []
        assert leftovers == [], f"scratch files of the killed attempt were never removed: {leftovers}"


@pytest.fixture
def stale_jobs(db_url):
    """Jobs a dead server left behind, written straight into the catalog."""
    cat = Catalog(db_url)
    try:
        with cat.session() as s:
            for jid, kind, status, cancel in (
                ("job_lost_running", "test.not_registered", "running", False),
                ("job_lost_queued", "test.not_registered", "queued", False),
                ("job_lost_cancel", "test.not_registered", "running", True),
            ):
                s.add(
                    JobRecord(
                        id=jid,
                        kind=kind,
                        status=status,
                        progress=0.4,
                        message="working",
                        params={"n": 1},
                        attempts=1 if status == "running" else 0,
                        cancel_requested=cancel,
                    )
                )
    finally:
        cat.dispose()


def test_non_resumable_jobs_are_failed_with_a_reason_on_restart(tmp_path, db_url, stale_jobs):
    with ServerProcess(tmp_path / "home", db_url, free_port()) as srv:
        for jid in ("job_lost_running", "job_lost_queued"):
            job = get_job(srv.url, jid)
            assert job["status"] == "failed", job
            assert job["error"]["code"] == "interrupted"
            assert "restart" in job["message"] or "stopped" in job["error"]["message"]
            assert "run it again" in job["error"]["message"]
            assert job["finished_at"] is not None
        job = get_job(srv.url, "job_lost_cancel")
        assert job["status"] == "cancelled" and job["finished_at"] is not None
        running = httpx.get(f"{srv.url}/v1/jobs", params={"status": "running"}, timeout=10).json()["items"]
        assert running == []
