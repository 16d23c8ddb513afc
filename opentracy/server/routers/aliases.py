"""/v1/aliases: named pointers to models, with their history. No logic here: parse, call, render."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel

from opentracy.engine import Engine
from opentracy.llm.aliases import AliasInfo
from opentracy.server.deps import get_engine

router = APIRouter(tags=["aliases"])


class AliasSet(BaseModel):
    target: str
    reason: str | None = None
    by: str | None = None


@router.get("/aliases")
def list_aliases(engine: Engine = Depends(get_engine)) -> dict[str, Any]:
    return {"items": engine.aliases.list()}


@router.get("/aliases/{name}/history")
def alias_history(name: str, engine: Engine = Depends(get_engine)) -> dict[str, Any]:
    """Every change of the name, oldest first; still there after the alias is deleted."""
    return {"items": engine.aliases.history(name)}


# `{name:path}`: a name with a "/" (never valid) reaches the service, which says why, instead of a bare 404.
@router.get("/aliases/{name:path}")
def get_alias(name: str, engine: Engine = Depends(get_engine)) -> AliasInfo:
    """The alias, the model string it resolves to, and its history (oldest first)."""
    return engine.aliases.get(name)


@router.put("/aliases/{name:path}")
def set_alias(name: str, body: AliasSet, engine: Engine = Depends(get_engine)) -> AliasInfo:
    """Create the alias or repoint it; the change is recorded in its history."""
    engine.aliases.set(name, body.target, by=body.by, reason=body.reason)
    return engine.aliases.get(name)


@router.delete("/aliases/{name:path}", status_code=204)
def delete_alias(
    name: str, reason: str | None = None, by: str | None = None, engine: Engine = Depends(get_engine)
) -> Response:
    engine.aliases.delete(name, by=by, reason=reason)
    return Response(status_code=204)
