"""Anthropic's Messages API through the official `anthropic` SDK (`pip install 'opentracy[anthropic]'`).

The gateway speaks OpenAI's chat shape; this module translates one call each way:

- messages: `system` / `developer` turns become the top-level `system`; user text and image parts become
  Anthropic content blocks; an assistant's `tool_calls` become `tool_use` blocks and `tool` turns
  `tool_result` blocks;
- parameters: `max_tokens` (or `max_completion_tokens`; default 4096, or the endpoint's `max_tokens`
  option), `temperature`, `top_p`, `stop` (→ `stop_sequences`), `user` (→ `metadata.user_id`), `tools` and
  `tool_choice` in OpenAI's shape; `seed` is dropped (Anthropic has none). Anthropic's own parameters
  (`top_k`, `thinking`, `metadata`, `service_tier`…) pass through. OpenAI-only ones (`logprobs`,
  `frequency_penalty`…) are refused with InvalidInput rather than silently dropped;
- structured output: the gateway's `response_format` (json_schema) becomes a forced tool whose
  `input_schema` is the schema, and the tool's input comes back as the JSON text of the answer, so the
  gateway's validation and repair work unchanged (json_object forces a tool taking any object);
- the answer: text blocks joined, `tool_use` blocks as OpenAI `tool_calls`, stop reasons mapped
  (end_turn/stop_sequence → stop, max_tokens → length, tool_use → tool_calls, refusal → content_filter),
  usage from `input_tokens` (plus cache reads and writes) and `output_tokens`;
- errors: 429 (with `retry-after`), 529 overloaded, 408/409 and 5xx are retryable; other 4xx are not; an
  `error` event in the middle of a stream is mapped by its type.

Non-streaming calls go through the SDK's low-level `post` (its auth, headers, transport and error types,
without building response models); streaming calls through `messages.create(stream=True)`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from opentracy.errors import InvalidInput
from opentracy.llm.providers import Provider
from opentracy.llm.providers.openai_compat import status_error
from opentracy.llm.types import Completion, Endpoint, LLMError, LLMTimeout

_decode = msgspec.json.Decoder().decode

DEFAULT_MAX_TOKENS = 4096
# The forced tool that carries a structured answer.
SCHEMA_TOOL = "json_answer"

_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Anthropic's own request fields, passed through untouched when a caller sets them.
_NATIVE = {
    "top_k",
    "metadata",
    "thinking",
    "service_tier",
    "stop_sequences",
    "cache_control",
    "container",
    "inference_geo",
    "output_config",
    "speed",
}
# OpenAI fields with no Anthropic meaning that are harmless to drop (they change nothing in the answer).
_IGNORED = {"seed", "stream_options", "store", "n"}
# Error types Anthropic sends (also inside a stream, where the HTTP status is still 200).
_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class Anthropic(Provider):
    def __init__(self, endpoint: Endpoint, *, timeout: float) -> None:
        super().__init__(endpoint, timeout=timeout)
        import anthropic

        http: Any = None
        try:
            import httpx2

            n = endpoint.max_in_flight
            limits = httpx2.Limits(max_connections=max(n * 2, 100), max_keepalive_connections=n)
            try:
                http = anthropic.DefaultAioHttpClient(limits=limits)
            except RuntimeError:  # installed without the aiohttp extra
                http = anthropic.DefaultAsyncHttpxClient(limits=limits)
        except (ImportError, AttributeError, TypeError):  # an SDK without these: its own defaults
            http = None
        kw: dict[str, Any] = {}
        if endpoint.api_key:
            kw["api_key"] = endpoint.api_key  # else the SDK's own lookup (ANTHROPIC_AUTH_TOKEN, profiles)
        if endpoint.base_url:
            kw["base_url"] = endpoint.base_url
        if http is not None:
            kw["http_client"] = http
        self.client = anthropic.AsyncAnthropic(
            max_retries=0,  # retries are the gateway's: one policy for every provider
            timeout=timeout,
            **kw,
        )
        self.max_tokens = int(endpoint.options.get("max_tokens") or DEFAULT_MAX_TOKENS)

    async def aclose(self) -> None:
        await self.client.close()

    async def chat(
        self,
        model: str,
        messages: Sequence[dict[str, Any]],
        params: dict[str, Any],
        *,
        timeout: float,
        stream: bool,
        t0: float,
    ) -> Completion:
        import anthropic
        import httpx2

        where = f"{self.endpoint.name}/{model}"
        body, schema_tool = to_request(model, messages, params, self.max_tokens, where)
        try:
            if stream:
                return await self._stream(body, schema_tool, timeout, t0)
            return await self._post(body, schema_tool, timeout, t0)
        except anthropic.APIStatusError as e:
            status = e.status_code
            kind = _error_type(e.body)
            if status < 400:  # an error event inside a 200 stream: its type says what happened
                status = _TYPE_STATUS.get(kind or "", 500)
            detail = f"{kind}: {_err_message(e)}" if kind else _err_message(e)
            raise status_error(where, status, detail, e.response) from None
        except anthropic.APITimeoutError:
            raise LLMTimeout(
                f"{where}: no answer within {timeout:g} s", model=where, retryable=True
            ) from None
        except (anthropic.APIConnectionError, httpx2.TransportError) as e:
            if isinstance(e, httpx2.TimeoutException):  # while reading a stream
                raise LLMTimeout(
                    f"{where}: no answer within {timeout:g} s", model=where, retryable=True
                ) from None
            raise LLMError(f"{where}: cannot reach the provider ({e})", model=where, retryable=True) from None
        except (anthropic.APIResponseValidationError, ValueError, KeyError, TypeError) as e:
            raise LLMError(
                f"{where}: the provider sent a malformed response ({type(e).__name__}: {e})",
                model=where,
                retryable=True,
            ) from None
        except anthropic.AnthropicError as e:  # no credentials, and the like: trying again will not help
            raise LLMError(f"{where}: {e}", model=where, retryable=False) from None

    async def _post(self, body: dict[str, Any], schema_tool: bool, timeout: float, t0: float) -> Completion:
        import httpx2

        r = await self.client.post(
            "/v1/messages", body=body, cast_to=httpx2.Response, options={"timeout": timeout}
        )
        d = _decode(r.content)
        if not isinstance(d, dict) or not isinstance(d.get("content"), list):
            raise ValueError(f"no content list in the answer: {r.content[:200]!r}")
        u = d.get("usage") or {}
        return _completion(
            body["model"],
            d["content"],
            d.get("stop_reason"),
            _input_tokens(u),
            int(u.get("output_tokens") or 0),
            schema_tool,
            time.perf_counter() - t0,
            None,
        )

    async def _stream(self, body: dict[str, Any], schema_tool: bool, timeout: float, t0: float) -> Completion:
        rest = {k: v for k, v in body.items() if k not in ("model", "max_tokens", "messages")}
        s = await self.client.messages.create(
            model=body["model"],
            max_tokens=body["max_tokens"],
            messages=body["messages"],
            stream=True,
            timeout=timeout,
            extra_body=rest,
        )
        blocks: dict[int, dict[str, Any]] = {}
        partial: dict[int, list[str]] = {}
        ttft = None
        stop = None
        tin = tout = 0
        async for ev in s:
            t = ev.type
            if t == "message_start":
                u = ev.message.usage
                tin = _input_tokens(u.model_dump())
                tout = int(u.output_tokens or 0)
            elif t == "content_block_start":
                blocks[ev.index] = ev.content_block.model_dump(exclude_none=True)
                if blocks[ev.index].get("type") == "text":
                    blocks[ev.index]["text"] = ""
            elif t == "content_block_delta":
                d = ev.delta
                if d.type == "text_delta":
                    if ttft is None and d.text:
                        ttft = time.perf_counter() - t0
                    blocks[ev.index]["text"] += d.text
                elif d.type == "input_json_delta":
                    if ttft is None and d.partial_json:
                        ttft = time.perf_counter() - t0
                    partial.setdefault(ev.index, []).append(d.partial_json)
            elif t == "message_delta":
                stop = ev.delta.stop_reason or stop
                if ev.usage is not None and ev.usage.output_tokens is not None:
                    tout = int(ev.usage.output_tokens)
        for i, parts in partial.items():
            raw = "".join(parts)
            blocks[i]["input"] = json.loads(raw) if raw else {}
        content = [blocks[i] for i in sorted(blocks)]
        return _completion(
            body["model"], content, stop, tin, tout, schema_tool, time.perf_counter() - t0, ttft
        )


# --- request --------------------------------------------------------------------------------------


def to_request(
    model: str, messages: Sequence[dict[str, Any]], params: dict[str, Any], default_max: int, where: str
) -> tuple[dict[str, Any], bool]:
    """The Messages API body for an OpenAI-style call, and whether a forced tool carries the answer."""
    p = dict(params)
    system, msgs = to_messages(messages, where)
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": _max_tokens(p, default_max, where),
        "messages": msgs,
    }
    if system:
        body["system"] = system
    for k in ("temperature", "top_p"):
        v = p.pop(k, None)
        if v is not None:
            body[k] = v
    stop = p.pop("stop", None)
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    user = p.pop("user", None)
    if user:
        body["metadata"] = {"user_id": str(user)}
    parallel = p.pop("parallel_tool_calls", None)
    tools = p.pop("tools", None)
    choice = p.pop("tool_choice", None)
    fmt = p.pop("response_format", None)
    schema_tool = False
    if tools:
        body["tools"] = [_tool(t, where) for t in tools]
        tc = _tool_choice(choice, where) if choice is not None else None
        if parallel is False and (tc is None or tc["type"] != "none"):
            tc = {**(tc or {"type": "auto"}), "disable_parallel_tool_use": True}
        if tc is not None:
            body["tool_choice"] = tc
    elif choice not in (None, "none", "auto"):
        raise InvalidInput(f"{where}: tool_choice {choice!r} without tools")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object"):
        if tools:
            raise InvalidInput(f"{where}: structured output (response_format) cannot be combined with tools")
        spec = fmt.get("json_schema") if fmt["type"] == "json_schema" else None
        schema = (spec or {}).get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            schema = {"type": "object"}
        desc = (spec or {}).get("description") if isinstance(spec, dict) else None
        body["tools"] = [
            {
                "name": SCHEMA_TOOL,
                "description": desc or f"Give the answer as {(spec or {}).get('name') or 'a JSON object'}.",
                "input_schema": schema,
            }
        ]
        body["tool_choice"] = {"type": "tool", "name": SCHEMA_TOOL}
        schema_tool = True
    elif fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise InvalidInput(f"{where}: unsupported response_format {fmt!r}")
    for k in _IGNORED:
        p.pop(k, None)
    for k in list(p):
        if k in _NATIVE:
            body[k] = p.pop(k)
    if p:
        raise InvalidInput(
            f"{where}: Anthropic's API has no parameter {', '.join(repr(k) for k in sorted(p))}"
            f" (it takes max_tokens, temperature, top_p, stop, tools, tool_choice, response_format, "
            f"and its own {', '.join(sorted(_NATIVE))})"
        )
    return body, schema_tool


def _max_tokens(p: dict[str, Any], default: int, where: str) -> int:
    v = p.pop("max_tokens", None)
    v2 = p.pop("max_completion_tokens", None)
    v = v if v is not None else v2
    if v is None:
        return default
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise InvalidInput(f"{where}: max_tokens must be a whole number ≥ 1, not {v!r}")
    return v


def to_messages(messages: Sequence[dict[str, Any]], where: str) -> tuple[str, list[dict[str, Any]]]:
    """(system prompt, Anthropic messages) from OpenAI-style messages."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            text = _text(content)
            if text:
                system.append(text)
        elif role == "user":
            out.append({"role": "user", "content": _user_content(content, where, i)})
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            text = _text(content)
            if text:
                blocks.append({"type": "text", "text": text})
            for tc in m.get("tool_calls") or ():
                fn = tc.get("function") or {}
                args = fn.get("arguments") or "{}"
                try:
                    inp = json.loads(args) if isinstance(args, str) else args
                except ValueError:
                    raise InvalidInput(
                        f"{where}: messages[{i}] has tool call arguments that are not JSON"
                    ) from None
                blocks.append({"type": "tool_use", "id": tc.get("id"), "name": fn.get("name"), "input": inp})
            if blocks:
                plain = len(blocks) == 1 and blocks[0]["type"] == "text"
                out.append({"role": "assistant", "content": blocks[0]["text"] if plain else blocks})
        elif role == "tool":
            block = {"type": "tool_result", "tool_use_id": m.get("tool_call_id"), "content": _text(content)}
            if out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list):
                prev = out[-1]["content"]
                if prev and all(b.get("type") == "tool_result" for b in prev):
                    prev.append(block)  # the results of one assistant turn's calls go in one user turn
                    continue
            out.append({"role": "user", "content": [block]})
        else:
            raise InvalidInput(f"{where}: messages[{i}] has an unknown role {role!r}")
    return "\n\n".join(system), out


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return str(content)


