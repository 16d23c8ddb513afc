"""The mock's HTTP face: a small ASGI app (no framework, so a request costs little CPU) and `MockLLM`,
which runs it under uvicorn in a background thread on a random localhost port."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

from opentracy.testing import answers as A
from opentracy.testing import anthropic as ANT
from opentracy.testing.script import Reply, Script

log = logging.getLogger("opentracy.testing")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

DEFAULT_MODELS = ("gpt-4o", "gpt-4o-mini", "mock-model", "text-embedding-3-small")

_encode = msgspec.json.encode
_PIECE = re.compile(r"\s*\S+")

_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout", None),
    409: ("conflict", None),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
_ERROR_MESSAGES = {
    429: "Rate limit reached (mock). Please try again later.",
    500: "The server had an error while processing your request (mock).",
    503: "The engine is currently overloaded (mock). Please try again later.",
}


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape for `status`."""
    typ, code = _ERROR_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    if code is None and status >= 500:
        code = "server_error"
    msg = message or _ERROR_MESSAGES.get(status) or f"mock error {status}"
    return {"error": {"message": msg, "type": typ, "param": None, "code": code}}


class _BadRequest(Exception):
    pass


class MockApp:
    """The ASGI application of the mock server. `MockLLM` runs it; `uvicorn.run(MockApp(...))` also works."""

    def __init__(
        self,
        script: Any = None,
        latency_ms: float = 0,
        *,
        record: bool = True,
        embedding_dims: int = A.DEFAULT_EMBEDDING_DIMS,
        models: tuple[str, ...] | list[str] = DEFAULT_MODELS,
    ) -> None:
        self._script = Script(script)
        self._raw_script = script
        self.latency_ms = latency_ms
        self.record = record
        self.embedding_dims = embedding_dims
        self.models = list(models)
        self.requests: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    # --- state the tests drive ----------------------------------------------------------------------

    @property
    def script(self) -> Any:
        return self._raw_script

    @script.setter
    def script(self, script: Any) -> None:
        self._script = Script(script)
        self._raw_script = script

    def reset(self) -> None:
        self.requests.clear()
        self._script.reset()

    def release_hangs(self) -> None:
        """Answer every hanging request (503) and all later hang replies at once (thread-safe)."""
        self._stopping = True
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(self._stop.set)

    def _new_loop(self) -> None:
        self._stopping = False
        self._stop = None
        self._loop = None

    # --- ASGI ---------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        raw = b""
        more = True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            raw += msg.get("body", b"")
            more = msg.get("more_body", False)
        body: Any = None
        bad: str | None = None
        if raw:
            try:
                body = msgspec.json.decode(raw)
            except msgspec.DecodeError as e:
                bad = f"We could not parse the JSON body of your request: {e}"
        request = {
            "method": scope["method"],
            "path": scope["path"],
            "body": body,
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
        }
        if self.record:
            self.requests.append(request)
        try:
            await self._handle(request, bad, receive, send)
        except _BadRequest as e:
            await _send_json(send, 400, error_body(400, str(e)))

    async def _handle(self, request: dict[str, Any], bad: str | None, receive: Receive, send: Send) -> None:
        body = request["body"]
        reply: Reply | None = None
        if not self._script.empty:
            try:
                reply = await self._script.resolve(request, A.last_user_text(body))
            except Exception as e:
                log.exception("mock script raised")
                reply = Reply(status=500, content=f"mock script raised {type(e).__name__}: {e}")
        latency = reply.latency_ms if reply is not None and reply.latency_ms is not None else self.latency_ms
        if latency:
            await asyncio.sleep(latency / 1000)
        headers = reply.headers if reply is not None else None
        path: str = request["path"]
        route = path[3:] if path.startswith("/v1/") else path
        method = request["method"]
        # Anthropic's Messages API answers in its own error shape.
        err = ANT.error_body if route == "/messages" else error_body
        if reply is not None:
            if reply.hang:
                if await self._hang(receive):
                    await _send_json(send, 503, err(503, "mock server stopping"))
                return
            if reply.json is not None:
                return await _send_json(send, reply.status, reply.json, headers)
            if reply.status >= 400:
                return await _send_json(send, reply.status, err(reply.status, reply.content), headers)
            if reply.malformed:
                if route == "/messages":
                    stream = isinstance(body, dict) and bool(body.get("stream"))
                    ctype = b"text/event-stream" if stream else b"application/json"
                    return await _send_bytes(send, 200, ANT.malformed(stream), ctype, headers)
                return await self._malformed(send, body, headers)
        if bad is not None:
            return await _send_json(send, 400, err(400, bad))
        if route == "/messages" and method == "POST":
            return await self._messages(body, reply, send)
        if route == "/chat/completions" and method == "POST":
            return await self._chat(body, reply, send)
        if route == "/embeddings" and method == "POST":
            return await self._embeddings(body, reply, send)
        if route == "/models" and method == "GET":
            data = [
                {"id": m, "object": "model", "created": 1700000000, "owned_by": "opentracy-mock"}
                for m in self.models
            ]
            return await _send_json(send, 200, {"object": "list", "data": data}, headers)
        await _send_json(send, 404, error_body(404, f"Unknown request URL: {method} {path}."))

    async def _hang(self, receive: Receive) -> bool:
        """Wait until the client disconnects (False) or the server stops (True)."""
        if self._stop is None:
            self._stop = asyncio.Event()
            self._loop = asyncio.get_running_loop()
        if self._stop.is_set() or self._stopping:
            return True

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        stop = asyncio.ensure_future(self._stop.wait())
        gone = asyncio.ensure_future(disconnected())
        done, pending = await asyncio.wait({stop, gone}, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        return stop in done

    async def _malformed(self, send: Send, body: Any, headers: dict[str, str] | None) -> None:
        if isinstance(body, dict) and body.get("stream"):
            data = b'data: {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "choices": [{\n\n'
            return await _send_bytes(send, 200, data, b"text/event-stream", headers)
        data = b'{"id": "chatcmpl-mock", "object": "chat.completion", "choices": [{"index": 0, "message": '
        await _send_bytes(send, 200, data, b"application/json", headers)

    # --- chat ---------------------------------------------------------------------------------------

    async def _chat(self, body: Any, reply: Reply | None, send: Send) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise _BadRequest("'messages' is a required property (a list of messages).")
        model = body.get("model") or "mock-model"
        n = body.get("n")
        n = 1 if n is None else n
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
            raise _BadRequest("'n' must be an integer from 1 to 128.")
        seed = A.request_seed(body)
        forced = A.forced_tool(body)
        scripted = reply is not None and (reply.content is not None or reply.tool_calls is not None)
        try:
            scripted_calls = A.normalize_tool_calls(reply.tool_calls) if reply and reply.tool_calls else None
        except ValueError as e:
            raise _BadRequest(f"mock script: {e}") from None
        choices: list[tuple[str | None, list[dict[str, Any]] | None, str]] = []
        for i in range(n):
            if scripted:
                content, calls = reply.content, scripted_calls  # type: ignore[union-attr]
                finish = reply.finish_reason  # type: ignore[union-attr]
            else:
                rng = A.choice_rng(seed, i)
                content, calls, finish = None, None, "stop"
                try:
                    if forced is not None:
                        calls = [A.tool_call(forced, rng, 0)]
                        finish = "stop" if isinstance(body.get("tool_choice"), dict) else "tool_calls"
                    else:
                        content = A.response_format_instance(body.get("response_format"), rng)
                except (ValueError, KeyError, TypeError, IndexError) as e:
                    raise _BadRequest(f"Invalid JSON schema in the request: {e}") from None
                if content is None and calls is None:
                    content = A.answer_text(rng)
                if reply is not None and reply.finish_reason != "stop":
                    finish = reply.finish_reason
            choices.append((content, calls, finish))
        pt = A.prompt_tokens(body["messages"])
        ct = sum(A.completion_tokens(c, tc) for c, tc, _ in choices)
        usage = _usage(pt, ct, reply.usage if reply is not None else None)
        cid = f"chatcmpl-mock{next(self._ids):08d}"
        created = int(time.time())
        headers = reply.headers if reply is not None else None
        if body.get("stream"):
            opts = body.get("stream_options")
            include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
            events = _stream_events(cid, created, model, choices, usage if include_usage else None)
            delay = reply.chunk_delay_ms if reply is not None else 0
            return await _send_stream(send, events, delay, headers)
        out_choices = []
        for i, (content, calls, finish) in enumerate(choices):
            message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
            if calls:
                message["tool_calls"] = calls
            out_choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": finish})
        resp = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": out_choices,
            "usage": usage,
        }
        await _send_json(send, 200, resp, headers)

    # --- Anthropic's Messages API (opentracy.testing.anthropic) --------------------------------------

    async def _messages(self, body: Any, reply: Reply | None, send: Send) -> None:
        try:
            message, events = ANT.answer(body, reply, f"msg_mock{next(self._ids):08d}")
        except ANT.BadRequest as e:
            return await _send_json(send, 400, ANT.error_body(400, str(e)))
        headers = reply.headers if reply is not None else None
        if events is not None:
            delay = reply.chunk_delay_ms if reply is not None else 0
            return await _send_stream(send, events, delay, headers)
        await _send_json(send, 200, message, headers)

    # --- embeddings ---------------------------------------------------------------------------------

    async def _embeddings(self, body: Any, reply: Reply | None, send: Send) -> None:
        if not isinstance(body, dict) or "input" not in body:
            raise _BadRequest("'input' is a required property.")
        texts = _embedding_inputs(body["input"])
        dims = body.get("dimensions") or self.embedding_dims
        if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= 16384:
            raise _BadRequest("'dimensions' must be an integer from 1 to 16384.")
        b64 = body.get("encoding_format") == "base64"
        data = []
        for i, t in enumerate(texts):
            vec = A.embedding(t, dims)
            data.append(
                {"object": "embedding", "index": i, "embedding": A.embedding_base64(vec) if b64 else vec}
            )
        pt = sum(A.estimate_tokens(t) for t in texts)
        usage = {"prompt_tokens": pt, "total_tokens": pt}
        if reply is not None and reply.usage:
            usage.update(reply.usage)
        resp = {
            "object": "list",
            "data": data,
            "model": body.get("model") or "mock-embedding",
            "usage": usage,
        }
        await _send_json(send, 200, resp, reply.headers if reply is not None else None)


