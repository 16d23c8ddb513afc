"""Dependencies shared by the routers: the engine and the API key check."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Request

from opentracy.engine import Engine
from opentracy.errors import InvalidInput, Unauthorized


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def check_api_key(request: Request) -> None:
    check_api_key_for(request, request.app.state.engine)


def check_api_key_for(request: Request, engine: Engine) -> None:
    key = engine.settings.api_key
    if not key:
        return
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise Unauthorized(
            "this server needs an API key: send it as `Authorization: Bearer <OPENTRACY_API_KEY>`"
        )


def _query_names(dependant: Any) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def meta_filters(request: Request) -> dict[str, str]:
    """The `meta.<field>=<value>` filters of a filtered listing, refusing every query parameter its route does
    not declare: ignored, a misspelled filter (`metadata.team=x`, `models=…`) would quietly match everything —
    and an export or a promotion would then take every row."""
    route = request.scope.get("route")
    known = _query_names(route.dependant) if route is not None and hasattr(route, "dependant") else set()
    meta: dict[str, str] = {}
    for k, v in request.query_params.multi_items():
        if k.startswith("meta.") and len(k) > 5:
            if meta.get(k[5:], v) != v:
                raise InvalidInput(f"{k} is given twice with different values: a row matches one value")
            meta[k[5:]] = v
        elif k not in known:
            field = k.split(".", 1)[1] if "." in k else k
            raise InvalidInput(
                f"unknown query parameter {k!r}: this listing takes {', '.join(sorted(known))}, and "
                f"meta.<field>=<value> for metadata (meta.{field}={v})"
            )
    return meta