def _user_content(content: Any, where: str, i: int) -> Any:
    if not isinstance(content, list):
        return _text(content)
    blocks = []
    for part in content:
        t = part.get("type") if isinstance(part, dict) else None
        if t == "text":
            blocks.append({"type": "text", "text": part.get("text") or ""})
        elif t == "image_url":
            url = (part.get("image_url") or {}).get("url") or ""
            if url.startswith("data:"):
                head, _, data = url.partition(",")
                media = head[5:].split(";")[0] or "image/png"
                blocks.append(
                    {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
                )
            else:
                blocks.append({"type": "image", "source": {"type": "url", "url": url}})
        else:
            raise InvalidInput(
                f"{where}: messages[{i}] has a content part of type {t!r} Anthropic cannot take"
            )
    return blocks


def _tool(t: Any, where: str) -> dict[str, Any]:
    if isinstance(t, dict) and "input_schema" in t:
        return t  # already in Anthropic's shape
    fn = t.get("function") if isinstance(t, dict) else None
    if not isinstance(fn, dict) or not fn.get("name"):
        raise InvalidInput(f"{where}: a tool must be {{'type': 'function', 'function': {{'name', ...}}}}")
    out = {"name": fn["name"], "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}
    if fn.get("description"):
        out["description"] = fn["description"]
    return out


def _tool_choice(choice: Any, where: str) -> dict[str, Any]:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict):
        if choice.get("type") in ("auto", "any", "tool", "none") and "function" not in choice:
            return dict(choice)  # Anthropic's shape
        name = (choice.get("function") or {}).get("name")
        if name:
            return {"type": "tool", "name": name}
    raise InvalidInput(f"{where}: unsupported tool_choice {choice!r}")


# --- answer ---------------------------------------------------------------------------------------


def _input_tokens(u: dict[str, Any]) -> int:
    """Every prompt token: Anthropic counts cache reads and writes apart from `input_tokens`."""
    return sum(
        int(u.get(k) or 0) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )


def _completion(
    model: str,
    content: list[dict[str, Any]],
    stop: str | None,
    tin: int,
    tout: int,
    schema_tool: bool,
    latency: float,
    ttft: float | None,
) -> Completion:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    answer = None
    for b in content:
        t = b.get("type")
        if t == "text":
            texts.append(b.get("text") or "")
        elif t == "tool_use":
            if schema_tool and b.get("name") == SCHEMA_TOOL:
                answer = b.get("input")
                continue
            calls.append(
                {
                    "id": b.get("id"),
                    "type": "function",
                    "function": {
                        "name": b.get("name"),
                        "arguments": json.dumps(b.get("input") or {}, ensure_ascii=False),
                    },
                }
            )
    finish = _STOP_REASONS.get(stop or "", stop)
    if schema_tool:
        # The structured answer is the forced tool's input; with none (a refusal, a cut answer) the text
        # goes back to the gateway, whose validation says what is wrong.
        text = json.dumps(answer, ensure_ascii=False) if answer is not None else "".join(texts)
        if finish == "tool_calls":
            finish = "stop"
    else:
        text = "".join(texts)
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    return Completion(
        model=model,
        content=text,
        finish_reason=finish,
        input_tokens=tin,
        output_tokens=tout,
        cost_usd=None,
        latency_s=latency,
        ttft_s=ttft,
        message=message,
    )


def _error_type(body: Any) -> str | None:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("type"), str):
            return err["type"]
    return None


def _err_message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(getattr(e, "message", e))
