"""/v1/local-models: the models `local/<name>` runs in-process (opentracy.llm.local_models). No logic here."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel

from opentracy.engine import Engine
from opentracy.llm.local_models import LocalModel
from opentracy.server.deps import get_engine

router = APIRouter(tags=["local-models"])


class LocalModelRegister(BaseModel):
    name: str
    base_model: str  # a path on the server's machine (or a Hub id in its local cache)
    adapter: str | None = None
    chat_template: str | None = None
    generation: dict[str, Any] | None = None
    input_price: float = 0.0
    output_price: float = 0.0
    description: str = ""
    meta: dict[str, Any] | None = None


@router.get("/local-models")
def list_local_models(engine: Engine = Depends(get_engine)) -> dict[str, Any]:
    """Registered models and those named in OPENTRACY_LOCAL_MODELS (`source` says which)."""
    return {"items": engine.local_models.list()}


@router.post("/local-models", status_code=201)
def register_local_model(body: LocalModelRegister, engine: Engine = Depends(get_engine)) -> LocalModel:
    return engine.local_models.register(**body.model_dump())


@router.get("/local-models/{name:path}")
def get_local_model(name: str, engine: Engine = Depends(get_engine)) -> LocalModel:
    """By name or id (m_…)."""
    return engine.local_models.get(name)


@router.delete("/local-models/{name:path}", status_code=204)
def delete_local_model(name: str, engine: Engine = Depends(get_engine)) -> Response:
    """Forget a registered model (its files stay where they are)."""
    engine.local_models.delete(name)
    return Response(status_code=204)
