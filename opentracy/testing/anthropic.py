"""The mock's Anthropic face: `POST /v1/messages` in the shape of Anthropic's Messages API.

Pure functions of the request, like the OpenAI routes: a text answer derived from the request (cut at
`max_tokens` and `stop_sequences`, with the matching `stop_reason`), a valid instance of the tool's
`input_schema` when `tool_choice` forces a tool (`{"type": "tool", "name"}` or `{"type": "any"}`), usage
counted with the same estimate as the chat route (the system prompt counts as one more message), and
streaming as Anthropic's named SSE events (`message_start`, `content_block_*`, `message_delta`,
`message_stop`). Scripted replies (`Reply`) work here too: `content`, `tool_calls` (become `tool_use`
blocks), `finish_reason` (OpenAI's names are mapped: stop → end_turn, length → max_tokens, tool_calls →
tool_use; Anthropic's own pass through), `usage` (`input_tokens`/`output_tokens`, or OpenAI's names),
errors in Anthropic's error shape, latency, hangs and malformed bodies.

Anthropic has no `seed`: two requests that differ only in what the gateway calls the sample index get the
same answer here, as they would at temperature 0 upstream.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

import msgspec

from opentracy.testing import answers as A

_ENC = msgspec.json.Encoder(order="sorted")
_encode = msgspec.json.encode
_PIECE = re.compile(r"\s*\S+")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_MESSAGES = {
    429: "Number of request tokens has exceeded your per-minute rate limit (mock).",
    500: "Internal server error (mock).",
    529: "Overloaded (mock).",
}
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


class BadRequest(Exception):
    """A request the real API would refuse with 400 invalid_request_error."""


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """Anthropic's error shape for `status`."""
    typ = ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    msg = message or _MESSAGES.get(status) or f"mock error {status}"
    return {"type": "error", "error": {"type": typ, "message": msg}}


def system_text(system: Any) -> str:
    """The text of `system`: a string or a list of text blocks."""
    return A.content_text(system)


def input_tokens(body: dict[str, Any]) -> int:
    """What the mock charges for a request: the chat route's count of `messages`, plus 4 + the system
    prompt's tokens when there is one."""
    n = A.prompt_tokens(body.get("messages"))
    sys_text = system_text(body.get("system"))
    if sys_text:
        n += 4 + A.estimate_tokens(sys_text)
    return n


def output_tokens(blocks: list[dict[str, Any]]) -> int:
    """Text tokens plus, per tool_use block, those of 'name input-json'."""
    n = 0
    for b in blocks:
        if b["type"] == "text":
            n += A.estimate_tokens(b["text"])
        elif b["type"] == "tool_use":
            n += A.estimate_tokens(f"{b['name']} {_encode(b['input']).decode()}")
    return n


def request_seed(body: dict[str, Any]) -> int:
    key = _ENC.encode(
        [
            body.get("model"),
            body.get("system"),
            body.get("messages"),
            body.get("tools"),
            body.get("tool_choice"),
        ]
    )
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def forced_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The custom tool `tool_choice` forces ({"type": "tool", "name"} or {"type": "any"}), else None."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not isinstance(choice, dict):
        return None
    custom = [t for t in tools if isinstance(t, dict) and "input_schema" in t]
    if choice.get("type") == "any":
        return custom[0] if custom else None
    if choice.get("type") == "tool":
        tool = next((t for t in custom if t.get("name") == choice.get("name")), None)
        if tool is None:
            raise BadRequest(f"tool_choice names a tool that is not in tools: {choice.get('name')!r}")
        return tool
    return None


def _cut(text: str, max_tokens: int, stops: list[str]) -> tuple[str, str, str | None]:
    """(text, stop_reason, stop_sequence) for a default answer under max_tokens and stop_sequences."""
    hit = None
    for s in stops:
        i = text.find(s) if s else -1
        if i >= 0 and (hit is None or i < hit[0]):
            hit = (i, s)
    if hit is not None:
        text = text[: hit[0]]
    words = text.split(" ")
    if A.estimate_tokens(text) > max_tokens:
        while words and A.estimate_tokens(" ".join(words)) > max_tokens:
            words.pop()
        return " ".join(words), "max_tokens", None
    if hit is not None:
        return text, "stop_sequence", hit[1]
    return text, "end_turn", None


