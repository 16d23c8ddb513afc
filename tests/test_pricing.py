"""Pricing: costs from the genai-prices table (offline), None for unknown models, overrides (argument and
OPENTRACY_PRICES), local/ models free by default, fast repeated lookups."""

from __future__ import annotations

import json
import time

import pytest
from genai_prices import Usage, calc_price

from opentracy.errors import InvalidInput
from opentracy.llm.pricing import Pricing

NO_ENV: dict[str, str] = {}


def table(model: str, tin: int, tout: int) -> float:
    provider, ref = model.split("/", 1)
    return float(
        calc_price(Usage(input_tokens=tin, output_tokens=tout), ref, provider_id=provider).total_price
    )


@pytest.mark.parametrize(
    "model",
    [
        "openai/gpt-4o",
        "openai/gpt-4o-mini",
        "openai/gpt-4.1",
        "openai/o3-mini",
        "anthropic/claude-3-5-sonnet-20241022",
        "anthropic/claude-3-5-haiku-latest",
        "gemini/gemini-2.0-flash",
        "google/gemini-2.5-pro",  # tiered by prompt length
        "mistral/mistral-small-latest",  # prices that changed on a date
        "deepseek/deepseek-chat",  # off-peak hours
        "groq/llama-3.3-70b-versatile",
        "together/meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "openrouter/anthropic/claude-3.5-sonnet",
    ],
)
def test_known_models_cost_what_the_table_says(model: str) -> None:
    p = Pricing(environ=NO_ENV)
    for tin, tout in ((1000, 500), (0, 0), (250_000, 1_000), (1, 0)):
        assert p.cost(model, tin, tout) == pytest.approx(table(model, tin, tout), rel=1e-12, abs=0)


def test_exact_figures() -> None:
    p = Pricing(environ=NO_ENV)
    assert p.cost("openai/gpt-4o", 1_000_000, 0) == pytest.approx(2.5)
    assert p.cost("openai/gpt-4o", 1000, 500) == pytest.approx(0.0075)  # 1000 × 2.5/1M + 500 × 10/1M
    assert p.rates("openai/gpt-4o") == {"input": 2.5, "output": 10.0, "source": "genai-prices"}
    # over 200k prompt tokens, gemini-2.5-pro's higher tier applies
    assert p.cost("google/gemini-2.5-pro", 300_000, 0) == pytest.approx(300_000 * 2.5 / 1e6)
    assert p.rates("google/gemini-2.5-pro")["varies"] == "by prompt length (tiers)"


def test_unknown_is_none() -> None:
    p = Pricing(environ=NO_ENV)
    assert p.cost("vllm/qwen2.5-7b-instruct", 1000, 100) is None  # a provider the table does not know
    assert p.cost("openai/my-finetune-that-does-not-exist", 1000, 100) is None  # a model it does not know
    assert p.cost("gpt-4o", 1000, 100) is None  # not a model string: aliases are resolved before pricing
    assert p.rates("vllm/x") is None and not p.known("vllm/x") and p.known("openai/gpt-4o")


def test_local_models_default_to_zero() -> None:
    p = Pricing(environ=NO_ENV)
    assert p.cost("local/ticket-student-v3", 10_000, 5_000) == 0.0
    assert p.rates("local/x") == {"input": 0.0, "output": 0.0, "source": "local"}
    p = Pricing({"local/ticket-student-v3": {"input": 0.05, "output": 0.1}}, environ=NO_ENV)
    assert p.cost("local/ticket-student-v3", 1_000_000, 1_000_000) == pytest.approx(0.15)
    assert p.cost("local/other", 1_000_000, 1_000_000) == 0.0


def test_overrides_win_over_the_table() -> None:
    p = Pricing(
        {"openai/gpt-4o": {"input": 1, "output": 2}, "vllm/*": {"input": 0.01, "output": 0.02}},
        environ=NO_ENV,
    )
    assert p.cost("openai/gpt-4o", 1_000_000, 1_000_000) == pytest.approx(3.0)
    assert p.rates("openai/gpt-4o")["source"] == "override"
    assert p.cost("openai/gpt-4o-mini", 1000, 500) == pytest.approx(table("openai/gpt-4o-mini", 1000, 500))
    assert p.cost("vllm/any-model", 2_000_000, 1_000_000) == pytest.approx(0.04)  # provider-wide


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "OPENTRACY_PRICES",
        json.dumps({"openai/gpt-4o": {"input": 5, "output": 20}, "local/big": {"input": 1, "output": 1}}),
    )
    p = Pricing()
    assert p.cost("openai/gpt-4o", 1_000_000, 0) == pytest.approx(5.0)
    assert p.cost("local/big", 500_000, 500_000) == pytest.approx(1.0)
    # the argument wins over the environment
    p = Pricing({"openai/gpt-4o": {"input": 7, "output": 0}})
    assert p.cost("openai/gpt-4o", 1_000_000, 1_000_000) == pytest.approx(7.0)
    assert p.cost("local/big", 1_000_000, 0) == pytest.approx(1.0)


