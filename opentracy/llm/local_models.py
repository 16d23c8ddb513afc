"""The registry of local models: what `local/<name>` runs in-process.

    engine.local_models.register("ticket-student", "/models/Qwen2.5-0.5B-Instruct",
                                 adapter="/runs/job_1/adapter", input_price=0.02, output_price=0.02)
    engine.gateway.complete_sync("local/ticket-student", [{"role": "user", "content": "..."}])

A local model is a Hugging Face causal LM (a folder with `config.json`, or a Hub id already in the local
Hugging Face cache) with an optional LoRA adapter (a folder with `adapter_config.json`, as `peft` saves it),
an optional chat template (else the tokenizer's), generation defaults and a price in USD per million
tokens (default 0). Models live in the catalog (`local_models` table; ids `m_…`; the distillation jobs
register their students here) or, for models outside the catalog, in the `OPENTRACY_LOCAL_MODELS`
variable (JSON, the same fields):

    OPENTRACY_LOCAL_MODELS='{"tiny": {"base_model": "/models/tiny", "adapter": null,
                             "generation": {"temperature": 0}, "input_price": 0, "output_price": 0}}'

A name in the catalog wins over the same name in the variable; `register` refuses a name the variable
already defines. The provider that runs them is opentracy.llm.providers.local.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError

from opentracy.errors import Conflict, InvalidInput, NotFound
from opentracy.llm.types import Endpoint
from opentracy.names import NAME_RE
from opentracy.store.catalog import Catalog
from opentracy.store.tables import LocalModelRecord, utcnow

ENV_VAR = "OPENTRACY_LOCAL_MODELS"
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# Generation defaults a model may carry, with the check each value must pass.
GENERATION_KEYS: dict[str, str] = {
    "max_tokens": "a whole number ≥ 1",
    "temperature": "a number ≥ 0",
    "top_p": "a number in (0, 1]",
    "top_k": "a whole number ≥ 0",
    "repetition_penalty": "a number > 0",
    "stop": "a string or a list of strings",
}
FIELDS = {
    "base_model",
    "adapter",
    "chat_template",
    "generation",
    "input_price",
    "output_price",
    "description",
}


class LocalModel(BaseModel):
    """A model `local/<name>` can run."""

    name: str
    base_model: str
    adapter: str | None = None
    chat_template: str | None = None
    generation: dict[str, Any] = {}
    input_price: float = 0.0  # USD per million tokens
    output_price: float = 0.0
    description: str = ""
    meta: dict[str, Any] = {}
    source: Literal["catalog", "config"] = "catalog"
    id: str | None = None  # m_… for a model in the catalog
    created_at: datetime | None = None

    @property
    def model(self) -> str:
        """The model string that calls it."""
        return f"local/{self.name}"

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_price + output_tokens * self.output_price) / 1_000_000


# --- checks ---------------------------------------------------------------------------------------


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidInput(
            f"invalid local model name {name!r}: use letters, digits, '.', '_' or '-' (at most 200, no '/'), "
            "starting with a letter or digit"
        )
    return name


def check_base_model(path: Any, *, must_exist: bool = True) -> str:
    """An absolute path to a model folder (with config.json), or a Hub id (`org/name`) left as is."""
    if not isinstance(path, str) or not path.strip():
        raise InvalidInput("base_model must be the path of a Hugging Face model folder (or a Hub id)")
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise InvalidInput(
                f"base_model {path!r} is not a Hugging Face model folder: it has no config.json"
            )
        return str(p.resolve())
    if HUB_ID_RE.match(path) and not path.startswith((".", "/", "~")):
        return path  # loaded from the local Hugging Face cache
    if must_exist:
        raise InvalidInput(
            f"base_model {path!r} does not exist (expected a model folder or a Hub id org/name)"
        )
    return str(p)


def check_adapter(path: Any, *, must_exist: bool = True) -> str | None:
    if path is None:
        return None
    if not isinstance(path, str) or not path.strip():
        raise InvalidInput("adapter must be the path of a LoRA adapter folder (or null)")
    p = Path(path).expanduser()
    if not p.is_dir():
        if must_exist:
            raise InvalidInput(f"adapter {path!r} does not exist (expected a folder saved by peft)")
        return str(p)
    if not (p / "adapter_config.json").is_file():
        raise InvalidInput(f"adapter {path!r} is not a peft adapter folder: it has no adapter_config.json")
    return str(p.resolve())


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def check_generation(gen: Any, where: str = "generation") -> dict[str, Any]:
    if gen is None:
        return {}
    if not isinstance(gen, Mapping):
        raise InvalidInput(f"{where} must be an object of generation defaults ({', '.join(GENERATION_KEYS)})")
    unknown = set(gen) - set(GENERATION_KEYS)
    if unknown:
        raise InvalidInput(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(GENERATION_KEYS)}"
        )
    out = dict(gen)
    for k, v in out.items():
        ok = {
            "max_tokens": isinstance(v, int) and not isinstance(v, bool) and v >= 1,
            "temperature": _number(v) and v >= 0,
            "top_p": _number(v) and 0 < v <= 1,
            "top_k": isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            "repetition_penalty": _number(v) and v > 0,
            "stop": isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v)),
        }[k]
        if not ok:
            raise InvalidInput(f"{where}.{k} must be {GENERATION_KEYS[k]}, not {v!r}")
    return out


def check_price(v: Any, what: str) -> float:
    if not _number(v) or v < 0:
        raise InvalidInput(f"{what} must be a number ≥ 0 (USD per million tokens), not {v!r}")
    return float(v)


def parse_config(raw: Any, where: str = ENV_VAR) -> dict[str, LocalModel]:
    """Models from a JSON text or object {name: {base_model, adapter, chat_template, generation,
    input_price, output_price, description}}. Paths are checked when a model is loaded, not here."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as e:
            raise InvalidInput(f"{where} is not valid JSON: {e}") from None
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"{where} must be a JSON object {{name: {{base_model, ...}}}}")
    out: dict[str, LocalModel] = {}
    for name, c in raw.items():
        w = f"{where}[{name!r}]"
        check_name(name)
        if not isinstance(c, Mapping):
            raise InvalidInput(f"{w} must be an object with base_model")
        unknown = set(c) - FIELDS
        if unknown:
            raise InvalidInput(
                f"{w}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(FIELDS))}"
            )
        if "base_model" not in c:
            raise InvalidInput(f"{w} needs a base_model")
        try:
            out[name] = LocalModel(
                name=name,
                base_model=check_base_model(c["base_model"], must_exist=False),
                adapter=check_adapter(c.get("adapter"), must_exist=False),
                chat_template=_template(c.get("chat_template")),
                generation=check_generation(c.get("generation"), f"{w}.generation"),
                input_price=check_price(c.get("input_price", 0), f"{w}.input_price"),
                output_price=check_price(c.get("output_price", 0), f"{w}.output_price"),
                description=str(c.get("description") or ""),
                source="config",
            )
        except InvalidInput as e:
            if e.message.startswith(w):
                raise
            raise InvalidInput(f"{w}: {e.message}") from None
    return out


