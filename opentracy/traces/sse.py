"""Server-sent events of an OpenAI chat stream: split into events, and assembled into one answer."""

from __future__ import annotations

from typing import Any

import msgspec

_dec = msgspec.json.Decoder().decode


def split_events(buf: bytes) -> tuple[list[bytes], bytes]:
    """Complete events (each with its blank-line terminator) and the incomplete rest of `buf`."""
    out = []
    start = 0
    while True:
        i = buf.find(b"\n\n", start)
        j = buf.find(b"\r\n\r\n", start)
        if i < 0 and j < 0:
            break
        end = j + 4 if j >= 0 and (i < 0 or j < i) else i + 2
        out.append(buf[start:end])
        start = end
    return out, buf[start:]


def event_data(ev: bytes) -> bytes | None:
    """The `data:` payload of one event (several data lines joined), or None."""
    parts = []
    for line in ev.splitlines():
        if line.startswith(b"data:"):
            parts.append(line[5:].lstrip(b" "))
    return b"\n".join(parts) if parts else None


def is_usage_only(ev: bytes) -> bool:
    """The final chunk that `stream_options.include_usage` adds: no choices, a usage object."""
    # Cheap byte tests first: with include_usage every chunk carries "usage" (null); only the last one has
    # an empty choices list.
    if b'"choices":[]' not in ev and b'"choices": []' not in ev:
        return False
    data = event_data(ev)
    if not data or data == b"[DONE]":
        return False
    try:
        d = _dec(data)
    except msgspec.DecodeError:
        return False
    return isinstance(d, dict) and d.get("choices") == [] and isinstance(d.get("usage"), dict)


def assemble(stream: bytes) -> dict[str, Any]:
    """An OpenAI chat.completion built from the chunks of a stream (first choice's content, tool calls,
    finish reason; the usage chunk; the id and model)."""
    events, rest = split_events(stream)
    if rest.strip():
        events.append(rest)
    content: list[str] = []
    role = "assistant"
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    usage = None
    rid = model = None
    for ev in events:
        data = event_data(ev)
        if not data or data == b"[DONE]":
            continue
        try:
            d = _dec(data)
        except msgspec.DecodeError:
            continue
        if not isinstance(d, dict):
            continue
        rid = rid or d.get("id")
        model = model or d.get("model")
        if isinstance(d.get("usage"), dict):
            usage = d["usage"]
        for ch in d.get("choices") or ():
            if not isinstance(ch, dict) or ch.get("index", 0) != 0:
                continue
            delta = ch.get("delta") or {}
            if delta.get("role"):
                role = delta["role"]
            if isinstance(delta.get("content"), str):
                content.append(delta["content"])
            for tc in delta.get("tool_calls") or ():
                k = tc.get("index", 0)
                cur = calls.setdefault(
                    k, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                )
                if tc.get("id"):
                    cur["id"] = tc["id"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    cur["function"]["name"] += fn["name"]
                if fn.get("arguments"):
                    cur["function"]["arguments"] += fn["arguments"]
            if ch.get("finish_reason"):
                finish = ch["finish_reason"]
    msg: dict[str, Any] = {"role": role, "content": "".join(content) if content or not calls else None}
    if calls:
        msg["tool_calls"] = [calls[k] for k in sorted(calls)]
    out: dict[str, Any] = {"choices": [{"index": 0, "message": msg, "finish_reason": finish}]}
    if rid:
        out["id"] = rid
    if model:
        out["model"] = model
    if usage:
        out["usage"] = usage
    return out