def _tool_block(name: str, args: Any, block_id: str) -> dict[str, Any]:
    if isinstance(args, str):
        try:
            args = msgspec.json.decode(args) if args else {}
        except msgspec.DecodeError as e:
            raise BadRequest(f"mock script: tool call arguments are not JSON: {e}") from None
    return {"type": "tool_use", "id": block_id, "name": name, "input": args}


def answer(body: Any, reply: Any, msg_id: str) -> tuple[dict[str, Any], list[bytes] | None]:
    """The Message for a request (and its SSE events when `stream` is set). Raises BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: Field required (a non-empty list of messages).")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest("max_tokens: Field required (an integer of at least 1).")
    stops = body.get("stop_sequences") or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise BadRequest("stop_sequences: Input should be a list of strings")
    model = body.get("model") or "claude-mock"
    rng = random.Random(request_seed(body))
    stop_sequence = None
    if reply is not None and (reply.content is not None or reply.tool_calls is not None):
        blocks: list[dict[str, Any]] = []
        if reply.content:
            blocks.append({"type": "text", "text": reply.content})
        try:
            calls = A.normalize_tool_calls(reply.tool_calls or [])
        except ValueError as e:
            raise BadRequest(f"mock script: {e}") from None
        for k, tc in enumerate(calls):
            fn = tc["function"]
            blocks.append(_tool_block(fn["name"], fn["arguments"], f"toolu_mock{k:02d}"))
        stop = _STOP.get(reply.finish_reason, reply.finish_reason)
        if stop == "end_turn" and calls:
            stop = "tool_use"
    else:
        forced = forced_tool(body)
        if forced is not None:
            try:
                args = A.schema_instance(forced.get("input_schema") or {"type": "object"}, rng)
            except (ValueError, KeyError, TypeError, IndexError) as e:
                raise BadRequest(f"tools: invalid input_schema: {e}") from None
            blocks = [_tool_block(forced.get("name", "tool"), args, f"toolu_{rng.getrandbits(64):016x}")]
            stop = "tool_use"
        else:
            text, stop, stop_sequence = _cut(A.answer_text(rng), max_tokens, stops)
            blocks = [{"type": "text", "text": text}]
        if reply is not None and reply.finish_reason != "stop":
            stop = _STOP.get(reply.finish_reason, reply.finish_reason)
    usage = {
        "input_tokens": input_tokens(body),
        "output_tokens": output_tokens(blocks),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    if reply is not None and reply.usage:
        u = reply.usage
        if "prompt_tokens" in u:
            usage["input_tokens"] = u["prompt_tokens"]
        if "completion_tokens" in u:
            usage["output_tokens"] = u["completion_tokens"]
        usage.update({k: v for k, v in u.items() if k in usage})
    message = {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": stop_sequence,
        "usage": usage,
    }
    return message, stream_events(message) if body.get("stream") else None


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encode(data) + b"\n\n"


def stream_events(message: dict[str, Any]) -> list[bytes]:
    """Anthropic's SSE events for a finished message: text in word-sized deltas, tool input in two."""
    usage = message["usage"]
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    events = [_event("message_start", {"type": "message_start", "message": start})]
    events.append(_event("ping", {"type": "ping"}))
    for i, b in enumerate(message["content"]):
        if b["type"] == "text":
            events.append(
                _event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": i,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
            text = b["text"]
            pieces = _PIECE.findall(text) if text else []
            rest = text[sum(map(len, pieces)) :]
            if rest:
                pieces.append(rest)
            for p in pieces:
                delta = {"type": "text_delta", "text": p}
                events.append(
                    _event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta})
                )
        else:
            head = {"type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}
            events.append(
                _event(
                    "content_block_start", {"type": "content_block_start", "index": i, "content_block": head}
                )
            )
            js = _encode(b["input"]).decode()
            half = len(js) // 2
            for part in (js[:half], js[half:]):
                delta = {"type": "input_json_delta", "partial_json": part}
                events.append(
                    _event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta})
                )
        events.append(_event("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    events.append(_event("message_stop", {"type": "message_stop"}))
    return events


def malformed(stream: bool) -> bytes:
    """A 200 body that is not a valid answer: cut JSON, or a stream whose first event is cut."""
    if stream:
        return b'event: message_start\ndata: {"type": "message_start", "message": {"id": \n\n'
    return b'{"id": "msg_mock", "type": "message", "content": [{"type": "text", '
