"""/v1/datasets: datasets, versions, rows, upload, freeze, diff and export. No logic here: parse, call, render."""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from opentracy.datasets import jobs as dataset_jobs
from opentracy.datasets.export import EXTENSIONS, MEDIA_TYPES, check_format
from opentracy.datasets.models import DatasetInfo, DiffResult, RowIn, RowOut, RowPage, RowPatch, VersionInfo
from opentracy.engine import Engine
from opentracy.errors import InvalidInput
from opentracy.jobs import JobInfo
from opentracy.server import multipart
from opentracy.server.deps import get_engine, meta_filters

router = APIRouter(tags=["datasets"])


class DatasetCreate(BaseModel):
    name: str
    description: str = ""


class NewVersion(BaseModel):
    parent: int | str | None = None


class RowsAdd(BaseModel):
    rows: list[RowIn]


class RowsUpdate(BaseModel):
    rows: list[dict[str, Any]]


class RowsDelete(BaseModel):
    row_ids: list[str]


@router.get("/datasets")
def list_datasets(
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
    q: str | None = None,
    engine: Engine = Depends(get_engine),
) -> dict[str, Any]:
    items, total = engine.datasets.list(limit=limit, offset=offset, q=q)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.post("/datasets", status_code=201)
def create_dataset(body: DatasetCreate, engine: Engine = Depends(get_engine)) -> DatasetInfo:
    return engine.datasets.create(body.name, body.description)


@router.get("/datasets/{name}")
def get_dataset(name: str, engine: Engine = Depends(get_engine)) -> DatasetInfo:
    return engine.datasets.get(name)


@router.delete("/datasets/{name}", status_code=204)
def delete_dataset(name: str, confirm: str | None = None, engine: Engine = Depends(get_engine)) -> Response:
    engine.datasets.delete(name, confirm)
    return Response(status_code=204)


@router.post("/datasets/{name}/upload", status_code=202)
async def upload(name: str, request: Request, engine: Engine = Depends(get_engine)) -> JobInfo:
    """Stream a file (multipart part `file`) into the dataset; the rows are read by a job.

    Form fields: format, prompt_field, response_field, metadata_fields (JSON list or comma-separated),
    split, on_error (raise|skip), description.
    """
    engine.datasets.check_name(name)  # before the body is read: a bad name costs no transfer
    slot = engine.settings.staging_dir / f"up-{secrets.token_hex(8)}"
    try:
        return await _stage_upload(name, request, engine, slot)
    except BaseException:
        shutil.rmtree(slot, ignore_errors=True)  # a refused upload leaves nothing staged
        raise


def _upload_option(key: str, value: str) -> Any:
    """A form field of an upload as an option (None: not one, or empty), refused when bad. Checked as each
    field arrives, so a bad option sent before the file stops the upload before the file is staged."""
    if key not in _UPLOAD_OPTIONS or not value:
        return None
    if key == "metadata_fields":
        raw = value.strip()
        try:
            fields = (
                json.loads(raw) if raw.startswith("[") else [x.strip() for x in raw.split(",") if x.strip()]
            )
        except ValueError:
            fields = None
        if not isinstance(fields, list) or not all(isinstance(x, str) for x in fields):
            raise InvalidInput("metadata_fields must be a JSON list or a comma-separated list of names")
        return fields
    if key == "on_error" and value not in ("raise", "skip"):
        raise InvalidInput(f"on_error must be 'raise' or 'skip', not {value!r}")
    if key == "format":
        from opentracy.datasets.formats import FORMATS

        if value.lower() not in (*FORMATS, "json", "ndjson", "chat", "huggingface", "arrow"):
            raise InvalidInput(f"unknown format {value!r}; expected one of {', '.join(FORMATS)}")
    return value


_UPLOAD_OPTIONS = (
    "format", "prompt_field", "response_field", "metadata_fields", "split", "on_error", "description",
)  # fmt: skip


async def _stage_upload(name: str, request: Request, engine: Engine, slot_dir: Path) -> JobInfo:
    got = await multipart.receive(request, slot_dir, check_field=_upload_option)
    options = {k: v for k in _UPLOAD_OPTIONS if (v := _upload_option(k, got.fields.get(k, ""))) is not None}
    params = {
        "dataset": name,
        "staged": f"{slot_dir.name}/{got.path.name}",  # type: ignore[union-attr]
        "filename": got.filename,
        "bytes": got.size,
        "options": options,
    }
    return engine.jobs.submit(dataset_jobs.UPLOAD, params)


@router.get("/datasets/{name}/versions")
def list_versions(name: str, engine: Engine = Depends(get_engine)) -> dict[str, Any]:
    return {"items": engine.datasets.versions(name)}