def _template(t: Any) -> str | None:
    if t is None:
        return None
    if not isinstance(t, str) or not t.strip():
        raise InvalidInput("chat_template must be a Jinja template (text) or null")
    if len(t) > 100_000:
        raise InvalidInput(f"chat_template is too long ({len(t)} characters; at most 100000)")
    return t


# --- the service ----------------------------------------------------------------------------------


class LocalModelService:
    """Register, list, get and delete local models. `catalog=None` gives the configured ones only."""

    def __init__(self, catalog: Catalog | None, *, environ: Mapping[str, str] | None = None) -> None:
        self.catalog = catalog
        env = os.environ if environ is None else environ
        self.configured = parse_config(env.get(ENV_VAR))

    def register(
        self,
        name: str,
        base_model: str,
        *,
        adapter: str | None = None,
        chat_template: str | None = None,
        generation: Mapping[str, Any] | None = None,
        input_price: float = 0.0,
        output_price: float = 0.0,
        description: str = "",
        meta: Mapping[str, Any] | None = None,
    ) -> LocalModel:
        """Add a model to the catalog; `local/<name>` runs it from then on. Paths are checked now (and
        stored absolute); the weights load on the first call."""
        if self.catalog is None:
            raise InvalidInput(f"no catalog: local models can only be configured in {ENV_VAR}")
        check_name(name)
        if name in self.configured:
            raise Conflict(f"local model {name!r} is defined in {ENV_VAR}: choose another name")
        if meta is not None and not isinstance(meta, Mapping):
            raise InvalidInput("meta must be an object")
        if not isinstance(description, str) or len(description) > 10_000:
            raise InvalidInput("description must be text of at most 10000 characters")
        rec = LocalModelRecord(
            id=f"m_{secrets.token_hex(8)}",
            name=name,
            base_model=check_base_model(base_model),
            adapter=check_adapter(adapter),
            chat_template=_template(chat_template),
            generation=check_generation(generation),
            input_price=check_price(input_price, "input_price"),
            output_price=check_price(output_price, "output_price"),
            description=description,
            meta=dict(meta or {}),
            created_at=utcnow(),
        )
        try:
            with self.catalog.session() as s:
                if s.scalar(select(LocalModelRecord.id).where(LocalModelRecord.name == name)) is not None:
                    raise Conflict(
                        f"a local model named {name!r} already exists: delete it first, or pick another name"
                    )
                s.add(rec)
                s.flush()
                return _info(rec)
        except IntegrityError:
            raise Conflict(f"a local model named {name!r} already exists") from None

    def lookup(self, name: str) -> LocalModel | None:
        """The model `local/<name>` runs (the catalog's, else the configured one), or None."""
        if self.catalog is not None:
            with self.catalog.session() as s:
                rec = s.scalar(select(LocalModelRecord).where(LocalModelRecord.name == name))
                if rec is not None:
                    return _info(rec)
        return self.configured.get(name)

    def get(self, name_or_id: str) -> LocalModel:
        if self.catalog is not None:
            with self.catalog.session() as s:
                rec = s.scalar(
                    select(LocalModelRecord).where(
                        or_(LocalModelRecord.name == name_or_id, LocalModelRecord.id == name_or_id)
                    )
                )
                if rec is not None:
                    return _info(rec)
        m = self.configured.get(name_or_id)
        if m is None:
            raise NotFound(f"no local model {name_or_id!r} (neither registered nor in {ENV_VAR})")
        return m

    def list(self) -> list[LocalModel]:
        """Registered models, then configured ones not shadowed by a registered name, by name."""
        out: dict[str, LocalModel] = {}
        if self.catalog is not None:
            with self.catalog.session() as s:
                for rec in s.scalars(select(LocalModelRecord).order_by(LocalModelRecord.name)):
                    out[rec.name] = _info(rec)
        for name, m in self.configured.items():
            out.setdefault(name, m)
        return [out[k] for k in sorted(out)]

    def delete(self, name_or_id: str) -> None:
        """Remove a registered model (its files are left where they are)."""
        if self.catalog is not None:
            with self.catalog.session() as s:
                rec = s.scalar(
                    select(LocalModelRecord).where(
                        or_(LocalModelRecord.name == name_or_id, LocalModelRecord.id == name_or_id)
                    )
                )
                if rec is not None:
                    s.delete(rec)
                    return
        if name_or_id in self.configured:
            raise Conflict(f"local model {name_or_id!r} is defined in {ENV_VAR}: remove it there")
        raise NotFound(f"no local model {name_or_id!r}")


def with_registry(endpoints: dict[str, Endpoint], registry: LocalModelService) -> dict[str, Endpoint]:
    """The endpoints, with every `local` one given the registry its provider looks models up in."""
    return {
        name: dataclasses.replace(ep, options={**ep.options, "registry": registry})
        if ep.kind == "local"
        else ep
        for name, ep in endpoints.items()
    }


def _utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _info(rec: LocalModelRecord) -> LocalModel:
    return LocalModel(
        name=rec.name,
        base_model=rec.base_model,
        adapter=rec.adapter,
        chat_template=rec.chat_template,
        generation=dict(rec.generation or {}),
        input_price=rec.input_price,
        output_price=rec.output_price,
        description=rec.description,
        meta=dict(rec.meta or {}),
        source="catalog",
        id=rec.id,
        created_at=_utc(rec.created_at),
    )
