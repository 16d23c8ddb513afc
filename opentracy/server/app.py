"""The FastAPI application: one router per resource, one JSON error shape, optional bearer-token auth."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

import opentracy
from opentracy.config import Settings
from opentracy.engine import Engine
from opentracy.errors import OpentracyError, Unauthorized
from opentracy.server.deps import check_api_key, check_api_key_for


def error_body(code: str, message: str, details: dict | None = None) -> dict:
    err: dict = {"code": code, "message": message}
    if details:
        err["details"] = details
    return {"error": err}


class ApiKeyAuth:
    """Every request but /health needs `Authorization: Bearer <OPENTRACY_API_KEY>` when a key is set. Plain
    ASGI (not BaseHTTPMiddleware), so streamed answers of the proxy pass through untouched and cheaply."""

    def __init__(self, app: ASGIApp, engine: Engine) -> None:
        self.app = app
        self.engine = engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.engine.settings.api_key and scope["path"] != "/health":
            request = Request(scope)
            try:
                check_api_key_for(request, self.engine)
            except Unauthorized as e:
                resp = JSONResponse(
                    error_body(e.code, e.message), status_code=401, headers={"WWW-Authenticate": "Bearer"}
                )
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


_heap_frozen = False


def _freeze_heap() -> None:
    """Once per process, for a server of its own: move what start-up built (modules, schemas, models) out
    of the garbage collector's view. Full collections then scan only what requests create; under trace
    ingest they had taken ~15% of the time (bench/traces.py). Once only: objects frozen are never collected
    as cycles, so freezing again (apps made over and over in one process) would keep their garbage."""
    global _heap_frozen
    _heap_frozen = True
    gc.collect()
    gc.freeze()


def create_app(engine: Engine | None = None, settings: Settings | None = None) -> FastAPI:
    """Build the app. With no engine given, one is made from settings (or the environment) at startup."""
    own = engine is None
    eng = engine or Engine(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        eng.start()
        if own and not _heap_frozen:
            _freeze_heap()
        yield
        if eng._proxy is not None:
            await eng.proxy.aclose()
        if own:
            eng.close()

    app = FastAPI(
        title="opentracy",
        version=opentracy.__version__,
        description="Turn LLM traffic into training data and cheaper models.",
        lifespan=lifespan,
    )
    app.state.engine = eng

    app.add_middleware(ApiKeyAuth, engine=eng)

    @app.exception_handler(OpentracyError)
    async def domain_error(_: Request, e: OpentracyError) -> JSONResponse:
        return JSONResponse(error_body(e.code, e.message, e.details), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        problems = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            problems.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return JSONResponse(
            error_body("invalid_input", "; ".join(problems) or "invalid request", {"errors": problems}),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return JSONResponse(error_body(code, str(e.detail)), status_code=e.status_code)

    @app.get("/health", tags=["meta"])
    def health() -> dict:
        return {"status": "ok", "version": opentracy.__version__}

    from opentracy.server.routers import aliases, datasets, jobs, proxy, traces

    # The proxy first: its routes are the hot path, and routes are matched in order. Its key check is the
    # ApiKeyAuth middleware alone (a per-route dependency costs ~0.3 ms a call).
    app.include_router(proxy.router, prefix="/v1")
    app.include_router(datasets.router, prefix="/v1", dependencies=[Depends(check_api_key)])
    app.include_router(jobs.router, prefix="/v1", dependencies=[Depends(check_api_key)])
    app.include_router(aliases.router, prefix="/v1", dependencies=[Depends(check_api_key)])
    app.include_router(traces.router, prefix="/v1", dependencies=[Depends(check_api_key)])

    from opentracy.server.routers import local_models

    app.include_router(local_models.router, prefix="/v1", dependencies=[Depends(check_api_key)])

    # curation: runs and the review queue
    from opentracy.server.routers import curation

    app.include_router(curation.router, prefix="/v1", dependencies=[Depends(check_api_key)])

    # synthetic generation (issue 7)
    from opentracy.server.routers import generation

    app.include_router(generation.router, prefix="/v1", dependencies=[Depends(check_api_key)])
    # clusters: runs over traces, clusters, assign, promote (issue 6)
    from opentracy.server.routers import clusters

    app.include_router(clusters.router, prefix="/v1", dependencies=[Depends(check_api_key)])
    return app
