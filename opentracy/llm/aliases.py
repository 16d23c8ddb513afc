"""Aliases: named pointers to models, stored in the catalog with their history.

    aliases.set("ticket-classifier", "openai/gpt-4o", by="ana", reason="baseline")
    aliases.resolve("ticket-classifier")   # ("openai/gpt-4o", "ticket-classifier")
    aliases.resolve("openai/gpt-4o-mini")  # ("openai/gpt-4o-mini", None)

An alias points at a model string (`provider/model`) or at another alias; `resolve` follows the chain.
Every change (create, repoint, delete) appends a history entry saying who, when, why, and old → new. The
history outlives the alias: a deleted alias keeps it, and a name created again continues it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from opentracy.errors import Conflict, InvalidInput, NotFound
from opentracy.names import NAME_RE
from opentracy.store.catalog import Catalog
from opentracy.store.tables import AliasHistoryRecord, AliasRecord, utcnow

# Same rule as dataset names; no "/", so an alias can never be mistaken for a model string.
# provider/model: the provider is a plain name, the model anything without spaces (it may hold more
# slashes and colons: `together/meta-llama/Llama-3.3-70B`, `ollama/llama3:8b`).
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}/[^\s/][^\s]{0,299}$")
MAX_CHAIN = 32


class AliasChange(BaseModel):
    """One entry of an alias's history."""

    action: Literal["create", "repoint", "delete"]
    at: datetime
    by: str | None = None
    reason: str | None = None
    old_target: str | None = None
    new_target: str | None = None


class AliasInfo(BaseModel):
    name: str
    target: str
    created_at: datetime
    updated_at: datetime
    resolved: str | None = None  # the model string at the end of the chain (filled by `get`)
    history: list[AliasChange] | None = None  # oldest first (filled by `get`)


def is_model_string(s: str) -> bool:
    return MODEL_RE.match(s) is not None


