"""`opentracy traces import FILE`: traces from files, all or nothing.

Formats (`fmt="auto"` tells them apart line by line):
- **opentracy** — our JSONL, one trace per line (schema.py), as `opentracy traces export` writes it.
- **openai** — OpenAI-style request/response logs, as a logging middleware writes them: one JSON object a
  line with `request` (a chat completions request) and `response` (a chat.completion object), plus optional
  `started_at`/`timestamp`, `latency_ms`, `error`, `status_code`, `tags`, `metadata`, `user_id`,
  `session_id`. Also OpenAI **Batch API** files: the lines of the batch input file
  (`{"custom_id", "method", "url", "body"}`) and of its output file (`{"custom_id", "response":
  {"status_code", "body"}, "error"}`) in one file (`cat input.jsonl output.jsonl`), joined by `custom_id`.
- **otel** — OpenTelemetry spans exported as JSON (OTLP/JSON: `{"resourceSpans": [...]}`, one document a
  line as the collector's file exporter writes, or one document for the whole file); spans carrying
  `gen_ai.*` attributes (the GenAI semantic conventions: `gen_ai.request.model`, `gen_ai.provider.name` /
  `gen_ai.system`, `gen_ai.input.messages` / `gen_ai.output.messages`, or the older indexed
  `gen_ai.prompt.N.*` / `gen_ai.completion.N.*` attributes and message events, `gen_ai.usage.*`,
  `gen_ai.response.finish_reasons`) become traces; other spans are counted and left out.

Files may come compressed (gzip, bz2, xz; told by their first bytes, whatever their names).

A bad line is an error naming the file and the line, and nothing is imported, unless `on_error="skip"`, in
which case the bad lines are skipped and listed in the result.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
from pydantic import BaseModel

from opentracy._compression import DAMAGED, OPENERS, compression_of, damaged, open_content
from opentracy.errors import Cancelled, InvalidInput
from opentracy.traces.schema import TraceIn, to_row

FORMATS = ("auto", "opentracy", "openai", "otel")
BATCH = 1000
_dec = msgspec.json.Decoder().decode


class ImportResult(BaseModel):
    file: str
    format: str
    lines: int
    inserted: int
    duplicates: int = 0
    ignored: int = (
        0  # lines or spans that are not LLM calls (batch requests without a result, non-GenAI spans)
    )
    skipped: int = 0
    skipped_items: list[dict[str, Any]] = []


class _Bad(Exception):
    def __init__(self, line: int, msg: str) -> None:
        super().__init__(msg)
        self.line = line
        self.msg = msg


def _model_string(model: str, provider: str | None = "openai") -> str:
    if "/" in model:
        head = model.split("/", 1)[0]
        if provider is None or head == provider:
            return model
    return f"{provider or 'openai'}/{model}"


def _kind(obj: dict[str, Any]) -> str:
    if "resourceSpans" in obj:
        return "otel"
    if "custom_id" in obj:
        return "batch_in" if "body" in obj and "response" not in obj else "batch_out"
    if "model" in obj:
        return "opentracy"
    if "request" in obj:
        return "openai"
    raise ValueError(
        "not a trace: expected an opentracy trace (with model), an OpenAI request/response log line "
        "(with request), a Batch API line (with custom_id) or OTLP JSON (with resourceSpans)"
    )


_LOG_EXTRA = (
    "latency_ms",
    "ttft_ms",
    "error",
    "status_code",
    "tags",
    "metadata",
    "user_id",
    "session_id",
    "trace_id",
)


def _from_openai_log(obj: dict[str, Any]) -> TraceIn:
    req = obj.get("request")
    if not isinstance(req, dict):
        raise ValueError("request must be an object (a chat completions request)")
    model = req.get("model")
    resp = obj.get("response")
    if isinstance(resp, dict) and isinstance(resp.get("body"), dict):  # {"status_code", "body"}
        obj = {**obj, "status_code": obj.get("status_code", resp.get("status_code"))}
        resp = resp["body"]
    if not model and isinstance(resp, dict):
        model = resp.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("request.model is missing")
    started = obj.get("started_at", obj.get("timestamp"))
    if started is None and isinstance(resp, dict) and isinstance(resp.get("created"), int):
        started = resp["created"]
    d: dict[str, Any] = {
        "model": _model_string(model),
        "request": {k: v for k, v in req.items() if k != "model"},
        "response": resp if isinstance(resp, dict) and "choices" in resp else None,
        "started_at": started,
    }
    if isinstance(resp, dict) and "error" in resp and "choices" not in resp:
        e = resp["error"]
        d["error"] = e.get("message") if isinstance(e, dict) else str(e)
    for k in _LOG_EXTRA:
        if obj.get(k) is not None:
            d[k] = obj[k]
    return msgspec.convert(d, TraceIn)


# -- OpenTelemetry ------------------------------------------------------------------------------------


def _attr_value(v: Any) -> Any:
    if not isinstance(v, dict):
        return v
    for k in ("stringValue", "boolValue", "doubleValue"):
        if k in v:
            return v[k]
    if "intValue" in v:
        return int(v["intValue"])
    if "arrayValue" in v:
        return [_attr_value(x) for x in (v["arrayValue"] or {}).get("values") or []]
    if "kvlistValue" in v:
        return {
            kv["key"]: _attr_value(kv.get("value")) for kv in (v["kvlistValue"] or {}).get("values") or []
        }
    return None


def _attrs(items: Any) -> dict[str, Any]:
    if isinstance(items, dict):  # some exporters write a plain map
        return dict(items)
    out = {}
    for kv in items or ():
        if isinstance(kv, dict) and "key" in kv:
            out[kv["key"]] = _attr_value(kv.get("value"))
    return out


def _json_attr(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def _parts_text(m: dict[str, Any]) -> Any:
    """Content of a GenAI-semconv message ({"role", "parts": [{"type": "text", "content"}]}) or a plain one."""
    if "parts" in m and isinstance(m["parts"], list):
        texts = [p.get("content") for p in m["parts"] if isinstance(p, dict) and p.get("type") == "text"]
        return "\n".join(t for t in texts if isinstance(t, str))
    c = m.get("content")
    return c if isinstance(c, str | list) or c is None else json.dumps(c)


def _semconv_messages(v: Any) -> list[dict[str, Any]]:
    v = _json_attr(v)
    if isinstance(v, dict):
        v = [v]
    if not isinstance(v, list):
        return []
    out = []
    for m in v:
        if isinstance(m, dict):
            out.append({"role": m.get("role") or "user", "content": _parts_text(m)})
    return out


def _indexed(a: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """gen_ai.prompt.0.role / gen_ai.prompt.0.content … (OpenLLMetry style)."""
    found: dict[int, dict[str, Any]] = {}
    plen = len(prefix) + 1
    for k, v in a.items():
        if not k.startswith(prefix + "."):
            continue
        idx, _, field = k[plen:].partition(".")
        if idx.isdigit() and field:
            found.setdefault(int(idx), {})[field] = v
    return [found[i] for i in sorted(found)]


def _span_trace(span: dict[str, Any], resource: dict[str, Any]) -> TraceIn | None:
    a = _attrs(span.get("attributes"))
    if not any(k.startswith("gen_ai.") for k in a):
        return None
    model = a.get("gen_ai.request.model") or a.get("gen_ai.response.model")
    if not isinstance(model, str) or not model:
        raise ValueError(f"GenAI span {span.get('name')!r} has no gen_ai.request.model")
    provider = a.get("gen_ai.provider.name") or a.get("gen_ai.system") or "openai"
    provider = str(provider).split(".")[0].lower()  # "openai", "aws.bedrock" → "aws", "gcp.gemini" → "gcp"
    msgs: list[dict[str, Any]] = []
    sys_instr = a.get("gen_ai.system_instructions")
    if sys_instr:
        si = _json_attr(sys_instr)
        text = _parts_text({"parts": si}) if isinstance(si, list) else str(si)
        msgs.append({"role": "system", "content": text})
    if "gen_ai.input.messages" in a:
        msgs += _semconv_messages(a["gen_ai.input.messages"])
    elif "gen_ai.prompt" in a:
        msgs += _semconv_messages(a["gen_ai.prompt"])
    else:
        msgs += [
            {"role": m.get("role", "user"), "content": m.get("content", "")}
            for m in _indexed(a, "gen_ai.prompt")
        ]
    out_msg: dict[str, Any] | None = None
    finish = None
    if "gen_ai.output.messages" in a:
        outs = _json_attr(a["gen_ai.output.messages"])
        if isinstance(outs, list) and outs and isinstance(outs[0], dict):
            out_msg = {"role": outs[0].get("role") or "assistant", "content": _parts_text(outs[0])}
            finish = outs[0].get("finish_reason")
    elif "gen_ai.completion" in a:
        outs = _semconv_messages(a["gen_ai.completion"])
        out_msg = {**outs[0], "role": "assistant"} if outs else None
    else:
        comps = _indexed(a, "gen_ai.completion")
        if comps:
            out_msg = {"role": comps[0].get("role", "assistant"), "content": comps[0].get("content", "")}
            finish = comps[0].get("finish_reason")
    for ev in span.get("events") or ():  # message events of the earlier conventions
        name = ev.get("name", "")
        ea = _attrs(ev.get("attributes"))
        body = ea.get("content", ea.get("gen_ai.event.content"))
        if name in (
            "gen_ai.system.message",
            "gen_ai.user.message",
            "gen_ai.assistant.message",
            "gen_ai.tool.message",
        ):
            role = name.split(".")[1]
            if not (msgs and any(m.get("content") == body for m in msgs)):
                msgs.append({"role": role, "content": _json_attr(body) if isinstance(body, str) else ""})
        elif name == "gen_ai.choice" and out_msg is None:
            m = _json_attr(ea.get("message", body))
            out_msg = {"role": "assistant", "content": m.get("content") if isinstance(m, dict) else m}
            finish = ea.get("finish_reason", finish)
    for m in msgs:
        if not isinstance(m.get("content"), str | list | type(None)):
            m["content"] = json.dumps(m["content"])
    if not msgs:
        raise ValueError(f"GenAI span {span.get('name')!r} carries no prompt messages")
    if finish is None:
        fr = a.get("gen_ai.response.finish_reasons")
        finish = fr[0] if isinstance(fr, list) and fr else fr if isinstance(fr, str) else None
    params = {}
    for k in ("temperature", "max_tokens", "top_p", "top_k", "frequency_penalty", "presence_penalty", "seed"):
        if f"gen_ai.request.{k}" in a:
            params[k] = a[f"gen_ai.request.{k}"]
    status = span.get("status") or {}
    error = None
    if status.get("code") in (2, "STATUS_CODE_ERROR"):
        error = status.get("message") or a.get("error.type") or "error"
    span_id = span.get("spanId") or ""
    meta = {"otel_trace_id": span.get("traceId"), "otel_span_id": span_id, "span_name": span.get("name")}
    svc = resource.get("service.name")
    if svc:
        meta["service"] = svc
    d: dict[str, Any] = {
        "model": _model_string(model, provider),
        "request": {"messages": msgs, **({"params": params} if params else {})},
        "response": {"message": out_msg} if out_msg else None,
        "finish_reason": finish,
        "input_tokens": a.get("gen_ai.usage.input_tokens", a.get("gen_ai.usage.prompt_tokens")),
        "output_tokens": a.get("gen_ai.usage.output_tokens", a.get("gen_ai.usage.completion_tokens")),
        "started_at": int(span["startTimeUnixNano"]) if span.get("startTimeUnixNano") else None,
        "ended_at": int(span["endTimeUnixNano"]) if span.get("endTimeUnixNano") else None,
        "error": error,
        "session_id": a.get("gen_ai.conversation.id"),
        "metadata": {k: v for k, v in meta.items() if v},
    }
    if span_id:
        d["trace_id"] = f"t_{span_id}"
    return msgspec.convert({k: v for k, v in d.items() if v is not None}, TraceIn)


def _otel_traces(doc: dict[str, Any]) -> Iterator[TraceIn | None]:
    for rs in doc.get("resourceSpans") or ():
        resource = _attrs((rs.get("resource") or {}).get("attributes"))
        for ss in rs.get("scopeSpans") or rs.get("instrumentationLibrarySpans") or ():
            for span in ss.get("spans") or ():
                yield _span_trace(span, resource)


# -- the file -----------------------------------------------------------------------------------------


def _read(path: Path, name: str, size: int = -1) -> bytes:
    """The file's content (its first `size` bytes), decompressed when it is compressed."""
    try:
        with open_content(path) as f:
            return f.read(size)
    except DAMAGED as e:
        if (c := compression_of(path)) is None:
            raise
        raise damaged(c, e, name, 0) from None


