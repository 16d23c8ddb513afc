"""The OpenAI-compatible recording proxy: POST /v1/chat/completions, GET /v1/models (see traces/proxy.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

router = APIRouter(tags=["proxy"])


@router.post("/chat/completions", response_model=None)
async def chat_completions(request: Request) -> Response:
    """OpenAI's chat completions API. `model` may be an alias, `provider/model`, or a bare model name (sent to
    the `openai` endpoint). The answer is the upstream's, byte for byte; the call is recorded as a trace."""
    engine = request.app.state.engine
    return await engine.proxy.chat(await request.body(), request.headers)


@router.get("/models", response_model=None)
async def list_models(request: Request) -> Response:
    """The upstream's models plus every alias."""
    engine = request.app.state.engine
    aliases = await run_in_threadpool(engine.aliases.list)
    return await engine.proxy.models(request.headers, aliases)
