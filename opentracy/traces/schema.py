"""The trace: one LLM call, as it is sent to us (`TraceIn`), stored (a row of `traces`) and served
(`TraceOut`).

A trace sent to `POST /v1/traces`, `Distiller.log_traces` or `opentracy traces import` (our JSONL) is:

    {"model": "openai/gpt-4o",                      # required
     "messages": [{"role": "user", "content": "…"}], # or "request": {"messages": […], "tools": […], "temperature": 0}
     "response": "…",                                # or {"message": {…}}, or a whole OpenAI chat.completion
     "trace_id": "t_…", "started_at": "2026-11-30T12:00:00Z", "ended_at": …, "alias": "…",
     "finish_reason": "stop", "error": null, "status_code": 200,
     "usage": {"input_tokens": 12, "output_tokens": 3}, "cost_usd": 0.0001, "latency_ms": 420, "ttft_ms": 80,
     "tags": ["prod"], "user_id": "…", "session_id": "…", "metadata": {…}}

Unknown top-level fields are refused (put your own data under `metadata`). Secrets are removed before
anything is stored (scrub.py).
"""

from __future__ import annotations

import itertools
import os
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from pydantic import BaseModel

from opentracy.traces.scrub import scrub_message, scrub_obj, scrub_text

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,79}$")
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Top-level request fields that are not parameters of the call.
_NOT_PARAMS = frozenset({"model", "messages", "tools"})

_encode = msgspec.json.Encoder().encode


class TraceIn(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    trace_id: str | None = None
    started_at: datetime | float | None = None
    ended_at: datetime | float | None = None
    provider: str | None = None
    alias: str | None = None
    request: dict[str, Any] | None = None
    messages: list[dict[str, Any]] | None = None
    response: dict[str, Any] | str | None = None
    finish_reason: str | None = None
    error: str | None = None
    status_code: int | None = None
    usage: dict[str, int | None] | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    user_id: str | None = None
    session_id: str | None = None
    tags: list[str] = []
    metadata: dict[str, Any] = {}


class TraceOut(BaseModel):
    trace_id: str
    started_at: datetime
    ended_at: datetime | None = None
    model: str
    provider: str | None = None
    alias: str | None = None
    request: dict[str, Any]
    response: dict[str, Any] | None = None
    finish_reason: str | None = None
    error: str | None = None
    status_code: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    user_id: str | None = None
    session_id: str | None = None
    tags: list[str] = []
    metadata: dict[str, Any] = {}
    source: str


class TracePage(BaseModel):
    items: list[TraceOut]
    next_cursor: str | None = None


class IngestResult(BaseModel):
    inserted: int
    duplicates: int = 0
    trace_ids: list[str] = []
    skipped: int = 0
    skipped_items: list[dict[str, Any]] = []


_PROCESS = os.urandom(3).hex()
_counter = itertools.count(int.from_bytes(os.urandom(3), "big"))


def new_trace_id() -> str:
    """Time-ordered and unique: 12 hex digits of milliseconds, 6 random to this process, 6 of a counter."""
    return f"t_{int(time.time() * 1000):012x}{_PROCESS}{next(_counter) & 0xFFFFFF:06x}"


def _ts(v: datetime | float | None, what: str) -> datetime | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=UTC)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{what} must be an ISO 8601 time or seconds since the epoch")
    x = float(v)
    if x > 1e17:  # nanoseconds (OpenTelemetry)
        x /= 1e9
    elif x > 1e14:  # microseconds
        x /= 1e6
    elif x > 1e11:  # milliseconds
        x /= 1e3
    return datetime.fromtimestamp(x, UTC)


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict):
                t = part.get("text")
                if isinstance(t, str):
                    out.append(t)
        return "\n".join(out)
    return ""


def _check_messages(msgs: Any) -> list[dict[str, Any]]:
    if not isinstance(msgs, list) or not msgs:
        raise ValueError("request.messages must be a non-empty list of chat messages")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be an object with role and content")
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}, not {role!r}")
        c = m.get("content")
        if c is not None and not isinstance(c, str | list):
            raise ValueError(f"messages[{i}].content must be a string, a list of parts or null")
    return msgs


def split_request(req: dict[str, Any]) -> dict[str, Any]:
    """{"messages", "tools"?, "params"} from our request shape or a raw OpenAI chat request."""
    out: dict[str, Any] = {"messages": _check_messages(req.get("messages"))}
    if req.get("tools") is not None:
        out["tools"] = req["tools"]
    params = dict(req.get("params") or {})
    if not isinstance(params, dict):
        raise ValueError("request.params must be an object")
    for k, v in req.items():
        if k not in _NOT_PARAMS and k != "params" and v is not None:
            params[k] = v
    if params:
        out["params"] = params
    return out


