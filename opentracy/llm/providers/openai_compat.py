"""Any OpenAI-compatible server (OpenAI itself, vLLM, Ollama, llama.cpp, Groq, Together, OpenRouter…)
through the official `openai` SDK: its transport, auth and error types, with the aiohttp transport and
without its per-call request transform and response models (see docs/decisions/0004-provider-layer.md)."""

from __future__ import annotations

import contextlib
import email.utils
import time
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

from opentracy.llm.providers import Provider
from opentracy.llm.types import Completion, Endpoint, LLMError, LLMRateLimited, LLMTimeout

_decode = msgspec.json.Decoder().decode


class OpenAICompatible(Provider):
    def __init__(self, endpoint: Endpoint, *, timeout: float) -> None:
        super().__init__(endpoint, timeout=timeout)
        import openai

        # The SDK's aiohttp transport: measured here at ~1.6 ms of client CPU per call against ~2.1 ms for
        # its default httpx2 transport, and more throughput at 128 in flight (bench/gateway.py).
        http: Any = None
        try:
            import httpx2

            n = endpoint.max_in_flight
            limits = httpx2.Limits(max_connections=max(n * 2, 100), max_keepalive_connections=n)
            try:
                http = openai.DefaultAioHttpClient(limits=limits)
            except RuntimeError:  # installed without the aiohttp extra
                http = openai.DefaultAsyncHttpx2Client(limits=limits)
        except (ImportError, AttributeError):  # an SDK without httpx2: its own defaults
            http = None
        self.client = openai.AsyncOpenAI(
            base_url=endpoint.base_url,
            api_key=endpoint.api_key or "not-needed",
            max_retries=0,  # retries are the gateway's: one policy for every provider
            timeout=timeout,
            **({"http_client": http} if http is not None else {}),
        )

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
        with _mapped_errors(f"{self.endpoint.name}/{model}", timeout):
            if stream:
                return await self._stream(model, messages, params, timeout, t0)
            return await self._post(model, messages, params, timeout, t0)

    async def embed(
        self, model: str, texts: Sequence[str], params: dict[str, Any], *, timeout: float
    ) -> tuple[list[list[float]], int]:
        """One attempt at `POST /embeddings` for a batch of texts: (vectors in input order, input tokens)."""
        import base64

        import httpx2
        import numpy as np

        with _mapped_errors(f"{self.endpoint.name}/{model}", timeout, what="embeddings response"):
            r = await self.client.post(
                "/embeddings",
                body={"model": model, "input": list(texts), "encoding_format": "base64", **params},
                cast_to=httpx2.Response,
                options={"timeout": timeout, "security": {"bearer_auth": True}},
            )
            d = _decode(r.content)
            out: list[list[float]] = [[] for _ in texts]
            for item in d["data"]:
                e = item["embedding"]
                if isinstance(e, str):
                    e = np.frombuffer(base64.b64decode(e), dtype=np.float32).tolist()
                out[int(item["index"])] = e
            if any(not v for v in out):
                raise ValueError("an input got no embedding")
            return out, int((d.get("usage") or {}).get("prompt_tokens") or 0)

    async def _post(
        self,
        model: str,
        messages: Sequence[dict[str, Any]],
        params: dict[str, Any],
        timeout: float,
        t0: float,
    ) -> Completion:
        """A non-streaming call through the SDK's low-level `post`: the SDK's request transform and response
        models cost ~0.6 ms of CPU per call here, more than everything else the gateway does."""
        import httpx2

        r = await self.client.post(
            "/chat/completions",
            body={"model": model, "messages": messages, **params},
            cast_to=httpx2.Response,
            options={"timeout": timeout, "security": {"bearer_auth": True}},
        )
        d = _decode(r.content)
        try:
            ch = d["choices"][0]
            msg = {k: v for k, v in ch["message"].items() if v is not None}
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ValueError(f"no choices[0].message in the answer: {r.content[:200]!r}") from None
        u = d.get("usage") or {}
        return Completion(
            model=model,
            content=msg.get("content") or "",
            finish_reason=ch.get("finish_reason"),
            input_tokens=int(u.get("prompt_tokens") or 0),
            output_tokens=int(u.get("completion_tokens") or 0),
            cost_usd=None,
            latency_s=time.perf_counter() - t0,
            message=msg,
        )

    async def _stream(
        self,
        model: str,
        messages: Sequence[dict[str, Any]],
        params: dict[str, Any],
        timeout: float,
        t0: float,
    ) -> Completion:
        parts: list[str] = []
        ttft = None
        finish = None
        usage = None
        s = await self.client.chat.completions.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            timeout=timeout,
            **params,
        )
        async for chunk in s:
            if chunk.usage is not None:
                usage = chunk.usage
            for ch in chunk.choices:
                if ch.delta and ch.delta.content:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    parts.append(ch.delta.content)
                if ch.finish_reason:
                    finish = ch.finish_reason
        content = "".join(parts)
        return Completion(
            model=model,
            content=content,
            finish_reason=finish,
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            cost_usd=None,
            latency_s=time.perf_counter() - t0,
            ttft_s=ttft,
            message={"role": "assistant", "content": content},
        )


@contextlib.contextmanager
def _mapped_errors(where: str, timeout: float, what: str = "response") -> Iterator[None]:
    """The SDK's errors (and a body we cannot read) as the gateway's typed, retryable-or-not errors."""
    import openai

    try:
        yield
    except openai.APIStatusError as e:
        raise status_error(where, e.status_code, _err_message(e), e.response) from None
    except openai.APITimeoutError:
        raise LLMTimeout(f"{where}: no answer within {timeout:g} s", model=where, retryable=True) from None
    except openai.APIConnectionError as e:
        raise LLMError(f"{where}: cannot reach the provider ({e})", model=where, retryable=True) from None
    except (openai.APIResponseValidationError, KeyError, IndexError, TypeError, ValueError) as e:
        raise LLMError(
            f"{where}: the provider sent a malformed {what} ({e})", model=where, retryable=True
        ) from None


def status_error(where: str, status: int, detail: str, response: Any = None) -> LLMError:
    """A provider's HTTP error status as the gateway's error: 429 is rate limiting, and 408, 409, 429 and
    5xx are worth retrying (after the provider's retry-after, if it sent one)."""
    cls = LLMRateLimited if status == 429 else LLMError
    return cls(
        f"{where}: HTTP {status}: {detail}",
        model=where,
        status=status,
        retryable=status in (408, 409, 429) or status >= 500,
        retry_after=retry_after(response.headers if response is not None else None),
    )


def retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date), if given."""
    if not headers:
        return None
    raw = headers.get("retry-after-ms")
    if raw:
        try:
            return float(raw) / 1000
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _err_message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(getattr(e, "message", e))
