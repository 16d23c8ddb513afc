"""/v1/traces: log, list, show, import, export, and traces → dataset. No logic here: parse, call, render."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import msgspec
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict

from opentracy.datasets.from_traces import TracesToDatasetResult, add_traces
from opentracy.engine import Engine
from opentracy.errors import InvalidInput
from opentracy.jobs import JobInfo
from opentracy.server import multipart
from opentracy.server.deps import get_engine, meta_filters
from opentracy.traces import jobs as trace_jobs
from opentracy.traces.importers import FORMATS
from opentracy.traces.schema import IngestResult, TraceOut, TracePage
from opentracy.traces.service import TraceFilter

router = APIRouter(tags=["traces"])


def trace_filter(
    request: Request,
    model: str | None = None,
    provider: str | None = None,
    alias: str | None = None,
    since: datetime | None = Query(None, description="started at or after (ISO 8601)"),
    until: datetime | None = Query(None, description="started before (ISO 8601)"),
    tag: list[str] = Query([], description="traces holding all of these tags"),
    error: bool | None = Query(None, description="true: failed calls only; false: successful ones only"),
    finish_reason: str | None = None,
    user_id: str | None = None,
    session_id: str | None = None,
    source: str | None = Query(None, description="api, proxy, import or gateway"),
    q: str | None = Query(None, description="text in the prompt or the response"),
) -> TraceFilter:
    """Filters shared by list, export and to-dataset. Metadata fields: `meta.<field>=<value>`."""
    meta = meta_filters(request)
    return TraceFilter(
        model=model,
        provider=provider,
        alias=alias,
        since=since,
        until=until,
        tags=tag,
        meta=meta,
        error=error,
        finish_reason=finish_reason,
        user_id=user_id,
        session_id=session_id,
        source=source,
        q=q,
    )


@router.post("/traces", status_code=201)
async def log_traces(
    request: Request, on_error: str = "raise", engine: Engine = Depends(get_engine)
) -> IngestResult:
    """Store one trace, a JSON list of traces, or `{"traces": [...]}` (see the trace schema in the docs).
    A bad trace is refused with its position and nothing is stored, unless `on_error=skip`."""
    if on_error not in ("raise", "skip"):
        raise InvalidInput(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    raw = await request.body()
    traces = engine.traces.parse(raw)
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(engine.traces.ingest, traces, source="api", on_error=on_error)


@router.get("/traces")
def list_traces(
    f: TraceFilter = Depends(trace_filter),
    sort: str = Query(
        "-started_at", description="started_at, latency, cost or tokens; prefix - for descending"
    ),
    limit: int = Query(50, ge=1, le=1000),
    cursor: str | None = None,
    engine: Engine = Depends(get_engine),
) -> TracePage:
    return engine.traces.list(f, sort=sort, limit=limit, cursor=cursor)


@router.get("/traces/count")
def count_traces(
    f: TraceFilter = Depends(trace_filter), engine: Engine = Depends(get_engine)
) -> dict[str, int]:
    return {"count": engine.traces.count(f)}


@router.get("/traces/export")
def export_traces(
    f: TraceFilter = Depends(trace_filter), engine: Engine = Depends(get_engine)
) -> StreamingResponse:
    """Every matching trace, oldest first, as our JSONL (what `opentracy traces import` reads back)."""
    enc = msgspec.json.Encoder()

    def lines() -> Iterator[bytes]:
        buf = []
        for t in engine.traces.iter(f):
            buf.append(enc.encode(export_obj(t)) + b"\n")
            if len(buf) >= 500:
                yield b"".join(buf)
                buf = []
        if buf:
            yield b"".join(buf)

    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={"content-disposition": 'attachment; filename="traces.jsonl"'},
    )


def export_obj(t: TraceOut) -> dict[str, Any]:
    d = t.model_dump(mode="json", exclude_none=True)
    d.pop("source", None)
    for k in ("input_tokens", "output_tokens"):
        if k in d:
            d.setdefault("usage", {})[k] = d.pop(k)
    if not d.get("tags"):
        d.pop("tags", None)
    if not d.get("metadata"):
        d.pop("metadata", None)
    return d


@router.post("/traces/import", status_code=202)
async def import_traces(request: Request, engine: Engine = Depends(get_engine)) -> JobInfo:
    """Stream a file (multipart part `file`; form fields `format` (auto, opentracy, openai, otel) and
    `on_error` (raise, skip)); a job imports it, all or nothing."""
    slot = engine.settings.staging_dir / f"tr-{secrets.token_hex(8)}"
    try:
        got = await multipart.receive(request, slot)
        fmt = (got.fields.get("format") or "auto").lower()
        if fmt not in FORMATS:
            raise InvalidInput(f"unknown trace format {fmt!r}; expected one of {', '.join(FORMATS)}")
        on_error = got.fields.get("on_error") or "raise"
        if on_error not in ("raise", "skip"):
            raise InvalidInput(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        params = {
            "staged": f"{slot.name}/{got.path.name}",  # type: ignore[union-attr]
            "filename": got.filename,
            "bytes": got.size,
            "format": fmt,
            "on_error": on_error,
        }
        return engine.jobs.submit(trace_jobs.IMPORT, params)
    except BaseException:
        shutil.rmtree(slot, ignore_errors=True)
        raise


class ToDataset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str
    trace_ids: list[str] | None = None
    filter: TraceFilter | None = None
    create: bool = True
    description: str = ""
    limit: int | None = None


@router.post("/traces/to-dataset")
def traces_to_dataset(body: ToDataset, engine: Engine = Depends(get_engine)) -> TracesToDatasetResult:
    """Append traces (by ids or by a filter) to a dataset's active version, with metadata.source_trace_id."""
    return add_traces(
        engine.datasets,
        engine.traces,
        body.dataset,
        trace_ids=body.trace_ids,
        filter=body.filter,
        create=body.create,
        description=body.description,
        limit=body.limit,
    )


@router.get("/traces/{trace_id}")
def get_trace(trace_id: str, engine: Engine = Depends(get_engine)) -> TraceOut:
    return engine.traces.get(trace_id)
