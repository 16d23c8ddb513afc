"""/v1/datasets/{name}/curate, …/curation and …/review: curation runs and the human review queue.
No logic here: parse, call the core (opentracy.distillation.curation), render."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from opentracy.datasets import jobs as dataset_jobs
from opentracy.distillation.curation.review import ReviewItem, ReviewProgress
from opentracy.distillation.curation.service import CurationRunInfo
from opentracy.engine import Engine
from opentracy.jobs import JobInfo
from opentracy.server.deps import get_engine

router = APIRouter(tags=["curation"])


class CurateRequest(BaseModel):
    config: dict[str, Any] | None = None
    version: int | str | None = None


class ReviewDecision(BaseModel):
    decision: Literal["approve", "reject", "edit"]
    reviewer: str
    note: str | None = None
    prompt: str | list[dict[str, Any]] | None = None
    response: str | None = None


class ReviewFinish(BaseModel):
    pending: Literal["exclude", "include"] | None = None
    freeze: bool = False


@router.post("/datasets/{name}/curate", status_code=202)
def curate(
    name: str, body: CurateRequest | None = Body(None), engine: Engine = Depends(get_engine)
) -> JobInfo:
    """Curate the latest version (or `version`): judge, filter, select rows for review; writes the next version.

    `config` is a CurationConfig (see opentracy.distillation.curation.config), e.g.
    `{"judge": {"model": "openai/gpt-4o-mini", "threshold": 0.6}, "pii": "redact", "review": {"size": 50}}`."""
    body = body or CurateRequest()
    return engine.curation.submit(name, body.config, body.version)


@router.get("/datasets/{name}/curation/runs")
def list_runs(name: str, engine: Engine = Depends(get_engine)) -> dict[str, Any]:
    return {"items": engine.curation.runs(name)}


@router.get("/datasets/{name}/curation/runs/{run_id}")
def get_run(name: str, run_id: str, engine: Engine = Depends(get_engine)) -> CurationRunInfo:
    """A run with its config and report; `latest` for the dataset's last run."""
    return engine.curation.run(name, None if run_id == "latest" else run_id)


@router.get("/datasets/{name}/curation/runs/{run_id}/dropped")
def dropped_rows(
    name: str,
    run_id: str,
    rule: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
    engine: Engine = Depends(get_engine),
) -> dict[str, Any]:
    """Rows the run dropped, whole, with the rule and reason; `by_rule` counts them all."""
    return engine.curation.dropped(
        name, None if run_id == "latest" else run_id, rule=rule, limit=limit, offset=offset
    )


@router.get("/datasets/{name}/review")
def review_queue(
    name: str,
    status: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
    engine: Engine = Depends(get_engine),
) -> dict[str, Any]:
    """Queue items (closest to the judge threshold first) and the queue's progress."""
    items, total = engine.review.items(name, status=status, limit=limit, offset=offset)
    return {"items": items, "total": total, "progress": engine.review.progress(name)}


@router.get("/datasets/{name}/review/progress")
def review_progress(name: str, engine: Engine = Depends(get_engine)) -> ReviewProgress:
    return engine.review.progress(name)


@router.get("/datasets/{name}/review/export")
def review_export(
    name: str,
    format: str = "jsonl",
    include_pending: bool = False,
    engine: Engine = Depends(get_engine),
) -> StreamingResponse:
    """The decisions as data (jsonl or csv): what the judge said, what the person decided, the text kept."""
    engine.review.progress(name)  # a missing dataset fails before streaming starts
    chunks = engine.review.export_bytes(name, format, include_pending=include_pending)
    first = next(chunks, b"")  # a bad format fails here, as a JSON error
    media = "text/csv" if format == "csv" else "application/x-ndjson"

    def body() -> Any:
        yield first
        yield from chunks

    headers = {"Content-Disposition": f'attachment; filename="{name}-review.{format}"'}
    return StreamingResponse(body(), media_type=media, headers=headers)


@router.post("/datasets/{name}/review/finish")
def review_finish(
    name: str, body: ReviewFinish | None = Body(None), engine: Engine = Depends(get_engine)
) -> dict[str, Any]:
    """Close the active version's review: rows still pending follow `pending` (default: the run's policy).
    With `freeze: true` the version is then frozen (a job)."""
    body = body or ReviewFinish()
    step = engine.review.finish(name, body.pending)
    job = None
    if body.freeze:
        v = engine.datasets.version(name, "active")
        job = engine.jobs.submit(dataset_jobs.FREEZE, {"dataset": name, "version": v.number})
    return {"review": step, "job": job}


@router.get("/datasets/{name}/review/{row_id}")
def review_item(name: str, row_id: str, engine: Engine = Depends(get_engine)) -> ReviewItem:
    return engine.review.get(name, row_id)


@router.post("/datasets/{name}/review/{row_id}")
def review_decide(
    name: str, row_id: str, body: ReviewDecision, engine: Engine = Depends(get_engine)
) -> ReviewItem:
    """Approve, reject or edit a queued row (with the reviewer's name and an optional note)."""
    return engine.review.decide(
        name,
        row_id,
        body.decision,
        reviewer=body.reviewer,
        note=body.note,
        prompt=body.prompt,
        response=body.response,
    )