def _embedding_inputs(inp: Any) -> list[str]:
    if isinstance(inp, str):
        return [inp]
    if isinstance(inp, list) and inp:
        if all(isinstance(x, str) for x in inp):
            return inp
        if all(isinstance(x, int) for x in inp):  # one token array
            return [" ".join(map(str, inp))]
        if all(isinstance(x, list) for x in inp):  # token arrays
            return [" ".join(map(str, x)) for x in inp]
    raise _BadRequest("'input' must be a string, a list of strings, or token arrays (not empty).")


def _usage(pt: int, ct: int, override: dict[str, int] | None) -> dict[str, int]:
    usage = {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
    if override:
        usage.update(override)
        if "total_tokens" not in override:
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage


def _stream_events(
    cid: str,
    created: int,
    model: str,
    choices: list[tuple[str | None, list[dict[str, Any]] | None, str]],
    usage: dict[str, int] | None,
) -> list[bytes]:
    head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
    head["system_fingerprint"] = "fp_mock"
    if usage is not None:
        head["usage"] = None
    events: list[bytes] = []

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> None:
        c = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        events.append(b"data: " + _encode({**head, "choices": [c]}) + b"\n\n")

    for i, (content, calls, finish) in enumerate(choices):
        chunk(i, {"role": "assistant", "content": "" if content is not None or not calls else None})
        if content:
            pieces = _PIECE.findall(content)
            rest = content[sum(map(len, pieces)) :]
            if rest:
                pieces.append(rest)
            for p in pieces:
                chunk(i, {"content": p})
        for k, tc in enumerate(calls or ()):
            fn = tc["function"]
            first = {
                "index": k,
                "id": tc["id"],
                "type": "function",
                "function": {"name": fn["name"], "arguments": ""},
            }
            chunk(i, {"tool_calls": [first]})
            chunk(i, {"tool_calls": [{"index": k, "function": {"arguments": fn["arguments"]}}]})
        chunk(i, {}, finish)
    if usage is not None:
        events.append(b"data: " + _encode({**head, "choices": [], "usage": usage}) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def _headers(
    content_type: bytes, length: int | None, extra: dict[str, str] | None
) -> list[tuple[bytes, bytes]]:
    h = [(b"content-type", content_type)]
    if length is not None:
        h.append((b"content-length", str(length).encode()))
    if extra:
        for k, v in extra.items():
            key = k.lower().encode("latin-1")
            if key == b"content-type":
                h[0] = (key, str(v).encode("latin-1"))
            elif key != b"content-length":
                h.append((key, str(v).encode("latin-1")))
    return h


async def _send_bytes(
    send: Send, status: int, data: bytes, content_type: bytes, extra: dict[str, str] | None = None
) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": _headers(content_type, len(data), extra)}
    )
    await send({"type": "http.response.body", "body": data})


async def _send_json(send: Send, status: int, obj: Any, extra: dict[str, str] | None = None) -> None:
    await _send_bytes(send, status, _encode(obj), b"application/json", extra)


async def _send_stream(send: Send, events: list[bytes], delay_ms: int, extra: dict[str, str] | None) -> None:
    ctype = b"text/event-stream; charset=utf-8"
    if not delay_ms:
        return await _send_bytes(send, 200, b"".join(events), ctype, extra)
    await send({"type": "http.response.start", "status": 200, "headers": _headers(ctype, None, extra)})
    for i, ev in enumerate(events):
        if i:
            await asyncio.sleep(delay_ms / 1000)
        await send({"type": "http.response.body", "body": ev, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


class MockLLM:
    """A real OpenAI-compatible HTTP server on localhost, in a background thread (it also answers
    Anthropic's `POST /v1/messages`: `anthropic.Anthropic(base_url=mock.url)`).

        with MockLLM(script=None, latency_ms=0) as mock:
            client = openai.OpenAI(base_url=mock.base_url, api_key="x")
            ...
            mock.requests   # [{"method", "path", "body", "headers"}, ...] as received
            mock.reset()    # forget them (and the rules' use counts)

    `script`: None (deterministic defaults), a function `f(request) -> Reply | str | dict | None` (may be
    async), or a list of rules `{"match": {"model", "contains", "path"}, "reply": {...}, "times": N}`.
    `script` and `latency_ms` can be changed while the server runs.
    """

    def __init__(
        self,
        script: Any = None,
        latency_ms: float = 0,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
        embedding_dims: int = A.DEFAULT_EMBEDDING_DIMS,
        models: tuple[str, ...] | list[str] = DEFAULT_MODELS,
    ) -> None:
        self.app = MockApp(script, latency_ms, record=record, embedding_dims=embedding_dims, models=models)
        self.host = host
        self._port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    # --- what tests use -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("MockLLM is not started: use `with MockLLM() as mock:` or call .start()")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.app.requests

    @property
    def script(self) -> Any:
        return self.app.script

    @script.setter
    def script(self, script: Any) -> None:
        self.app.script = script

    @property
    def latency_ms(self) -> float:
        return self.app.latency_ms

    @latency_ms.setter
    def latency_ms(self, value: float) -> None:
        self.app.latency_ms = value

    def reset(self) -> None:
        """Forget the received requests and the rules' use counts."""
        self.app.reset()

    # --- lifecycle ----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> MockLLM:
        if self.running:
            return self
        import uvicorn

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self._port,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=3,
            backlog=4096,
        )
        self.app._new_loop()
        self._server = uvicorn.Server(config)
        self._sock = sock
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"mock-llm:{self._port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.stop()
                raise RuntimeError("the mock LLM server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self.app.release_hangs()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> MockLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self._port else "not started"
        return f"<MockLLM {where} latency_ms={self.latency_ms} requests={len(self.requests)}>"


def serve(
    host: str = "127.0.0.1",
    port: int = 8001,
    script: Any = None,
    latency_ms: float = 0,
    *,
    log_level: str = "warning",
    record: bool = False,
) -> None:
    """Run the mock server in the foreground until interrupted (what `opentracy mock-llm` does)."""
    import uvicorn

    app = MockApp(script, latency_ms, record=record)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=3,
        backlog=4096,
    )