class AliasService:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    # -- checks ------------------------------------------------------------------------------------
    @staticmethod
    def check_name(name: str) -> None:
        if not NAME_RE.match(name or ""):
            raise InvalidInput(
                f"invalid alias name {name!r}: use letters, digits, '.', '_' or '-' (at most 200, no '/'), "
                "starting with a letter or digit"
            )

    @staticmethod
    def _check_text(what: str, value: str | None, limit: int) -> str | None:
        if value is not None and len(value) > limit:
            raise InvalidInput(f"{what} is too long ({len(value)} characters; at most {limit})")
        return value

    # -- reads -------------------------------------------------------------------------------------
    def get(self, name: str) -> AliasInfo:
        """The alias, the model it resolves to and its history."""
        with self.catalog.session() as s:
            rec = s.get(AliasRecord, name)
            if rec is None:
                raise NotFound(f"no alias {name!r}")
            info = _info(rec)
            info.history = _history(s, name)
        try:
            info.resolved = self.resolve(name)[0]
        except (NotFound, InvalidInput):
            info.resolved = None  # a broken chain is shown, not hidden: `resolve` says what is wrong
        return info

    def list(self) -> list[AliasInfo]:
        with self.catalog.session() as s:
            return [_info(r) for r in s.scalars(select(AliasRecord).order_by(AliasRecord.name))]

    def history(self, name: str) -> list[dict[str, Any]]:
        """Every change of `name`, oldest first, including those before a delete."""
        with self.catalog.session() as s:
            items = _history(s, name)
            if not items and s.get(AliasRecord, name) is None:
                raise NotFound(f"no alias {name!r} and no history for that name")
        return [c.model_dump() for c in items]

    def resolve(self, model_or_alias: str) -> tuple[str, str | None]:
        """(model string, alias name or None). A `provider/model` string passes through untouched; an alias
        is followed (through other aliases) to the model string it points at."""
        s_in = (model_or_alias or "").strip()
        if "/" in s_in:
            return s_in, None
        if not s_in:
            raise InvalidInput("empty model: expected a model string provider/model or an alias")
        chain = [s_in]
        with self.catalog.session() as s:
            current = s_in
            while True:
                rec = s.get(AliasRecord, current)
                if rec is None:
                    if current == s_in:
                        raise NotFound(
                            f"unknown model {s_in!r}: not a model string provider/model (e.g. openai/gpt-4o) "
                            "and not an alias"
                        )
                    raise NotFound(
                        f"alias {s_in!r} leads to {current!r} ({' → '.join(chain)}), which is neither a model "
                        "string provider/model nor an alias"
                    )
                target = rec.target
                if "/" in target:
                    return target, s_in
                if target in chain:
                    raise InvalidInput(f"alias cycle: {' → '.join([*chain, target])}")
                chain.append(target)
                if len(chain) > MAX_CHAIN:
                    raise InvalidInput(f"alias chain longer than {MAX_CHAIN}: {' → '.join(chain[:5])} → …")
                current = target

    # -- writes ------------------------------------------------------------------------------------
    def set(self, name: str, target: str, *, by: str | None = None, reason: str | None = None) -> AliasInfo:
        """Create `name` or repoint it at `target` (a `provider/model` string or an existing alias).
        Setting the target it already has changes nothing and records nothing."""
        self.check_name(name)
        target = (target or "").strip()
        self._check_text("by", by, 200)
        self._check_text("reason", reason, 10_000)
        if "/" in target:
            if not is_model_string(target):
                raise InvalidInput(
                    f"invalid target {target!r}: expected a model string provider/model (e.g. openai/gpt-4o)"
                )
        elif not NAME_RE.match(target):
            raise InvalidInput(
                f"invalid target {target!r}: expected a model string provider/model (e.g. openai/gpt-4o) "
                "or the name of an alias"
            )
        for _attempt in range(3):  # a concurrent create of the same name: retry as a repoint
            try:
                return self._set(name, target, by, reason)
            except IntegrityError:
                continue
        raise Conflict(f"alias {name!r} is being changed concurrently; try again")

    def _set(self, name: str, target: str, by: str | None, reason: str | None) -> AliasInfo:
        with self.catalog.session() as s:
            if "/" not in target:
                self._check_chain(s, name, target)
            rec = s.get(AliasRecord, name)
            now = utcnow()
            if rec is not None and rec.target == target:
                return _info(rec)
            old = rec.target if rec is not None else None
            if rec is None:
                rec = AliasRecord(name=name, target=target, created_at=now, updated_at=now)
                s.add(rec)
            else:
                rec.target = target
                rec.updated_at = now
            s.add(
                AliasHistoryRecord(
                    alias=name,
                    action="create" if old is None else "repoint",
                    at=now,
                    by=by,
                    reason=reason,
                    old_target=old,
                    new_target=target,
                )
            )
            s.flush()
            return _info(rec)

    @staticmethod
    def _check_chain(s: Any, name: str, target: str) -> None:
        """`target` names an alias: it must exist, and pointing `name` at it must not close a loop."""
        if target == name:
            raise InvalidInput(f"alias cycle: {name} → {name}")
        chain = [name, target]
        current = target
        while True:
            rec = s.get(AliasRecord, current)
            if rec is None:
                if current == target:
                    raise InvalidInput(
                        f"invalid target {target!r}: not a model string provider/model (e.g. openai/gpt-4o) "
                        "and not an alias"
                    )
                return  # an existing alias with a broken chain further on: `resolve` reports it
            if "/" in rec.target:
                return
            if rec.target in chain:
                raise InvalidInput(f"alias cycle: {' → '.join([*chain, rec.target])}")
            chain.append(rec.target)
            if len(chain) > MAX_CHAIN:
                raise InvalidInput(f"alias chain longer than {MAX_CHAIN}: {' → '.join(chain[:5])} → …")
            current = rec.target

    def delete(self, name: str, *, by: str | None = None, reason: str | None = None) -> None:
        """Delete an alias; the deletion is recorded in its history. Refused (Conflict) while other aliases
        point at it, so no chain is left dangling."""
        self._check_text("by", by, 200)
        self._check_text("reason", reason, 10_000)
        with self.catalog.session() as s:
            rec = s.get(AliasRecord, name)
            if rec is None:
                raise NotFound(f"no alias {name!r}")
            users = list(s.scalars(select(AliasRecord.name).where(AliasRecord.target == name)))
            if users:
                raise Conflict(
                    f"alias {name!r} is the target of {', '.join(repr(u) for u in sorted(users))}: "
                    "repoint or delete those first"
                )
            s.add(
                AliasHistoryRecord(
                    alias=name,
                    action="delete",
                    at=utcnow(),
                    by=by,
                    reason=reason,
                    old_target=rec.target,
                    new_target=None,
                )
            )
            s.delete(rec)


def _utc(dt: datetime) -> datetime:
    # SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones. Callers get aware ones.
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _info(rec: AliasRecord) -> AliasInfo:
    return AliasInfo(
        name=rec.name, target=rec.target, created_at=_utc(rec.created_at), updated_at=_utc(rec.updated_at)
    )


def _history(s: Any, name: str) -> list[AliasChange]:
    q = select(AliasHistoryRecord).where(AliasHistoryRecord.alias == name).order_by(AliasHistoryRecord.id)
    return [
        AliasChange(
            action=h.action,  # type: ignore[arg-type]
            at=_utc(h.at),
            by=h.by,
            reason=h.reason,
            old_target=h.old_target,
            new_target=h.new_target,
        )
        for h in s.scalars(q)
    ]
