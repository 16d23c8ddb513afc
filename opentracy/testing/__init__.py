"""A real OpenAI-compatible HTTP server for tests and demos, with scripted, deterministic answers.

    from opentracy.testing import MockLLM, Reply

    with MockLLM(latency_ms=0) as mock:
        client = openai.OpenAI(base_url=mock.base_url, api_key="x")
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        mock.requests[-1]["body"]["model"]  # "gpt-4o"

Endpoints: `POST /v1/chat/completions` (with `stream`, `stream_options.include_usage`, `n`, `seed`,
`response_format` json_schema / json_object, forced `tools`), `POST /v1/embeddings` (`dimensions`,
`encoding_format`), `GET /v1/models`, and Anthropic's `POST /v1/messages` (opentracy.testing.anthropic:
the same defaults and scripted replies in Anthropic's shapes; point the `anthropic` SDK at `mock.url`). With no script every answer is a pure function of the request:
a short sentence (different per `seed`, model and choice index), a valid instance of the requested JSON
schema, and embeddings that are unit vectors hashed from the words of the text. Token counts follow
`estimate_tokens` / `prompt_tokens` so a test can predict usage and cost.

`opentracy mock-llm --port N [--script FILE] [--latency-ms N]` runs the same server in the foreground.
"""

from __future__ import annotations

from opentracy.testing.answers import (
    DEFAULT_EMBEDDING_DIMS,
    completion_tokens,
    embedding,
    estimate_tokens,
    prompt_tokens,
    schema_instance,
)
from opentracy.testing.script import Reply, Rule, load_script
from opentracy.testing.server import DEFAULT_MODELS, MockApp, MockLLM, error_body, serve

__all__ = [
    "DEFAULT_EMBEDDING_DIMS",
    "DEFAULT_MODELS",
    "MockApp",
    "MockLLM",
    "Reply",
    "Rule",
    "completion_tokens",
    "embedding",
    "error_body",
    "estimate_tokens",
    "load_script",
    "prompt_tokens",
    "schema_instance",
    "serve",
]
