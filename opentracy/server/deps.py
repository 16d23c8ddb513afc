"""Dependencies shared by the routers: the engine and the API key check."""

from __future__ import annotations

import hmac

from fastapi import Request

from opentracy.engine import Engine
from opentracy.errors import Unauthorized


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