@router.post("/datasets/{name}/versions", status_code=201)
def new_version(
    name: str, body: NewVersion | None = Body(None), engine: Engine = Depends(get_engine)
) -> VersionInfo:
    return engine.datasets.new_version(name, body.parent if body else None)


@router.get("/datasets/{name}/versions/{version}")
def get_version(name: str, version: str, engine: Engine = Depends(get_engine)) -> VersionInfo:
    return engine.datasets.version(name, version)


@router.post("/datasets/{name}/versions/{version}/freeze", status_code=202)
def freeze(name: str, version: str, engine: Engine = Depends(get_engine)) -> JobInfo:
    v = engine.datasets.version(name, version)  # a missing or frozen version fails here, not in the job
    if v.status == "frozen":
        from opentracy.errors import Conflict

        raise Conflict(f"{v.label} is already frozen")
    return engine.jobs.submit(dataset_jobs.FREEZE, {"dataset": name, "version": v.number})


@router.get("/datasets/{name}/versions/{version}/rows")
def list_rows(
    name: str,
    version: str,
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = None,
    q: str | None = Query(None, description="text search in prompt and response"),
    tag: list[str] = Query([], description="rows whose metadata.tags hold all of these"),
    engine: Engine = Depends(get_engine),
) -> RowPage:
    """Rows in order, a page at a time. Filter on metadata fields with `meta.<field>=<value>`."""
    where = meta_filters(request)
    return engine.datasets.rows(name, version, limit=limit, cursor=cursor, q=q, tags=tag, where=where)


@router.post("/datasets/{name}/versions/{version}/rows", status_code=201)
def add_rows(name: str, version: str, body: RowsAdd, engine: Engine = Depends(get_engine)) -> VersionInfo:
    return engine.datasets.add_rows(name, list(body.rows), version)


@router.patch("/datasets/{name}/versions/{version}/rows")
def update_rows(
    name: str, version: str, body: RowsUpdate, engine: Engine = Depends(get_engine)
) -> dict[str, Any]:
    return {"items": engine.datasets.update_rows(name, body.rows, version)}


@router.post("/datasets/{name}/versions/{version}/rows/delete")
def delete_rows(
    name: str, version: str, body: RowsDelete, engine: Engine = Depends(get_engine)
) -> VersionInfo:
    return engine.datasets.delete_rows(name, body.row_ids, version)


@router.get("/datasets/{name}/versions/{version}/rows/{row_id}")
def get_row(name: str, version: str, row_id: str, engine: Engine = Depends(get_engine)) -> RowOut:
    return engine.datasets.get_row(name, row_id, version)


@router.patch("/datasets/{name}/versions/{version}/rows/{row_id}")
def update_row(
    name: str, version: str, row_id: str, body: RowPatch, engine: Engine = Depends(get_engine)
) -> RowOut:
    return engine.datasets.update_row(
        name, row_id, prompt=body.prompt, response=body.response, metadata=body.metadata, version=version
    )


@router.delete("/datasets/{name}/versions/{version}/rows/{row_id}")
def delete_row(name: str, version: str, row_id: str, engine: Engine = Depends(get_engine)) -> VersionInfo:
    return engine.datasets.delete_rows(name, [row_id], version)


@router.get("/datasets/{name}/diff")
def diff(
    name: str,
    a: str | None = Query(None, description="base version (default: b's parent)"),
    b: str | None = Query(None, description="compared version (default: the latest)"),
    limit: int = Query(1000, ge=0, le=100_000),
    engine: Engine = Depends(get_engine),
) -> DiffResult:
    return engine.datasets.diff(name, a, b, limit=limit)


@router.get("/datasets/{name}/versions/{version}/export")
def export(name: str, version: str, format: str = "jsonl", engine: Engine = Depends(get_engine)) -> Response:
    fmt = check_format(format)
    v = engine.datasets.version(name, version)
    filename = f"{v.label}{EXTENSIONS[fmt]}"
    headers = {
        "Content-Disposition": f'attachment; filename="{filename}"',
        "X-Opentracy-Rows": str(v.row_count),
    }
    if fmt == "parquet":
        tmp = engine.artifacts.scratch_file("export", ".parquet")
        engine.datasets.export(name, v.number, fmt, tmp)
        return FileResponse(
            tmp,
            media_type=MEDIA_TYPES[fmt],
            headers=headers,
            background=BackgroundTask(tmp.unlink, missing_ok=True),
        )
    return StreamingResponse(
        engine.datasets.export_bytes(name, v.number, fmt), media_type=MEDIA_TYPES[fmt], headers=headers
    )
