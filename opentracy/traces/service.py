"""Traces in the catalog: batched ingest, filtered and paginated reads, and traces → dataset rows."""

from __future__ import annotations

import base64
import json
import operator
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec
from pydantic import BaseModel, ConfigDict
from sqlalchemy import and_, func, or_, select

from opentracy.errors import InvalidInput, NotFound
from opentracy.store.catalog import Catalog
from opentracy.store.tables import TraceRecord, TraceTagRecord
from opentracy.traces.schema import IngestResult, TraceIn, TraceOut, TracePage, to_row

T = TraceRecord.__table__
TAGS = TraceTagRecord.__table__
_decode_many = msgspec.json.Decoder(list[TraceIn]).decode
_decode_one = msgspec.json.Decoder(TraceIn).decode
_dec = msgspec.json.Decoder().decode
_convert_one = TraceIn  # msgspec.convert target

# Sort keys: name → (column expression, the value a NULL sorts as)
SORTS = {
    "started_at": (T.c.started_at, None),
    "latency": (T.c.latency_ms, -1.0),
    "cost": (T.c.cost_usd, -1.0),
    "tokens": (func.coalesce(T.c.input_tokens, 0) + func.coalesce(T.c.output_tokens, 0), None),
}
CHUNK = 500  # ids per IN (...) query


