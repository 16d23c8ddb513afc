"""/v1/jobs: status, progress, logs and cancel of long operations."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from opentracy.engine import Engine
from opentracy.jobs import JobInfo
from opentracy.server.deps import get_engine

router = APIRouter(tags=["jobs"])


@router.get("/jobs")
def list_jobs(
    status: str | None = None,
    kind: str | None = None,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
    engine: Engine = Depends(get_engine),
) -> dict[str, Any]:
    items = engine.jobs.list(status=status, kind=kind, limit=limit, offset=offset)
    return {"items": items, "limit": limit, "offset": offset}


@router.get("/jobs/{job_id}")
def get_job(
    job_id: str,
    wait: float = Query(0, ge=0, le=30, description="seconds to hold the answer while the job has not ended"),
    engine: Engine = Depends(get_engine),
) -> JobInfo:
    """A job's status. With `wait`, the answer comes as soon as the job ends, or after `wait` seconds with
    its progress then (long polling: a waiting client learns of the end at once, with few requests)."""
    return engine.jobs.wait(job_id, timeout=wait) if wait else engine.jobs.get(job_id)


@router.get("/jobs/{job_id}/logs")
def job_logs(
    job_id: str,
    after: int = 0,
    limit: int = Query(1000, ge=1, le=10000),
    engine: Engine = Depends(get_engine),
) -> dict:
    return {"items": engine.jobs.logs(job_id, after=after, limit=limit)}


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, engine: Engine = Depends(get_engine)) -> JobInfo:
    return engine.jobs.cancel(job_id)
