"""Prices: what a call cost in USD, from a maintained price table, overridable per model.

    pricing = Pricing({"openai/gpt-4o": {"input": 2.5, "output": 10}})   # USD per million tokens
    pricing.cost("openai/gpt-4o-mini", input_tokens=1000, output_tokens=200)   # 0.00027
    pricing.cost("vllm/qwen2.5-7b", 1000, 200)                                   # None: unknown, never guessed

Where a price comes from, first match wins:

1. an override for the exact model string, then one for `provider/*` (all models of a provider), from the
   `overrides` argument, then from the `OPENTRACY_PRICES` environment variable (the same JSON shape);
2. `local/<name>` (in-process models): 0.0;
3. the `genai-prices` package's bundled snapshot (Pydantic's maintained table: providers' list prices,
   with tiers, price changes by date and off-peak hours). It is read offline only: this module never asks
   it to update itself from the network. `provider/model` maps to its provider id and model reference
   (`openai/gpt-4o` → provider `openai`, model `gpt-4o`; `gemini/…`, `xai/…`, `together_ai/…` follow its
   own provider aliases);
4. otherwise None: a model the table does not know has an unknown cost, not a made-up one.

See docs/decisions/0003-price-table.md for the choice of table and its measurements. The lookup for a
model string is done once and kept. Token prices (flat, tiered by prompt length, or changing on a date) are
then computed here in about a microsecond, with rates checked against the table's own calculation when
they are first read; the few prices that depend on the hour (off-peak discounts) or carry other charges
are computed by the table on every call (~40 µs).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from typing import Any

from opentracy.errors import InvalidInput

ENV_VAR = "OPENTRACY_PRICES"
_MILLION = Decimal(1_000_000)
# Token counts at which a flat rate must agree with the table's own calculation before it is trusted.
_PROBES = ((1_234, 567), (100_003, 7), (0, 99_991))
_MISS: Any = object()


@dataclass(frozen=True, slots=True)
class _Price:
    source: str  # "override" | "local" | "genai-prices"
    # USD per million tokens, when we compute the cost ourselves (the common case). Tiers: (above this many
    # input tokens, rate), ascending; the rate of the highest tier passed applies to all tokens of the call.
    rate_in: Decimal | None = None
    rate_out: Decimal | None = None
    tiers_in: tuple[tuple[int, Decimal], ...] = ()
    tiers_out: tuple[tuple[int, Decimal], ...] = ()
    until: float | None = None  # time.time() after which to look again (prices that change on a date)
    # Otherwise (off-peak hours, per-request fees…) the table computes each call.
    provider: Any = None
    model: Any = None

    def exact(self, tin: int, tout: int) -> Decimal:
        rin, rout = self.rate_in, self.rate_out
        for start, rate in reversed(self.tiers_in):
            if tin > start:
                rin = rate
                break
        for start, rate in reversed(self.tiers_out):
            if tin > start:  # output tiers are chosen by the prompt's length too
                rout = rate
                break
        return (rin * tin + rout * tout) / _MILLION  # type: ignore[operator]


def _parse_overrides(raw: Mapping[str, Any], where: str) -> dict[str, _Price]:
    if not isinstance(raw, Mapping):
        raise InvalidInput(
            f"{where}: expected an object {{model: {{input, output}}}}, got {type(raw).__name__}"
        )
    out: dict[str, _Price] = {}
    for model, rates in raw.items():
        if not isinstance(model, str) or "/" not in model:
            raise InvalidInput(f"{where}: price key {model!r} is not a model string provider/model")
        if not isinstance(rates, Mapping) or set(rates) - {"input", "output"} or not rates:
            raise InvalidInput(
                f'{where}: price of {model!r} must be {{"input": USD per 1M tokens, "output": USD per 1M '
                f"tokens}}, got {rates!r}"
            )
        vals: list[Decimal] = []
        for k in ("input", "output"):
            v = rates.get(k, 0)
            if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                raise InvalidInput(f"{where}: {model!r} {k} price must be a number, got {v!r}")
            try:
                d = Decimal(str(v))
            except ArithmeticError:
                raise InvalidInput(f"{where}: {model!r} {k} price must be a number, got {v!r}") from None
            if not d.is_finite() or d < 0:
                raise InvalidInput(f"{where}: {model!r} {k} price must be a number ≥ 0, got {v!r}")
            vals.append(d)
        out[model] = _Price("override", vals[0], vals[1])
    return out


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, _Price]:
    raw = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise InvalidInput(f"{ENV_VAR} is not valid JSON ({e})") from None
    return _parse_overrides(data, ENV_VAR)


class Pricing:
    def __init__(
        self,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """`overrides`: {model string or "provider/*": {"input": USD/1M tokens, "output": USD/1M tokens}};
        they win over `OPENTRACY_PRICES` (read from `environ`, default the process environment), which wins
        over the table."""
        self._overrides = {**env_overrides(environ), **_parse_overrides(overrides or {}, "price overrides")}
        self._cache: dict[str, _Price | None] = {}
        self._lock = threading.Lock()

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float | None:
        """USD for a call of `model` (a `provider/model` string), or None when its price is unknown."""
        p = self._get(model)
        if p is None:
            return None
        if input_tokens < 0 or output_tokens < 0:
            raise InvalidInput(f"token counts cannot be negative ({input_tokens}, {output_tokens})")
        if p.rate_in is not None:
            return float(p.exact(input_tokens, output_tokens))
        from genai_prices import Usage

        usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        return float(
            p.model.calc_price(usage, p.provider, genai_request_timestamp=datetime.now(UTC)).total_price
        )

    def rates(self, model: str) -> dict[str, Any] | None:
        """{"input", "output" (USD per million tokens; the base rate when it varies), "source", and "varies"
        saying how, when it does} or None when the price is unknown."""
        p = self._get(model)
        if p is None:
            return None
        if p.rate_in is not None:
            out: dict[str, Any] = {"input": float(p.rate_in), "output": float(p.rate_out), "source": p.source}  # type: ignore[arg-type]
            if p.tiers_in or p.tiers_out:
                out["varies"] = "by prompt length (tiers)"
            return out
        from genai_prices.types import ModelPrice, TieredPrices

        now = p.model.get_prices(datetime.now(UTC))
        rin, rout = now.input_mtok, now.output_mtok
        return {
            "input": float(rin.base if isinstance(rin, TieredPrices) else rin) if rin is not None else None,
            "output": float(rout.base if isinstance(rout, TieredPrices) else rout)
            if rout is not None
            else None,
            "source": p.source,
            "varies": "by time of day" if not isinstance(p.model.prices, ModelPrice) else "other charges",
        }

    def known(self, model: str) -> bool:
        return self.rates(model) is not None

    # -- lookup ------------------------------------------------------------------------------------
    def _get(self, model: str) -> _Price | None:
        p = self._cache.get(model, _MISS)
        if p is _MISS or (p is not None and p.until is not None and time.time() >= p.until):
            with self._lock:
                p = self._cache.get(model, _MISS)
                if p is _MISS or (p is not None and p.until is not None and time.time() >= p.until):
                    p = self._cache[model] = self._find(model)
        return p

    def _find(self, model: str) -> _Price | None:
        if model in self._overrides:
            return self._overrides[model]
        provider, sep, ref = model.partition("/")
        if not sep or not provider or not ref:
            return None  # not a model string: nothing to look up (aliases are resolved before pricing)
        wild = self._overrides.get(f"{provider}/*")
        if wild is not None:
            return wild
        if provider == "local":
            return _Price("local", Decimal(0), Decimal(0))
        return _from_table(provider, ref)


def _from_table(provider_id: str, ref: str) -> _Price | None:
    from genai_prices import Usage
    from genai_prices.data_snapshot import get_snapshot
    from genai_prices.types import ModelPrice, StartDateConstraint

    try:
        prov, info = get_snapshot().find_provider_model(ref, None, provider_id, None)
    except LookupError:
        return None
    slow = _Price("genai-prices", provider=prov, model=info)
    now = datetime.now(UTC)
    until = None
    if isinstance(info.prices, ModelPrice):
        mp = info.prices
    elif all(c.constraint is None or isinstance(c.constraint, StartDateConstraint) for c in info.prices):
        mp = info.get_prices(now)  # prices that change on a date: today's, until midnight UTC
        until = datetime.combine(now.date() + timedelta(days=1), dtime(0), tzinfo=UTC).timestamp()
    else:
        return slow  # off-peak hours: the table computes each call
    base_in, tiers_in = _split(mp.input_mtok)
    base_out, tiers_out = _split(mp.output_mtok)
    if base_out is None and base_in is not None and not tiers_out:
        base_out = Decimal(0)  # embeddings: input only
    if base_in is None or base_out is None:
        return slow  # priced by something other than tokens
    fast = _Price("genai-prices", base_in, base_out, tiers_in, tiers_out, until=until)
    # Trust our arithmetic only where it agrees with the table's own, on both sides of every tier (a
    # per-request fee, or a price for a token kind the rates do not see, would make them differ).
    probes = list(_PROBES)
    for start, _ in (*tiers_in, *tiers_out):
        probes += [(start, 1_001), (start + 1, 1_001)]
    for tin, tout in probes:
        usage = Usage(input_tokens=tin, output_tokens=tout)
        if fast.exact(tin, tout) != info.calc_price(usage, prov, genai_request_timestamp=now).total_price:
            return slow
    return fast


def _split(price: Any) -> tuple[Decimal | None, tuple[tuple[int, Decimal], ...]]:
    from genai_prices.types import TieredPrices

    if isinstance(price, Decimal):
        return price, ()
    if isinstance(price, TieredPrices):
        tiers = tuple(sorted((int(t.start), t.price) for t in price.tiers))
        if isinstance(price.base, Decimal) and all(isinstance(r, Decimal) for _, r in tiers):
            return price.base, tiers
    return None, ()