class TraceFilter(BaseModel):
    """Which traces: every field given must match (tags: all of them). An unknown field is refused: ignored,
    a misspelled one would match every trace (and a promotion would take them all)."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] | None = None
    model: str | None = None
    provider: str | None = None
    alias: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    tags: list[str] = []
    meta: dict[str, str] = {}
    error: bool | None = None
    finish_reason: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    source: str | None = None
    q: str | None = None


def _like(s: str) -> str:
    return "%" + s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class TraceService:
    def __init__(self, catalog: Catalog, pricing: Any = None) -> None:
        self.catalog = catalog
        self.pricing = pricing
        # Called with the rows each insert stored (e.g. clustering embeds them at ingest); must be quick and
        # must not raise. Fired after the commit, or, for a caller's own transaction (imports), before it.
        self.on_insert: list[Callable[[list[dict[str, Any]]], None]] = []

    # -- writes ------------------------------------------------------------------------------------
    def parse(self, body: bytes | str | list[Any] | dict[str, Any]) -> list[TraceIn]:
        """A batch as sent to the API: a JSON list of traces, one trace, or {"traces": [...]}."""
        try:
            if isinstance(body, bytes | str):
                raw = body.encode() if isinstance(body, str) else body
                head = raw.lstrip()[:1]
                if head == b"[":
                    return _decode_many(raw)
                obj = _dec(raw)
            else:
                obj = body
            if isinstance(obj, dict) and "traces" in obj and "model" not in obj:
                obj = obj["traces"]
            if isinstance(obj, dict):
                return [msgspec.convert(obj, TraceIn)]
            if not isinstance(obj, list):
                raise InvalidInput('expected a trace, a list of traces or {"traces": [...]}')
            out = []
            for i, o in enumerate(obj):
                try:
                    out.append(msgspec.convert(o, TraceIn))
                except msgspec.ValidationError as e:
                    raise InvalidInput(f"trace {i + 1}: {e}", row=None) from None
            return out
        except msgspec.ValidationError as e:
            # msgspec names the path: "Expected `str`, got `int` - at `$[3].model`"
            raise InvalidInput(f"invalid trace: {e}") from None
        except msgspec.DecodeError as e:
            raise InvalidInput(f"the body is not valid JSON: {e}") from None

    def ingest(
        self,
        traces: Iterable[TraceIn | dict[str, Any]],
        *,
        source: str = "api",
        on_error: str = "raise",
    ) -> IngestResult:
        """Validate and store a batch in one transaction. A bad trace is an error naming its position (and
        nothing is written), unless on_error="skip". Ids already stored are not written again (counted as
        duplicates), so re-sending a batch is harmless."""
        rows: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        seen: dict[str, int] = {}
        now = datetime.now(UTC)
        for i, t in enumerate(traces, 1):
            try:
                if isinstance(t, dict):
                    t = msgspec.convert(t, TraceIn)
                row = to_row(t, source=source, now=now, pricing=self.pricing)
            except (ValueError, msgspec.ValidationError) as e:
                if on_error == "skip":
                    skipped.append({"item": i, "error": str(e)})
                    continue
                raise InvalidInput(f"trace {i}: {e}") from None
            first = seen.setdefault(row["id"], i)
            if first != i:
                raise InvalidInput(
                    f"trace {i}: trace_id {row['id']!r} appears twice in the batch (first: trace {first})"
                )
            rows.append(row)
        inserted, dups = self.insert_rows(rows)
        return IngestResult(
            inserted=len(inserted),
            duplicates=dups,
            trace_ids=[r["id"] for r in rows],
            skipped=len(skipped),
            skipped_items=skipped[:100],
        )

    def insert_rows(self, rows: list[dict[str, Any]], conn: Any = None) -> tuple[list[dict[str, Any]], int]:
        """Insert prepared rows (and their tags) in one transaction; rows whose id is already stored are
        left out. Returns (inserted rows, number left out).

        Listeners (`on_insert`) hear of the rows once they are committed: here when this call owns the
        transaction; with a caller's `conn`, the caller commits and then calls `notify_stored`."""
        if not rows:
            return [], 0
        if conn is None:
            with self.catalog.engine.begin() as c:
                got = self._insert_rows(rows, c)
            self._notify(got[0])
            return got
        return self._insert_rows(rows, conn)

    def notify_stored(self, ids: list[str]) -> None:
        """Tell the listeners about traces a caller's transaction committed (read back in chunks)."""
        if not self.on_insert:
            return
        for k in range(0, len(ids), CHUNK):
            with self.catalog.engine.connect() as c:
                got = c.execute(select(T.c.id, T.c.request).where(T.c.id.in_(ids[k : k + CHUNK]))).all()
            self._notify([{"id": i, "request": r} for i, r in got])

    def _notify(self, new: list[dict[str, Any]]) -> None:
        for fn in self.on_insert if new else ():
            try:
                fn(new)
            except Exception:  # a listener's bug must not fail an insert that succeeded
                import logging

                logging.getLogger("opentracy.traces").exception("an on_insert listener failed")

    def _insert_rows(self, rows: list[dict[str, Any]], conn: Any) -> tuple[list[dict[str, Any]], int]:
        ids = [r["id"] for r in rows if not r.get("_new_id")]  # only ids a caller chose can be stored already
        existing: set[str] = set()
        for k in range(0, len(ids), CHUNK):
            existing.update(conn.execute(select(T.c.id).where(T.c.id.in_(ids[k : k + CHUNK]))).scalars())
        new = [r for r in rows if r["id"] not in existing] if existing else rows
        if new:
            # Straight to the driver's executemany: SQLAlchemy's per-row parameter processing cost more than
            # the database's own work here (bench/traces.py).
            sqlite = conn.dialect.name == "sqlite"
            mark = "?" if sqlite else "%s"
            cols = ", ".join(f'"{c}"' for c in COLUMNS)
            memo: list[Any] = [None, None]
            conn.exec_driver_sql(
                f"INSERT INTO traces ({cols}) VALUES ({', '.join([mark] * len(COLUMNS))})",
                [_tuple(r, sqlite, memo) for r in new],
            )
            tags = [(r["id"], tag) for r in new for tag in r["tags"]]
            if tags:
                conn.exec_driver_sql(f"INSERT INTO trace_tags (trace_id, tag) VALUES ({mark}, {mark})", tags)
        return new, len(rows) - len(new)

    # -- reads -------------------------------------------------------------------------------------
    def get(self, trace_id: str) -> TraceOut:
        with self.catalog.engine.connect() as c:
            r = c.execute(select(T).where(T.c.id == trace_id)).mappings().first()
        if r is None:
            raise NotFound(f"no trace {trace_id!r}")
        return _out(r)

    def _conds(self, f: TraceFilter) -> list[Any]:
        c: list[Any] = []
        if f.ids is not None:
            c.append(T.c.id.in_(f.ids))
        for col, v in (
            (T.c.model, f.model),
            (T.c.provider, f.provider),
            (T.c.alias, f.alias),
            (T.c.finish_reason, f.finish_reason),
            (T.c.user_id, f.user_id),
            (T.c.session_id, f.session_id),
            (T.c.source, f.source),
        ):
            if v is not None:
                c.append(col == v)
        if f.since is not None:
            c.append(T.c.started_at >= _aware(f.since))
        if f.until is not None:
            c.append(T.c.started_at < _aware(f.until))
        if f.error is not None:
            c.append(T.c.is_error == f.error)  # `= 1` / `= true`: what the partial index of errors says
        for tag in f.tags:
            c.append(T.c.id.in_(select(TAGS.c.trace_id).where(TAGS.c.tag == tag)))
        for k, v in f.meta.items():
            if not k or len(k) > 200:
                raise InvalidInput(f"bad metadata field {k!r}")
            c.append(T.c["metadata"][k].as_string() == v)
        if f.q:
            pat = _like(f.q)
            c.append(or_(T.c.prompt_text.ilike(pat, escape="\\"), T.c.response_text.ilike(pat, escape="\\")))
        return c

    def list(
        self,
        f: TraceFilter | None = None,
        *,
        sort: str = "-started_at",
        limit: int = 50,
        cursor: str | None = None,
    ) -> TracePage:
        """A page of traces, newest first by default; `next_cursor` continues it (keyset pagination, so
        pages stay correct while traces arrive)."""
        f = f or TraceFilter()
        limit = max(1, min(int(limit), 1000))
        desc = sort.startswith("-")
        key = sort.lstrip("-+")
        if key not in SORTS:
            raise InvalidInput(
                f"unknown sort {sort!r}; use one of {', '.join(SORTS)} (prefix - for descending)"
            )
        col, null_as = SORTS[key]
        expr = func.coalesce(col, null_as) if null_as is not None else col
        conds = self._conds(f)
        if cursor:
            val, last_id = _cursor_in(cursor, key)
            if desc:
                conds.append(or_(expr < val, and_(expr == val, T.c.id < last_id)))
            else:
                conds.append(or_(expr > val, and_(expr == val, T.c.id > last_id)))
        order = [expr.desc(), T.c.id.desc()] if desc else [expr.asc(), T.c.id.asc()]
        q = select(T, expr.label("_sort")).where(*conds).order_by(*order).limit(limit + 1)
        with self.catalog.engine.connect() as c:
            rows = list(c.execute(q).mappings())
        more = len(rows) > limit
        rows = rows[:limit]
        nxt = _cursor_out(rows[-1]["_sort"], rows[-1]["id"], key) if more and rows else None
        return TracePage(items=[_out(r) for r in rows], next_cursor=nxt)

    def count(self, f: TraceFilter | None = None) -> int:
        with self.catalog.engine.connect() as c:
            return int(
                c.execute(
                    select(func.count()).select_from(T).where(*self._conds(f or TraceFilter()))
                ).scalar()
            )

    def iter(
        self, f: TraceFilter | None = None, *, batch: int = 1000, sort: str = "started_at"
    ) -> Iterator[TraceOut]:
        """Every matching trace, oldest first, in batches (constant memory)."""
        cursor = None
        while True:
            page = self.list(f, sort=sort, limit=batch, cursor=cursor)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor


COLUMNS = [c.name for c in T.columns]
_enc = msgspec.json.Encoder().encode


_get = operator.itemgetter(*COLUMNS)
_I_STARTED, _I_ENDED, _I_CREATED = (COLUMNS.index(c) for c in ("started_at", "ended_at", "created_at"))
_I_ERROR, _I_TAGS, _I_META = (COLUMNS.index(c) for c in ("is_error", "tags", "metadata"))


def _sqlite_dt(d: datetime | None) -> str | None:
    """SQLAlchemy's storage format for DateTime on SQLite: naive UTC, microseconds always."""
    if d is None:
        return None
    if d.tzinfo is not UTC and d.tzinfo is not None:
        d = d.astimezone(UTC)
    return d.replace(tzinfo=None).isoformat(" ", "microseconds")


def _tuple(r: dict[str, Any], sqlite: bool, _memo: list[Any] | None = None) -> tuple[Any, ...]:
    """A row as the driver's parameters. `_memo` ([datetime, its conversion]) spares converting the
    created_at that a whole batch shares."""
    out = list(_get(r))
    out[_I_TAGS] = _enc(out[_I_TAGS]).decode()
    out[_I_META] = _enc(out[_I_META]).decode()
    created = out[_I_CREATED]
    if sqlite:
        out[_I_ERROR] = 1 if out[_I_ERROR] else 0
        out[_I_STARTED] = _sqlite_dt(out[_I_STARTED])
        out[_I_ENDED] = _sqlite_dt(out[_I_ENDED])
        if _memo is not None and _memo[0] is created:
            out[_I_CREATED] = _memo[1]
        else:
            out[_I_CREATED] = _sqlite_dt(created)
            if _memo is not None:
                _memo[:] = [created, out[_I_CREATED]]
    else:
        out[_I_ERROR] = bool(out[_I_ERROR])
        for i in (_I_STARTED, _I_ENDED, _I_CREATED):
            d = out[i]
            if d is not None and d.tzinfo is None:
                out[i] = d.replace(tzinfo=UTC)
    return tuple(out)


def _aware(d: datetime) -> datetime:
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def _naive_utc(d: Any) -> Any:
    if isinstance(d, datetime) and d.tzinfo is None:
        return d.replace(tzinfo=UTC)
    return d


def _cursor_out(val: Any, last_id: str, key: str) -> str:
    if isinstance(val, datetime):
        v: Any = {"t": _naive_utc(val).isoformat()}
    else:
        v = {"n": val}
    raw = json.dumps({"k": key, **v, "id": last_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor_in(cursor: str, key: str) -> tuple[Any, str]:
    try:
        d = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if d.get("k") != key:
            raise ValueError("cursor of another sort")
        val = datetime.fromisoformat(d["t"]) if "t" in d else d["n"]
        return val, str(d["id"])
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidInput(
            f"bad cursor ({e}): use the next_cursor of the previous page with the same sort"
        ) from None


def _out(r: Any) -> TraceOut:
    return TraceOut(
        trace_id=r["id"],
        started_at=_naive_utc(r["started_at"]),
        ended_at=_naive_utc(r["ended_at"]),
        model=r["model"],
        provider=r["provider"],
        alias=r["alias"],
        request=_dec(r["request"]),
        response=_dec(r["response"]) if r["response"] else None,
        finish_reason=r["finish_reason"],
        error=r["error"],
        status_code=r["status_code"],
        input_tokens=r["input_tokens"],
        output_tokens=r["output_tokens"],
        cost_usd=r["cost_usd"],
        latency_ms=r["latency_ms"],
        ttft_ms=r["ttft_ms"],
        user_id=r["user_id"],
        session_id=r["session_id"],
        tags=r["tags"] or [],
        metadata=r["metadata"] or {},
        source=r["source"],
    )