def test_engine_reads_env_prices(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from opentracy.config import Settings
    from opentracy.engine import Engine

    monkeypatch.setenv("OPENTRACY_PRICES", '{"local/s": {"input": 3, "output": 3}}')
    with Engine(Settings.from_env(home=tmp_path / "h")) as eng:
        assert eng.pricing.cost("local/s", 1_000_000, 0) == pytest.approx(3.0)


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        '["openai/gpt-4o"]',
        '{"gpt-4o": {"input": 1, "output": 1}}',
        '{"openai/gpt-4o": {"input": "x", "output": 1}}',
        '{"openai/gpt-4o": {"input": -1, "output": 1}}',
        '{"openai/gpt-4o": {"in": 1}}',
        '{"openai/gpt-4o": 3}',
    ],
)
def test_bad_overrides_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput, match="OPENTRACY_PRICES"):
        Pricing(environ={"OPENTRACY_PRICES": bad})


def test_negative_tokens_refused() -> None:
    with pytest.raises(InvalidInput):
        Pricing(environ=NO_ENV).cost("openai/gpt-4o", -1, 0)


def test_lookup_is_cached_and_fast() -> None:
    p = Pricing(environ=NO_ENV)
    p.cost("openai/gpt-4o", 1, 1)
    p.cost("vllm/x", 1, 1)
    n = 20_000
    t = time.perf_counter()
    for i in range(n):
        p.cost("openai/gpt-4o", 1000 + i, 200)
        p.cost("vllm/x", 1000 + i, 200)
    per_call_us = (time.perf_counter() - t) / (2 * n) * 1e6
    assert per_call_us < 20, per_call_us  # about 1 µs here; generous for slow CI machines


def test_never_fetches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pricing reads the bundled snapshot only: no update task is started, no HTTP request is made."""
    import genai_prices.update_prices as up

    def refuse(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("pricing tried to fetch prices")

    monkeypatch.setattr(up.UpdatePrices, "start", refuse)
    monkeypatch.setattr(up.UpdatePrices, "__enter__", refuse)
    import socket

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    p = Pricing(environ=NO_ENV)
    assert p.cost("anthropic/claude-3-5-haiku-latest", 1000, 1000) is not None


def test_dated_prices_are_looked_up_again_after_midnight(monkeypatch: pytest.MonkeyPatch) -> None:
    import opentracy.llm.pricing as pricing_mod

    p = Pricing(environ=NO_ENV)
    model = "mistral/mistral-small-latest"  # its price changed on a date: cached until midnight UTC
    p.cost(model, 1, 1)
    first = p._cache[model]
    assert first is not None and first.until is not None
    assert p._get(model) is first
    real = time.time
    monkeypatch.setattr(pricing_mod.time, "time", lambda: real() + 86_400 + 1)
    assert p._get(model) is not first


def test_every_model_of_the_table_agrees_with_it() -> None:
    """Our arithmetic (flat, tiered, dated) gives exactly the table's own figure, for every model it has."""
    import random
    from datetime import UTC, datetime

    from genai_prices.data_snapshot import get_snapshot

    p = Pricing(environ=NO_ENV)
    rng = random.Random(7)
    checked = 0
    for prov in get_snapshot().providers:
        for m in prov.models:
            model = f"{prov.id}/{m.id}"
            e = p._get(model)
            if e is None or e.rate_in is None:
                continue  # an id the table cannot find by itself, or a price the table computes itself
            tin, tout = rng.randint(0, 400_000), rng.randint(0, 50_000)
            theirs = m.calc_price(
                Usage(input_tokens=tin, output_tokens=tout), prov, genai_request_timestamp=datetime.now(UTC)
            ).total_price
            assert p.cost(model, tin, tout) == float(theirs), (model, tin, tout)
            checked += 1
    assert checked > 1000
