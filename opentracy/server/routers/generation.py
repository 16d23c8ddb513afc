"""/v1/datasets/{name}/generate, /v1/generation/estimate and …/generation/runs: synthetic datasets.
No logic here: parse, call the core (opentracy.distillation.generation), render.

The prompts file arrives as a multipart part named `file` (streamed to the staging area; its name is only a
label, never a path the server opens), the options as a form field `config` holding a JSON GenerationConfig.
"""

from __future__ import annotations

import json
import secrets
import shutil
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from opentracy.distillation.generation.service import GenerationRunInfo
from opentracy.engine import Engine
from opentracy.errors import InvalidInput
from opentracy.jobs import JobInfo
from opentracy.server import multipart
from opentracy.server.deps import get_engine

router = APIRouter(tags=["generation"])


def _config(fields: dict[str, str]) -> dict[str, Any]:
    raw = (fields.get("config") or "").strip()
    if not raw:
        raise InvalidInput(
            "send the generation options as a form field 'config' (JSON), at least {\"teacher\": ...}"
        )
    try:
        cfg = json.loads(raw)
    except ValueError as e:
        raise InvalidInput(f"form field 'config' is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise InvalidInput("form field 'config' must be a JSON object")
    return cfg


@router.post("/datasets/{name}/generate", status_code=202)
async def generate(name: str, request: Request, engine: Engine = Depends(get_engine)) -> JobInfo:
    """Generate rows for dataset `name` from a prompts file: the teacher answers each prompt `n_samples`
    times, near-duplicates are collapsed, the judge scores the rest, the best are kept. → 202 job, whose
    result is `{"version", "run"}`. The file and the config are checked before the job starts (422 naming
    the line); the job's params hold the cost estimate."""
    engine.datasets.check_name(name)
    slot = engine.settings.staging_dir / f"gen-{secrets.token_hex(8)}"
    try:
        got = await multipart.receive(request, slot)
        cfg = _config(got.fields)
        staged = f"{slot.name}/{got.path.name}"  # type: ignore[union-attr]
        return await run_in_threadpool(
            engine.generation.submit_staged, name, staged, cfg, got.filename or "prompts"
        )
    except BaseException:
        shutil.rmtree(slot, ignore_errors=True)  # a refused request leaves nothing staged
        raise


@router.post("/generation/estimate")
async def estimate(request: Request, engine: Engine = Depends(get_engine)) -> dict[str, Any]:
    """What a generation would cost (prompts × samples × expected tokens × price, teacher and judge),
    without running it. Same multipart body as …/generate."""
    slot = engine.settings.staging_dir / f"est-{secrets.token_hex(8)}"
    try:
        got = await multipart.receive(request, slot)
        cfg = _config(got.fields)
        staged = f"{slot.name}/{got.path.name}"  # type: ignore[union-attr]
        return await run_in_threadpool(
            engine.generation.estimate_staged, staged, cfg, got.filename or "prompts"
        )
    finally:
        shutil.rmtree(slot, ignore_errors=True)


@router.get("/datasets/{name}/generation/runs")
def list_runs(name: str, engine: Engine = Depends(get_engine)) -> dict[str, Any]:
    return {"items": engine.generation.runs(name)}


@router.get("/datasets/{name}/generation/runs/{run_id}")
def get_run(name: str, run_id: str, engine: Engine = Depends(get_engine)) -> GenerationRunInfo:
    """A run with its prompts file (name, sha256), config and report; `latest` for the dataset's last run."""
    return engine.generation.run(name, None if run_id == "latest" else run_id)


@router.get("/datasets/{name}/generation/runs/{run_id}/samples")
def run_samples(
    name: str,
    run_id: str,
    outcome: str | None = Query(None, description="kept or dropped"),
    rule: str | None = Query(None, description="e.g. below_threshold, near_duplicate, teacher_error"),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
    engine: Engine = Depends(get_engine),
) -> dict[str, Any]:
    """Every sample of a run, in order, with its outcome, rule, reason, judge score and cost."""
    return engine.generation.samples(
        name, None if run_id == "latest" else run_id, outcome=outcome, rule=rule, limit=limit, offset=offset
    )
