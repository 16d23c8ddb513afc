"""The LLM gateway: one way to call any model.

    gw = Gateway(aliases=engine.aliases, cache=engine.llm_cache, pricing=engine.pricing)
    c = await gw.complete("openai/gpt-4o-mini", [{"role": "user", "content": "hi"}])
    c.content, c.input_tokens, c.output_tokens, c.cost_usd, c.latency_s

- Model strings are `provider/model`. `openai/…` goes to any OpenAI-compatible server through the official
  `openai` SDK (the fast path; `OPENAI_BASE_URL` / `OPENAI_API_KEY`); so do the built-in `gemini/`, `groq/`,
  `together/`, `deepseek/`, `xai/`, `mistral/`, `fireworks/`, `openrouter/` and `ollama/` (PRESETS below).
  `anthropic/…` speaks Anthropic's own API, `local/…` runs a Hugging Face model in-process
  (opentracy.llm.providers). Other OpenAI-compatible endpoints (vLLM, llama.cpp…) are named in
  `OPENTRACY_ENDPOINTS`: `{"vllm": {"base_url": "http://gpu:8000/v1", "api_key_env": "VLLM_API_KEY"}}`
  makes `vllm/<model>` work. An alias (see aliases.py) is accepted wherever a model is.
- Each provider has a bound on calls in flight, optional requests- and tokens-per-minute limits, retries
  with exponential backoff and jitter on 429 / 5xx / timeouts / connection errors (honouring
  `Retry-After`), and a per-call timeout. Cancelling the awaiting task cancels the call.
- The response cache (keyed by model, messages, parameters and sample index) is on by default for the
  platform's own (`internal=True`) calls: a hit makes no HTTP request and costs 0.
- `response_model=` asks for JSON matching a pydantic model, validates it, repairs once, and otherwise
  raises `StructuredOutputError` (never a made-up value).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from opentracy.errors import InvalidInput
from opentracy.llm.providers import Provider, provider_class
from opentracy.llm.types import (
    Completion,
    Endpoint,
    LLMError,
    LLMRateLimited,
    LLMTimeout,
    StructuredOutputError,
)

__all__ = [
    "Completion",
    "Endpoint",
    "Gateway",
    "LLMError",
    "LLMRateLimited",
    "LLMTimeout",
    "StructuredOutputError",
    "load_endpoints",
    "split_model",
]

T = TypeVar("T")
log = logging.getLogger("opentracy.llm")

# Parameters the gateway understands itself and does not forward.
_RESERVED = {"model", "messages", "stream", "n"}


# Built-in providers: (kind, default base URL, API key variable). Each base URL can be changed with
# <NAME>_BASE_URL (OPENAI_BASE_URL, ANTHROPIC_BASE_URL, GROQ_BASE_URL…), so any of them can be pointed at
# a proxy or a local server by configuration alone. `None` as a base URL means the SDK's own default.
PRESETS: dict[str, tuple[str, str | None, str | None]] = {
    "openai": ("openai", None, "OPENAI_API_KEY"),
    "anthropic": ("anthropic", None, "ANTHROPIC_API_KEY"),
    "gemini": ("openai", "https://generativelanguage.googleapis.com/v1beta/openai/", "GEMINI_API_KEY"),
    "groq": ("openai", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "together": ("openai", "https://api.together.xyz/v1", "TOGETHER_API_KEY"),
    "deepseek": ("openai", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
    "xai": ("openai", "https://api.x.ai/v1", "XAI_API_KEY"),
    "mistral": ("openai", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    "fireworks": ("openai", "https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY"),
    "openrouter": ("openai", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "ollama": ("openai", "http://localhost:11434/v1", None),
    "local": ("local", None, None),
}
_DEFAULT_IN_FLIGHT = {"openai": 64, "local": 1}


def _int(env: dict[str, str], name: str) -> int | None:
    raw = env.get(name)
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number, not {raw!r}") from None


def load_endpoints(env: dict[str, str] | None = None) -> dict[str, Endpoint]:
    """The built-in providers (PRESETS, configured by their own standard variables), plus any named in
    OPENTRACY_ENDPOINTS (JSON), which may also override a built-in one:

        OPENTRACY_ENDPOINTS='{"vllm": {"base_url": "http://gpu:8000/v1", "api_key_env": "VLLM_API_KEY",
                              "max_in_flight": 64, "rpm": 600, "tpm": 200000}}'

    makes `vllm/<model>` reach that server. Per built-in provider, OPENTRACY_<NAME>_MAX_IN_FLIGHT,
    OPENTRACY_<NAME>_RPM and OPENTRACY_<NAME>_TPM bound its traffic.
    """
    env = dict(os.environ if env is None else env)
    out: dict[str, Endpoint] = {}
    for name, (kind, base, key_var) in PRESETS.items():
        up = name.upper()
        out[name] = Endpoint(
            name,
            env.get(f"{up}_BASE_URL") or base,
            (env.get(key_var) or None) if key_var else None,
            _int(env, f"OPENTRACY_{up}_MAX_IN_FLIGHT") or _DEFAULT_IN_FLIGHT.get(name, 32),
            _int(env, f"OPENTRACY_{up}_RPM"),
            _int(env, f"OPENTRACY_{up}_TPM"),
            kind=kind,
        )
    raw = env.get("OPENTRACY_ENDPOINTS")
    if raw:
        try:
            conf = json.loads(raw)
        except ValueError as e:
            raise InvalidInput(f"OPENTRACY_ENDPOINTS is not valid JSON: {e}") from None
        if not isinstance(conf, dict):
            raise InvalidInput("OPENTRACY_ENDPOINTS must be a JSON object: {name: {base_url, ...}}")
        for name, c in conf.items():
            kind = c.get("kind", "openai") if isinstance(c, dict) else None
            if not isinstance(c, dict) or ("base_url" not in c and kind == "openai"):
                raise InvalidInput(f"OPENTRACY_ENDPOINTS[{name!r}] needs a base_url")
            key = c.get("api_key") or (env.get(c["api_key_env"]) if c.get("api_key_env") else None)
            known = {"kind", "base_url", "api_key", "api_key_env", "max_in_flight", "rpm", "tpm"}
            out[name] = Endpoint(
                name,
                c.get("base_url"),
                key,
                int(c.get("max_in_flight", _DEFAULT_IN_FLIGHT.get(kind, 32))),
                c.get("rpm"),
                c.get("tpm"),
                kind=kind,
                options={k: v for k, v in c.items() if k not in known},
            )
    return out


def split_model(model: str) -> tuple[str, str]:
    provider, sep, name = model.partition("/")
    if not sep or not provider or not name:
        raise InvalidInput(f"bad model {model!r}: use provider/model, e.g. openai/gpt-4o-mini, or an alias")
    return provider, name


class _Limiter:
    """Requests- and tokens-per-minute budgets (token buckets refilled continuously)."""

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self.rpm, self.tpm = rpm, tpm
        self._req = float(rpm or 0)
        self._tok = float(tpm or 0)
        self._t = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> None:
        if not self.rpm and not self.tpm:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                dt, self._t = now - self._t, now
                if self.rpm:
                    self._req = min(self.rpm, self._req + dt * self.rpm / 60)
                if self.tpm:
                    self._tok = min(self.tpm, self._tok + dt * self.tpm / 60)
                need_r = 1 - self._req if self.rpm else 0
                need_t = min(tokens, self.tpm) - self._tok if self.tpm else 0
                if need_r <= 0 and need_t <= 0:
                    if self.rpm:
                        self._req -= 1
                    if self.tpm:
                        self._tok -= min(tokens, self.tpm)
                    return
                wait = max(
                    need_r * 60 / self.rpm if self.rpm else 0, need_t * 60 / self.tpm if self.tpm else 0
                )
                await asyncio.sleep(min(wait, 5.0))


@dataclass
class _LoopState:
    """Per event loop: SDK clients, semaphores and limiters are bound to the loop that made them."""

    providers: dict[str, Provider] = field(default_factory=dict)
    sems: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    limiters: dict[str, _Limiter] = field(default_factory=dict)


def _estimate_tokens(messages: Sequence[dict[str, Any]]) -> int:
    n = 0
    for m in messages:
        c = m.get("content")
        n += 4 + (len(c) // 4 if isinstance(c, str) else len(json.dumps(c)) // 4 if c else 0)
    return n


class Gateway:
    def __init__(
        self,
        *,
        aliases: Any = None,
        cache: Any = None,
        pricing: Any = None,
        endpoints: dict[str, Endpoint] | None = None,
        max_retries: int = 4,
        timeout: float = 60.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        cache_external: bool = False,
        recorder: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.aliases = aliases
        self.cache = cache
        self.pricing = pricing
        self.endpoints = endpoints if endpoints is not None else load_endpoints()
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.cache_external = cache_external  # cache calls that are not internal too
        # Called with the facts of every call that is not internal (a trace to record; see engine.py).
        self.recorder = recorder
        self._states: dict[int, _LoopState] = {}
        self._sync_loop: asyncio.AbstractEventLoop | None = None
        self._sync_thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- plumbing --------------------------------------------------------------------------------
    def resolve(self, model: str) -> tuple[str, str | None]:
        """(provider/model, alias or None)."""
        if self.aliases is not None:
            return self.aliases.resolve(model)
        split_model(model)
        return model, None

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        st = self._states.get(id(loop))
        if st is None:
            st = self._states[id(loop)] = _LoopState()
        return st

    def _endpoint(self, provider: str) -> Endpoint:
        ep = self.endpoints.get(provider)
        if ep is None:
            known = ", ".join(sorted(self.endpoints))
            raise InvalidInput(
                f"no provider {provider!r} configured (known: {known}). OpenAI-compatible servers are added with "
                'OPENTRACY_ENDPOINTS, e.g. {"vllm": {"base_url": "http://host:8000/v1"}}'
            )
        return ep

    def _sem(self, st: _LoopState, ep: Endpoint) -> asyncio.Semaphore:
        s = st.sems.get(ep.name)
        if s is None:
            s = st.sems[ep.name] = asyncio.Semaphore(ep.max_in_flight)
        return s

    def _limiter(self, st: _LoopState, ep: Endpoint) -> _Limiter:
        lim = st.limiters.get(ep.name)
        if lim is None:
            lim = st.limiters[ep.name] = _Limiter(ep.rpm, ep.tpm)
        return lim

    def _price(self, model: str, c: Completion) -> float | None:
        """A provider that knows its own price (local models: the registry's) sets `cost_usd`; a price
        override for the model string in Pricing wins over it; otherwise the price table prices the call."""
        if c.cost_usd is not None:
            r = self.pricing.rates(model) if self.pricing is not None else None
            if r is None or r.get("source") != "override":
                return c.cost_usd
        return self._cost(model, c.input_tokens, c.output_tokens)

    def _cost(self, model: str, tin: int, tout: int) -> float | None:
        if self.pricing is None:
            return None
        c = self.pricing.cost(model, tin, tout)
        return None if c is None else float(c)

    # -- the call --------------------------------------------------------------------------------
    async def complete(
        self,
        model: str,
        messages: Sequence[dict[str, Any]],
        *,
        params: dict[str, Any] | None = None,
        sample: int = 0,
        response_model: type | None = None,
        internal: bool = False,
        use_cache: bool | None = None,
        timeout: float | None = None,
        stream: bool = False,
        max_retries: int | None = None,
        record: bool = True,
    ) -> Completion:
        """One chat completion. `sample` distinguishes the N answers to the same request (it becomes the
        request's `seed` unless you set one, and is part of the cache key). Calls that are not `internal`
        become traces (when the gateway has a recorder), unless `record=False`."""
        resolved, alias = self.resolve(model)
        provider, name = split_model(resolved)
        ep = self._endpoint(provider)
        p = {k: v for k, v in (params or {}).items() if k not in _RESERVED}
        p.setdefault("seed", sample)
        if response_model is not None:
            p["response_format"] = _schema_format(response_model)
        msgs = list(messages)
        caching = self.cache is not None and (
            use_cache if use_cache is not None else (internal or self.cache_external)
        )
        key = self.cache.key(resolved, msgs, p, sample) if caching else None
        if key is not None:
            hit = self.cache.get(key)
            if hit is not None:
                c = _from_payload(hit, resolved, alias, sample, internal)
                if response_model is not None:
                    c.parsed = _parse(response_model, c.content, resolved)
                return c
        rec = record and not internal and self.recorder is not None
        c = await self._call(
            ep, resolved, name, alias, msgs, p, sample, internal, timeout, stream, max_retries, rec
        )
        if response_model is not None:
            try:
                c.parsed = _parse(response_model, c.content, resolved)
            except StructuredOutputError as first:
                repair = [
                    *msgs,
                    {"role": "assistant", "content": c.content},
                    {
                        "role": "user",
                        "content": "That answer is not valid for the required JSON schema "
                        f"({_short(first.errors)}). Reply with only the corrected JSON.",
                    },
                ]
                c2 = await self._call(
                    ep, resolved, name, alias, repair, p, sample, internal, timeout, stream, max_retries, rec
                )
                c2.input_tokens += c.input_tokens
                c2.output_tokens += c.output_tokens
                if c.cost_usd is not None and c2.cost_usd is not None:
                    c2.cost_usd += c.cost_usd
                c2.parsed = _parse(
                    response_model, c2.content, resolved
                )  # raises a typed error if still wrong
                c = c2
        if key is not None:
            self.cache.put(key, resolved, _to_payload(c))
        return c

    def _provider(self, st: _LoopState, ep: Endpoint) -> Provider:
        prov = st.providers.get(ep.name)
        if prov is None:
            prov = st.providers[ep.name] = provider_class(ep.kind)(ep, timeout=self.timeout)
        return prov

    async def _retrying(
        self,
        st: _LoopState,
        ep: Endpoint,
        resolved: str,
        tokens: int,
        attempt: Callable[[Provider, int], Coroutine[Any, Any, T]],
        max_retries: int | None,
    ) -> T:
        """Run `attempt(provider, n)` under the endpoint's limits until it succeeds, fails for good, or runs
        out of retries (exponential backoff with jitter, or the provider's Retry-After)."""
        prov = self._provider(st, ep)
        retries = self.max_retries if max_retries is None else max_retries
        n = 0
        while True:
            n += 1
            await self._limiter(st, ep).acquire(tokens)
            async with self._sem(st, ep):
                try:
                    return await attempt(prov, n)
                except LLMError as e:
                    err = e
                    err.model = resolved
            if not err.retryable or n > retries:
                raise err
            wait = err.retry_after
            if wait is None:  # jitter, so the retries of many calls spread out
                wait = min(self.backoff_max, self.backoff_base * 2 ** (n - 1)) * random.uniform(0.5, 1.5)
            await asyncio.sleep(min(wait, self.backoff_max))

    async def _call(
        self,
        ep: Endpoint,
        resolved: str,
        name: str,
        alias: str | None,
        msgs: list[dict[str, Any]],
        p: dict[str, Any],
        sample: int,
        internal: bool,
        timeout: float | None,
        stream: bool,
        max_retries: int | None,
        rec: bool = False,
    ) -> Completion:
        started = time.time()

        async def attempt(prov: Provider, n: int) -> Completion:
            t0 = time.perf_counter()
            c = await prov.chat(name, msgs, p, timeout=timeout or self.timeout, stream=stream, t0=t0)
            c.model, c.alias, c.sample, c.internal, c.attempts = resolved, alias, sample, internal, n
            c.cost_usd = self._price(resolved, c)
            return c

        tokens = _estimate_tokens(msgs) + int(p.get("max_tokens") or 0)
        try:
            c = await self._retrying(self._state(), ep, resolved, tokens, attempt, max_retries)
        except LLMError as err:
            if rec:
                self._record_error(err, resolved, alias, msgs, p, started)
            raise
        if rec:
            self._record(c, msgs, p, started, stream=stream)
        return c

    async def embed(
        self,
        model: str,
        texts: Sequence[str],
        *,
        params: dict[str, Any] | None = None,
        internal: bool = True,
        timeout: float | None = None,
        max_retries: int | None = None,
    ) -> tuple[list[list[float]], int]:
        """Embeddings of `texts` from an embeddings model (`openai/text-embedding-3-small`, an alias…), with the
        same per-provider bound, limits and retries as chat calls: (vectors in order, input tokens). The
        platform's own calls (`internal=True`, the default here) are not traces. Caching is the caller's
        (opentracy.embeddings keeps vectors by content hash and model)."""
        resolved, _alias = self.resolve(model)
        provider, name = split_model(resolved)
        ep = self._endpoint(provider)
        p = dict(params or {})

        async def attempt(prov: Provider, n: int) -> tuple[list[list[float]], int]:
            return await prov.embed(name, texts, p, timeout=timeout or self.timeout)

        tokens = sum(len(t) // 4 + 1 for t in texts)
        return await self._retrying(self._state(), ep, resolved, tokens, attempt, max_retries)

    def _record(
        self, c: Completion, msgs: list[dict[str, Any]], p: dict[str, Any], started: float, *, stream: bool
    ) -> None:
        try:
            self.recorder(  # type: ignore[misc]
                {
                    "model": c.model,
                    "alias": c.alias,
                    "request": {"messages": msgs, **p, **({"stream": True} if stream else {})},
                    "response": {"message": c.message or {"role": "assistant", "content": c.content}},
                    "finish_reason": c.finish_reason,
                    "input_tokens": c.input_tokens,
                    "output_tokens": c.output_tokens,
                    "cost_usd": c.cost_usd,
                    "started_at": started,
                    "latency_ms": c.latency_s * 1000,
                    "ttft_ms": c.ttft_s * 1000 if c.ttft_s is not None else None,
                    "metadata": {"attempts": c.attempts} if c.attempts > 1 else {},
                }
            )
        except Exception:  # recording must never break a call
            log.exception("could not record the call as a trace")

    def _record_error(
        self,
        err: LLMError,
        resolved: str,
        alias: str | None,
        msgs: list[dict[str, Any]],
        p: dict[str, Any],
        started: float,
    ) -> None:
        try:
            self.recorder(  # type: ignore[misc]
                {
                    "model": resolved,
                    "alias": alias,
                    "request": {"messages": msgs, **p},
                    "error": err.message,
                    "status_code": err.status,
                    "started_at": started,
                    "latency_ms": (time.time() - started) * 1000,
                }
            )
        except Exception:
            log.exception("could not record the failed call as a trace")

    async def complete_many(
        self, requests: Sequence[dict[str, Any]], *, return_exceptions: bool = True
    ) -> list[Completion | BaseException]:
        """Many calls at once (each a dict of `complete` arguments); the per-provider bound applies."""
        return await asyncio.gather(
            *(self.complete(**r) for r in requests), return_exceptions=return_exceptions
        )

    # -- sync wrapper ------------------------------------------------------------------------------
    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the gateway's own event loop thread (for scripts and sync code)."""
        with self._lock:
            if self._sync_loop is None:
                loop = asyncio.new_event_loop()
                t = threading.Thread(target=loop.run_forever, name="llm-gateway", daemon=True)
                t.start()
                self._sync_loop, self._sync_thread = loop, t
        fut = asyncio.run_coroutine_threadsafe(coro, self._sync_loop)
        return fut.result(timeout)

    def complete_sync(self, model: str, messages: Sequence[dict[str, Any]], **kw: Any) -> Completion:
        return self.run(self.complete(model, messages, **kw))

    async def aclose(self) -> None:
        """Close the HTTP clients this event loop opened (call it before the loop ends)."""
        st = self._states.pop(id(asyncio.get_running_loop()), None)
        if st is not None:
            for prov in st.providers.values():
                await prov.aclose()

    def close(self) -> None:
        """Close the clients of the sync wrapper's loop and stop that loop."""
        loop = self._sync_loop
        if loop is not None:
            st = self._states.pop(id(loop), None)
            if st is not None:
                for prov in st.providers.values():
                    asyncio.run_coroutine_threadsafe(prov.aclose(), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)
            if self._sync_thread is not None:
                self._sync_thread.join(5)
            self._sync_loop = None


def _schema_format(model: type) -> dict[str, Any]:
    schema = model.model_json_schema()  # type: ignore[attr-defined]
    return {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": schema, "strict": False}}


def _parse(model: type, content: str, resolved: str) -> Any:
    from pydantic import ValidationError

    try:
        return model.model_validate_json(content)  # type: ignore[attr-defined]
    except ValidationError as e:
        raise StructuredOutputError(
            f"{resolved}: the answer does not match {model.__name__}: {_short(e.errors(include_url=False))}",
            model=resolved,
            raw=content,
            errors=e.errors(include_url=False),
        ) from None


def _short(errors: Any) -> str:
    if not errors:
        return "invalid"
    out = []
    for e in list(errors)[:3]:
        loc = ".".join(str(x) for x in e.get("loc", ())) or "answer"
        out.append(f"{loc}: {e.get('msg')}")
    return "; ".join(out)


def _to_payload(c: Completion) -> dict[str, Any]:
    return {
        "content": c.content,
        "message": c.message,
        "finish_reason": c.finish_reason,
        "usage": {"input_tokens": c.input_tokens, "output_tokens": c.output_tokens},
        "model": c.model,
    }


def _from_payload(
    p: dict[str, Any], resolved: str, alias: str | None, sample: int, internal: bool
) -> Completion:
    u = p.get("usage") or {}
    return Completion(
        model=resolved,
        content=p.get("content") or "",
        finish_reason=p.get("finish_reason"),
        input_tokens=int(u.get("input_tokens", 0)),
        output_tokens=int(u.get("output_tokens", 0)),
        cost_usd=0.0,  # a hit costs nothing
        latency_s=0.0,
        alias=alias,
        cached=True,
        sample=sample,
        internal=internal,
        attempts=0,
        message=p.get("message") or {},
    )
