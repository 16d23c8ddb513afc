"""What the gateway and its providers share: the result of a call, the errors, a configured endpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opentracy.errors import OpentracyError


class LLMError(OpentracyError):
    """A model call failed for good (after retries). `retryable` says whether trying later may help."""

    status_code = 502
    code = "llm_error"

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ):
        super().__init__(message, model=model, upstream_status=status)
        self.model = model
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after  # seconds the provider asked us to wait (Retry-After), if it did


class LLMTimeout(LLMError):
    code = "llm_timeout"


class LLMRateLimited(LLMError):
    code = "llm_rate_limited"


class StructuredOutputError(LLMError):
    """The model's answer did not match the requested schema, even after one repair attempt."""

    code = "structured_output_error"

    def __init__(self, message: str, *, model: str | None = None, raw: str | None = None, errors: Any = None):
        super().__init__(message, model=model)
        self.raw = raw
        self.errors = errors


@dataclass(slots=True)
class Completion:
    model: str  # the resolved provider/model string
    content: str
    finish_reason: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None  # None when the model's price is unknown
    latency_s: float
    alias: str | None = None
    ttft_s: float | None = None  # time to first token, when streaming
    cached: bool = False
    sample: int = 0
    internal: bool = False
    attempts: int = 1
    message: dict[str, Any] = field(default_factory=dict)
    parsed: Any = None  # the validated pydantic instance when response_model was given


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A configured provider: `kind` says which API it speaks (see opentracy.llm.providers)."""

    name: str
    base_url: str | None
    api_key: str | None
    max_in_flight: int
    rpm: int | None = None
    tpm: int | None = None
    kind: str = "openai"
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
