"""The OpenAI-compatible recording proxy: `POST /v1/chat/completions` and `GET /v1/models` on our server.

A request is forwarded through the gateway's routing (its `model` may be an alias, a `provider/model`
string, or a bare model name, which goes to the `openai` endpoint, i.e. OPENAI_BASE_URL), and the caller
gets back exactly what the upstream sent: status code, body bytes, and for streams the chunks as they come.
The trace is recorded off the response path by the trace writer (the body is parsed, priced and stored in
its thread), so the proxy adds no database time to a call.

For OpenAI-compatible upstreams the bytes pass through untouched, with one exception: a streaming request
that did not ask for `stream_options.include_usage` gets it added, so that the trace has token counts and
a cost, and the usage-only chunk this adds is removed from what the caller receives. Models of other kinds
(anthropic/…, local/…, reached through an alias) are called through the gateway and answered in OpenAI's
shape.

Headers the caller may add to label a trace (they are not forwarded): `X-Opentracy-Tags: a,b`,
`X-Opentracy-User`, `X-Opentracy-Session`, `X-Opentracy-Metadata: {"json": "object"}`.
Upstream credentials: the endpoint's configured key (OPENAI_API_KEY…); when none is configured, the
caller's own bearer token is passed on (unless it is this server's OPENTRACY_API_KEY). No header is stored.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.responses import Response, StreamingResponse

from opentracy.errors import InvalidInput, NotFound, OpentracyError
from opentracy.llm.gateway import Gateway, split_model
from opentracy.llm.types import Endpoint, LLMError
from opentracy.traces.schema import TraceIn, to_row
from opentracy.traces.sse import assemble, is_usage_only, split_events
from opentracy.traces.writer import TraceWriter

_dec = msgspec.json.Decoder().decode
_enc = msgspec.json.Encoder().encode

OPENAI_DEFAULT = "https://api.openai.com/v1"
# Upstream response headers passed back to the caller.
PASS_HEADERS = ("x-request-id", "retry-after", "retry-after-ms", "openai-processing-ms", "openai-version")
PASS_PREFIXES = ("x-ratelimit-",)
# Caller headers forwarded upstream (never stored).
FORWARD_HEADERS = ("openai-organization", "openai-project", "openai-beta")


def openai_error(
    status: int, message: str, typ: str = "invalid_request_error", code: str | None = None
) -> Response:
    body = {"error": {"message": message, "type": typ, "param": None, "code": code}}
    return Response(_enc(body), status_code=status, media_type="application/json")


class Route(msgspec.Struct):
    resolved: str  # provider/model as recorded
    alias: str | None
    endpoint: Endpoint
    name: str  # the model name sent upstream


class RecordingProxy:
    def __init__(
        self,
        gateway: Gateway,
        writer: TraceWriter,
        *,
        pricing: Any = None,
        server_api_key: str | None = None,
        alias_ttl_s: float = 2.0,
        timeout_s: float = 600.0,
    ) -> None:
        self.gateway = gateway
        self.writer = writer
        self.pricing = pricing
        self.server_api_key = server_api_key
        self.alias_ttl_s = alias_ttl_s
        self.timeout_s = timeout_s
        self._routes: dict[str, tuple[float, Route]] = {}
        self._sessions: dict[int, Any] = {}

    # -- plumbing ------------------------------------------------------------------------------------
    def _session(self) -> Any:
        import aiohttp

        loop = asyncio.get_running_loop()
        s = self._sessions.get(id(loop))
        if s is None or s.closed:
            s = self._sessions[id(loop)] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=30),
                auto_decompress=False,  # bytes pass through as the upstream sent them
            )
        return s

    async def aclose(self) -> None:
        s = self._sessions.pop(id(asyncio.get_running_loop()), None)
        if s is not None:
            await s.close()

    def route(self, model: str) -> Route:
        """Where `model` goes: alias → model string; `provider/model` of a configured provider; anything else
        (a bare name, or `org/model` of no known provider) → the `openai` endpoint with the name as given."""
        now = time.monotonic()
        hit = self._routes.get(model)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            resolved, alias = self.gateway.resolve(model)
        except NotFound:
            resolved, alias = model, None
        eps = self.gateway.endpoints
        provider, _, name = resolved.partition("/")
        if name and provider in eps:
            r = Route(resolved, alias, eps[provider], name)
        else:
            r = Route(f"openai/{resolved}", alias, eps["openai"], resolved)
        if len(self._routes) > 10_000:
            self._routes.clear()
        self._routes[model] = (now + self.alias_ttl_s, r)
        return r

    def _upstream_headers(self, ep: Endpoint, headers: Mapping[str, str]) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        key = ep.api_key
        if not key:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            token = token.strip()
            if scheme.lower() == "bearer" and token and token != self.server_api_key:
                key = token
        if key:
            h["Authorization"] = f"Bearer {key}"
        for name in FORWARD_HEADERS:
            v = headers.get(name)
            if v:
                h[name] = v
        return h

    @staticmethod
    def _labels(headers: Mapping[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        tags = headers.get("x-opentracy-tags")
        if tags:
            out["tags"] = [t.strip() for t in tags.split(",") if t.strip()]
        if headers.get("x-opentracy-user"):
            out["user_id"] = headers["x-opentracy-user"]
        if headers.get("x-opentracy-session"):
            out["session_id"] = headers["x-opentracy-session"]
        raw = headers.get("x-opentracy-metadata")
        if raw:
            try:
                meta = json.loads(raw)
            except ValueError:
                raise InvalidInput("X-Opentracy-Metadata must be a JSON object") from None
            if not isinstance(meta, dict):
                raise InvalidInput("X-Opentracy-Metadata must be a JSON object")
            out["metadata"] = meta
        return out

    # -- the recorded row, built in the writer's thread ----------------------------------------------
    def _record(
        self,
        route: Route,
        body: dict[str, Any],
        labels: dict[str, Any],
        started: datetime,
        latency_s: float,
        *,
        status: int | None = None,
        raw: bytes | None = None,
        stream: bool = False,
        ttft_s: float | None = None,
        error: str | None = None,
        completion: dict[str, Any] | None = None,
    ) -> None:
        def build() -> dict[str, Any] | None:
            resp: dict[str, Any] | None = completion
            err = error
            if resp is None and raw is not None and status is not None:
                if status >= 400:
                    err = err or _error_text(raw, status)
                else:
                    try:
                        resp = assemble(raw) if stream else _dec(raw)
                    except msgspec.DecodeError:
                        err = err or f"the upstream answered {status} with a body that is not JSON"
            if isinstance(resp, dict) and "choices" not in resp:
                resp = None
            req = {k: v for k, v in body.items() if k != "model"}
            params = dict(
                model=route.resolved,
                alias=route.alias,
                request=req,
                response=resp,
                started_at=started,
                latency_ms=latency_s * 1000,
                ttft_ms=ttft_s * 1000 if ttft_s is not None else None,
                status_code=status,
                error=err,
                **labels,
            )
            try:
                t = msgspec.convert(params, TraceIn, from_attributes=False)
                return to_row(t, source="proxy", pricing=self.pricing)
            except (ValueError, msgspec.ValidationError) as e:
                # A request the upstream refused may not even be a valid chat request: keep what we can.
                params["request"] = {
                    "messages": [{"role": "user", "content": ""}],
                    "params": _safe_params(req),
                }
                params["response"] = None
                params["error"] = err or f"invalid request: {e}"
                t = msgspec.convert(params, TraceIn)
                return to_row(t, source="proxy", pricing=self.pricing)

        self.writer.put(build)

    # -- POST /v1/chat/completions -------------------------------------------------------------------
    async def chat(self, raw: bytes, headers: Mapping[str, str]) -> Response:
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        try:
            body = _dec(raw)
        except msgspec.DecodeError as e:
            return openai_error(400, f"the request body is not valid JSON: {e}")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
            return openai_error(400, "the request needs a `model` (a model name, provider/model or an alias)")
        try:
            labels = self._labels(headers)
            route = self.route(body["model"])
        except OpentracyError as e:
            return openai_error(e.status_code if e.status_code < 500 else 400, e.message)
        if route.endpoint.kind != "openai":
            return await self._via_gateway(route, body, labels, started, t0)
        stream = body.get("stream") is True
        strip_usage = False
        out = body
        if route.name != body["model"]:
            out = {**body, "model": route.name}
        if stream:
            opts = body.get("stream_options")
            if not (isinstance(opts, dict) and opts.get("include_usage")):
                out = {
                    **out,
                    "stream_options": {**(opts if isinstance(opts, dict) else {}), "include_usage": True},
                }
                strip_usage = True
        payload = raw if out is body else _enc(out)
        base = (route.endpoint.base_url or OPENAI_DEFAULT).rstrip("/")
        h = self._upstream_headers(route.endpoint, headers)
        try:
            resp = await self._session().post(f"{base}/chat/completions", data=payload, headers=h)
        except Exception as e:  # connection refused, DNS, timeout before headers
            msg = f"cannot reach the upstream for {route.resolved}: {type(e).__name__}: {e}"
            self._record(route, body, labels, started, time.perf_counter() - t0, status=502, error=msg)
            return openai_error(502, msg, "upstream_error", "upstream_unreachable")
        passed = _pass_headers(resp.headers)
        ctype = resp.headers.get("Content-Type", "application/json")
        if not stream or resp.status >= 400 or "text/event-stream" not in ctype:
            try:
                data = await resp.read()
            except Exception as e:
                resp.release()
                msg = f"the upstream connection broke for {route.resolved}: {type(e).__name__}: {e}"
                self._record(route, body, labels, started, time.perf_counter() - t0, status=502, error=msg)
                return openai_error(502, msg, "upstream_error")
            resp.release()
            self._record(
                route,
                body,
                labels,
                started,
                time.perf_counter() - t0,
                status=resp.status,
                raw=data,
                stream=stream,
            )
            return Response(data, status_code=resp.status, headers={**passed, "content-type": ctype})
        return StreamingResponse(
            self._relay(resp, route, body, labels, started, t0, strip_usage),
            status_code=resp.status,
            headers={**passed, "content-type": ctype, "cache-control": "no-cache"},
        )

    async def _relay(
        self,
        resp: Any,
        route: Route,
        body: dict[str, Any],
        labels: dict[str, Any],
        started: datetime,
        t0: float,
        strip_usage: bool,
    ) -> AsyncIterator[bytes]:
        chunks: list[bytes] = []
        ttft = None
        buf = b""
        error = None
        try:
            async for data in resp.content.iter_any():
                if ttft is None:
                    ttft = time.perf_counter() - t0
                chunks.append(data)
                if not strip_usage:
                    yield data
                    continue
                buf += data
                events, buf = split_events(buf)
                out = b"".join(ev for ev in events if not is_usage_only(ev))
                if out:
                    yield out
            if buf:
                yield buf
        except asyncio.CancelledError:
            error = "the caller disconnected before the stream ended"
            raise
        except Exception as e:
            error = f"the upstream stream broke: {type(e).__name__}: {e}"
            raise
        finally:
            resp.release()
            self._record(
                route,
                body,
                labels,
                started,
                time.perf_counter() - t0,
                status=resp.status,
                raw=b"".join(chunks),
                stream=True,
                ttft_s=ttft,
                error=error,
            )

    async def _via_gateway(
        self, route: Route, body: dict[str, Any], labels: dict[str, Any], started: datetime, t0: float
    ) -> Response:
        """A model that does not speak OpenAI's API (anthropic/…, local/…): call it through the gateway and
        answer in OpenAI's shape."""
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            return openai_error(400, "`messages` must be a non-empty list")
        params = {k: v for k, v in body.items() if k not in ("model", "messages", "stream", "stream_options")}
        stream = body.get("stream") is True
        try:
            c = await self.gateway.complete(
                route.resolved, msgs, params=params, use_cache=False, max_retries=0, record=False
            )
        except LLMError as e:
            status = e.status or 502
            self._record(
                route, body, labels, started, time.perf_counter() - t0, status=status, error=e.message
            )
            return openai_error(status, e.message, "upstream_error")
        except OpentracyError as e:
            self._record(
                route, body, labels, started, time.perf_counter() - t0, status=e.status_code, error=e.message
            )
            return openai_error(e.status_code, e.message)
        rid = f"chatcmpl-{started.timestamp():.0f}{id(c) & 0xFFFFFF:06x}"
        msg = c.message or {"role": "assistant", "content": c.content}
        completion = {
            "id": rid,
            "object": "chat.completion",
            "created": int(started.timestamp()),
            "model": route.name,
            "choices": [{"index": 0, "message": msg, "finish_reason": c.finish_reason or "stop"}],
            "usage": {
                "prompt_tokens": c.input_tokens,
                "completion_tokens": c.output_tokens,
                "total_tokens": c.input_tokens + c.output_tokens,
            },
        }
        self._record(
            route, body, labels, started, time.perf_counter() - t0, status=200, completion=completion
        )
        if not stream:
            return Response(_enc(completion), media_type="application/json")
        head = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": completion["created"],
            "model": route.name,
        }
        events = [
            {
                **head,
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": c.content}, "finish_reason": None}
                ],
            },
            {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": c.finish_reason or "stop"}]},
        ]
        if isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage"):
            events.append({**head, "choices": [], "usage": completion["usage"]})
        data = b"".join(b"data: " + _enc(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        return Response(data, media_type="text/event-stream")

    # -- GET /v1/models ------------------------------------------------------------------------------
    async def models(self, headers: Mapping[str, str], aliases: list[Any]) -> Response:
        """The `openai` endpoint's models (when it answers), plus every alias as a model id."""
        ep = self.gateway.endpoints["openai"]
        data: list[dict[str, Any]] = []
        base = (ep.base_url or OPENAI_DEFAULT).rstrip("/")
        try:
            async with self._session().get(
                f"{base}/models", headers=self._upstream_headers(ep, headers), timeout=_short_timeout()
            ) as r:
                if r.status == 200:
                    got = _dec(await r.read())
                    if isinstance(got, dict) and isinstance(got.get("data"), list):
                        data = list(got["data"])
        except Exception:
            pass  # no upstream listing: the aliases still are models
        for a in aliases:
            data.append(
                {
                    "id": a.name,
                    "object": "model",
                    "created": int(a.created_at.timestamp()),
                    "owned_by": f"alias → {a.target}",
                }
            )
        return Response(_enc({"object": "list", "data": data}), media_type="application/json")


def _short_timeout() -> Any:
    import aiohttp

    return aiohttp.ClientTimeout(total=10)


def _pass_headers(h: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for k, v in h.items():
        lk = k.lower()
        if lk in PASS_HEADERS or lk.startswith(PASS_PREFIXES):
            out[lk] = v
    return out


def _error_text(raw: bytes, status: int) -> str:
    try:
        d = _dec(raw)
        if isinstance(d, dict):
            e = d.get("error", d)
            if isinstance(e, dict) and e.get("message"):
                return f"HTTP {status}: {e['message']}"
            if isinstance(e, str):
                return f"HTTP {status}: {e}"
    except msgspec.DecodeError:
        pass
    text = raw[:300].decode("utf-8", "replace").strip()
    return f"HTTP {status}" + (f": {text}" if text else "")


def _safe_params(req: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in req.items() if k != "messages" and isinstance(v, str | int | float | bool)}


__all__ = ["RecordingProxy", "split_model"]