def _response(resp: dict[str, Any] | str | None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(stored response {"message", ...}, facts found in it: finish_reason, usage)."""
    if resp is None:
        return None, {}
    if isinstance(resp, str):
        return {"message": {"role": "assistant", "content": resp}}, {}
    if "choices" in resp:  # an OpenAI chat.completion object
        choices = resp.get("choices") or []
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ValueError("response.choices must be a non-empty list")
        first = choices[0]
        msg = first.get("message") or {}
        if not isinstance(msg, dict):
            raise ValueError("response.choices[0].message must be an object")
        out: dict[str, Any] = {"message": msg}
        if resp.get("id"):
            out["id"] = resp["id"]
        if len(choices) > 1:
            out["choices"] = [c.get("message") for c in choices if isinstance(c, dict)]
        u = resp.get("usage") or {}
        facts = {"finish_reason": first.get("finish_reason"), "usage": u if isinstance(u, dict) else {}}
        if resp.get("model"):
            facts["response_model"] = resp["model"]
        return out, facts
    if "message" in resp:
        if not isinstance(resp["message"], dict):
            raise ValueError("response.message must be an object")
        return dict(resp), {}
    if "content" in resp:
        c = resp["content"]
        if c is not None and not isinstance(c, str | list):
            raise ValueError("response.content must be a string")
        return {"message": {"role": "assistant", **resp}}, {}
    raise ValueError(
        "response must be a string, {'message': {...}}, {'content': ...} or an OpenAI chat.completion"
    )


def _tokens(t: TraceIn, facts: dict[str, Any]) -> tuple[int | None, int | None]:
    u = t.usage or facts.get("usage") or {}
    tin = t.input_tokens if t.input_tokens is not None else u.get("input_tokens", u.get("prompt_tokens"))
    tout = (
        t.output_tokens if t.output_tokens is not None else u.get("output_tokens", u.get("completion_tokens"))
    )
    for what, v in (("input_tokens", tin), ("output_tokens", tout)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ValueError(f"{what} must be a non-negative whole number")
    return tin, tout


def to_row(t: TraceIn, *, source: str, now: datetime | None = None, pricing: Any = None) -> dict[str, Any]:
    """The `traces` row for a trace (scrubbed, validated). Raises ValueError with a precise message."""
    model = t.model.strip()
    if not model:
        raise ValueError("model must not be empty")
    if t.trace_id is not None and not ID_RE.match(t.trace_id):
        raise ValueError(f"trace_id {t.trace_id!r}: use letters, digits, '_', '.', ':' or '-' (at most 80)")
    if t.request is not None and t.messages is not None:
        raise ValueError("give either messages or request, not both")
    req = split_request(t.request if t.request is not None else {"messages": t.messages})
    req["messages"] = [scrub_message(m) for m in req["messages"]]
    for k in ("tools", "params"):
        if k in req:
            req[k] = scrub_obj(req[k])
    resp, facts = _response(t.response)
    if resp is not None:
        resp = scrub_obj(resp)
    tin, tout = _tokens(t, facts)
    for what, v in (("cost_usd", t.cost_usd), ("latency_ms", t.latency_ms), ("ttft_ms", t.ttft_ms)):
        if v is not None and v < 0:
            raise ValueError(f"{what} must not be negative")
    for tag in t.tags:
        if not tag or len(tag) > 200:
            raise ValueError("tags must be non-empty strings of at most 200 characters")
    started = _ts(t.started_at, "started_at")
    ended = _ts(t.ended_at, "ended_at")
    now = now or datetime.now(UTC)
    latency = t.latency_ms
    if latency is None and started is not None and ended is not None:
        latency = (ended - started).total_seconds() * 1000
    if started is None:
        started = (ended or now) - timedelta(milliseconds=latency or 0)
    if ended is None and latency is not None:
        ended = started + timedelta(milliseconds=latency)
    provider = t.provider or (model.split("/", 1)[0] if "/" in model else None)
    cost = t.cost_usd
    if cost is None and pricing is not None and tin is not None and tout is not None and "/" in model:
        cost = pricing.cost(model, tin, tout)
    msg = (resp or {}).get("message") or {}
    finish = t.finish_reason or facts.get("finish_reason")
    error = scrub_text(t.error) if t.error else None
    meta = scrub_obj(t.metadata)
    rm = facts.get("response_model")
    if rm and rm != model.split("/", 1)[-1] and "response_model" not in meta:  # e.g. a dated snapshot
        meta["response_model"] = rm
    return {
        "id": t.trace_id or new_trace_id(),
        # an id made here cannot be stored already: the insert skips looking it up
        "_new_id": t.trace_id is None,
        "started_at": started,
        "ended_at": ended,
        "model": model,
        "provider": provider,
        "alias": t.alias,
        "request": _encode(req).decode(),
        "response": _encode(resp).decode() if resp is not None else None,
        "prompt_text": "\n".join(content_text(m.get("content")) for m in req["messages"]),
        "response_text": content_text(msg.get("content")),
        "finish_reason": finish,
        "is_error": bool(error) or (t.status_code is not None and t.status_code >= 400),
        "error": error,
        "status_code": t.status_code,
        "input_tokens": tin,
        "output_tokens": tout,
        "cost_usd": cost,
        "latency_ms": latency,
        "ttft_ms": t.ttft_ms,
        "user_id": t.user_id,
        "session_id": t.session_id,
        "tags": list(dict.fromkeys(t.tags)),
        "metadata": meta,
        "source": source,
        "created_at": now,
    }