def _lines(path: Path, name: str, pos: list[int]) -> Iterator[tuple[int, bytes]]:
    """The file's lines, decompressed when it is compressed (gzip, bz2, xz: told by the first bytes); pos[0]
    follows the bytes of the file read so far, for progress."""
    c = compression_of(path)
    with open(path, "rb") as raw:
        if c is None:
            for n, line in enumerate(raw, 1):
                pos[0] += len(line)
                yield n, line
            return
        n = 0
        try:
            with OPENERS[c](raw, "rb") as f:
                for n, line in enumerate(f, 1):
                    pos[0] = raw.tell()
                    yield n, line
        except DAMAGED as e:
            raise damaged(c, e, name, n) from None


def iter_traces(
    path: Path, name: str, fmt: str = "auto", pos: list[int] | None = None
) -> Iterator[tuple[int, TraceIn | None | _Bad]]:
    """(line, trace) for every LLM call in the file; None for a line or span that is not one; _Bad for a
    line that is wrong (the caller decides: raise or skip)."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown trace format {fmt!r}; expected one of {', '.join(FORMATS)}")
    head = _read(path, name, 1 << 16)
    stripped = head.lstrip()
    if not stripped:
        raise InvalidInput("the file is empty", file=name)
    # One JSON document over several lines (a pretty-printed OTLP export, or a JSON array of traces).
    first_line = stripped.split(b"\n", 1)[0]
    try:
        _dec(first_line)
        whole = False
    except msgspec.DecodeError:
        whole = stripped[:1] in (b"{", b"[")
    if whole:
        try:
            doc = _dec(_read(path, name))
        except msgspec.DecodeError:
            doc = None  # not one document either: read it line by line, which names the bad line
        if doc is not None:
            docs = doc if isinstance(doc, list) else [doc]
            for i, d in enumerate(docs, 1):
                yield from _one(d, i, fmt, {})
            return
    pending: dict[str, tuple[int, dict[str, Any]]] = {}  # batch API: custom_id → (line, input or output)
    for n, line in _lines(path, name, pos if pos is not None else [0]):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield n, _Bad(n, f"not UTF-8 (byte {e.start + 1} of the line)")
            continue
        try:
            obj = _dec(text)
        except msgspec.DecodeError as e:
            yield n, _Bad(n, f"malformed JSON: {e}")
            continue
        yield from _one(obj, n, fmt, pending)
    for cid, (n, obj) in pending.items():
        if "response" in obj:  # a result without its request
            yield (
                n,
                _Bad(
                    n,
                    f"batch result for custom_id {cid!r} has no request line in the file (import the batch input "
                    "and output together: cat input.jsonl output.jsonl > batch.jsonl)",
                ),
            )
        else:
            yield n, None  # a request that has no result (yet): not a call


def _one(
    obj: Any, n: int, fmt: str, pending: dict[str, tuple[int, dict[str, Any]]]
) -> Iterator[tuple[int, Any]]:
    if not isinstance(obj, dict):
        yield n, _Bad(n, "expected a JSON object")
        return
    try:
        kind = _kind(obj)
        if (
            fmt != "auto"
            and {
                "opentracy": "opentracy",
                "openai": "openai",
                "batch_in": "openai",
                "batch_out": "openai",
                "otel": "otel",
            }[kind]
            != fmt
        ):
            raise ValueError(f"this line is {kind.replace('_', ' ')}, not the {fmt} format asked for")
        if kind == "opentracy":
            yield n, msgspec.convert(obj, TraceIn)
        elif kind == "openai":
            yield n, _from_openai_log(obj)
        elif kind == "otel":
            for t in _otel_traces(obj):
                yield n, t
        else:
            cid = obj.get("custom_id")
            if not isinstance(cid, str):
                raise ValueError("custom_id must be a string")
            other = pending.pop(cid, None)
            if other is None:
                pending[cid] = (n, obj)
                return
            inp, out = (obj, other[1]) if kind == "batch_in" else (other[1], obj)
            if ("body" in out and "response" not in out) or "response" not in out:
                raise ValueError(f"custom_id {cid!r} appears twice as a request")
            yield n, _from_batch(inp, out)
    except (ValueError, msgspec.ValidationError, KeyError, TypeError) as e:
        yield n, _Bad(n, str(e))


def _from_batch(inp: dict[str, Any], out: dict[str, Any]) -> TraceIn:
    body = inp.get("body")
    if not isinstance(body, dict):
        raise ValueError("batch request line needs a body (the chat completions request)")
    resp = out.get("response") or {}
    log: dict[str, Any] = {"request": body, "metadata": {"batch_custom_id": inp.get("custom_id")}}
    if isinstance(resp, dict):
        log["response"] = resp.get("body")
        log["status_code"] = resp.get("status_code")
        if resp.get("request_id"):
            log["metadata"]["request_id"] = resp["request_id"]
    err = out.get("error")
    if err:
        log["error"] = err.get("message") if isinstance(err, dict) else str(err)
    return _from_openai_log(log)


def import_file(
    service: Any,
    path: Path,
    *,
    display_name: str | None = None,
    fmt: str = "auto",
    on_error: str = "raise",
    progress: Callable[[float, str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> ImportResult:
    """Import every trace of the file in one transaction (all or nothing)."""
    name = display_name or path.name
    if on_error not in ("raise", "skip"):
        raise InvalidInput(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    total_bytes = max(1, path.stat().st_size)
    res = ImportResult(file=name, format=fmt, lines=0, inserted=0)
    skipped: list[dict[str, Any]] = []
    seen: set[str] = set()
    batch: list[dict[str, Any]] = []
    stored: list[str] = []  # ids written, announced once the transaction has committed
    last_line = 0

    def flush(conn: Any) -> None:
        nonlocal batch
        new, dups = service.insert_rows(batch, conn)
        stored.extend(r["id"] for r in new)
        res.inserted += len(new)
        res.duplicates += dups
        batch = []

    with service.catalog.engine.begin() as conn:
        pos = [0]
        for n, t in iter_traces(path, name, fmt, pos):
            last_line = n
            if isinstance(t, _Bad) or t is None:
                if t is None:
                    res.ignored += 1
                    continue
                if on_error == "skip":
                    skipped.append({"line": t.line, "error": t.msg})
                    continue
                raise InvalidInput(t.msg, file=name, line=t.line)
            try:
                row = to_row(t, source="import", pricing=service.pricing)
            except ValueError as e:
                if on_error == "skip":
                    skipped.append({"line": n, "error": str(e)})
                    continue
                raise InvalidInput(str(e), file=name, line=n) from None
            if row["id"] in seen:
                msg = f"trace_id {row['id']!r} appears twice in the file"
                if on_error == "skip":
                    skipped.append({"line": n, "error": msg})
                    continue
                raise InvalidInput(msg, file=name, line=n)
            seen.add(row["id"])
            batch.append(row)
            if len(batch) >= BATCH:
                flush(conn)
                if cancelled is not None and cancelled():
                    raise Cancelled("import cancelled; nothing was imported")
                if progress is not None:
                    progress(min(0.99, pos[0] / total_bytes), f"{res.inserted:,} traces")
        if batch:
            flush(conn)
        if on_error == "skip" and skipped and res.inserted == 0 and res.duplicates == 0:
            raise InvalidInput(
                f"every trace was bad ({len(skipped)} skipped), nothing to import; first: line "
                f"{skipped[0]['line']}: {skipped[0]['error']}",
                file=name,
            )
    service.notify_stored(stored)
    res.lines = last_line
    res.skipped = len(skipped)
    res.skipped_items = skipped[:100]
    return res
