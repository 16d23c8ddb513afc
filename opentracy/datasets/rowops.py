"""Rows of a version: paged, filtered reads, and add / edit / delete in the active version."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import msgspec
import pyarrow as pa
from pydantic import ValidationError

from opentracy.datasets._core import (
    DatasetCore,
    _row_out,
    label,
    retry_stale,
)
from opentracy.datasets.models import (
    RowIn,
    RowOut,
    RowPage,
    VersionInfo,
)
from opentracy.datasets.rows import check_messages, check_metadata
from opentracy.errors import Conflict, InvalidInput, NotFound
from opentracy.store.segments import (
    INPUT_SCHEMA,
    Manifest,
    duck,
    version_sql,
    write_segment,
)

_encode = msgspec.json.Encoder().encode


class RowsMixin(DatasetCore):
    def rows(
        self,
        name: str,
        version: int | str | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
        q: str | None = None,
        tags: list[str] | None = None,
        where: dict[str, str] | None = None,
        row_ids: list[str] | None = None,
    ) -> RowPage:
        """A page of rows in order, filtered by text (prompt or response), tags and metadata fields."""
        limit = max(1, min(int(limit), 1000))
        info, sql = self._read_sql(name, version)
        conds, params = self._filters(q, tags, where, row_ids)
        page_conds, page_params = list(conds), list(params)
        if cursor:
            try:
                after = int(cursor)
            except ValueError:
                raise InvalidInput(f"bad cursor {cursor!r}") from None
            page_conds.append("ord > ?")
            page_params.append(after)
        where_sql = " AND ".join(page_conds) or "true"
        con = duck()
        try:
            # The total: the catalog knows it unless a filter applies. A filtered count scans the version, so
            # it is kept for the next pages: the SQL names the version's content-addressed segments, so the key
            # changes whenever its rows do.
            if conds:
                key = json.dumps([sql, conds, params], default=str)
                total = self._totals.get(key)
                if total is None:
                    total = con.execute(
                        f"SELECT count(*) FROM ({sql}) WHERE {' AND '.join(conds)}", params
                    ).fetchall()[0][0]
                    self._totals.put(key, total)
            else:
                total = info.row_count
            # Late materialisation: find the page's positions reading only what the filters need, then
            # fetch just those rows (Parquet row-group statistics on `ord` skip the rest).
            ords = [
                r[0]
                for r in con.execute(
                    f"SELECT ord FROM ({sql}) WHERE {where_sql} ORDER BY ord LIMIT {limit + 1}", page_params
                ).fetchall()
            ]
            got = []
            if ords:
                _, fetch_sql = self._read_sql(
                    name, version, scan_filter="ord BETWEEN ? AND ? AND list_contains(?, ord)"
                )
                got = con.execute(
                    f"SELECT row_id, ord, prompt, prompt_messages, response, metadata FROM ({fetch_sql}) ORDER BY ord",
                    [ords[0], ords[-1], ords],
                ).fetchall()
        finally:
            con.close()
        more = len(got) > limit
        got = got[:limit]
        return RowPage(
            rows=[_row_out(r) for r in got],
            next_cursor=str(got[-1][1]) if more and got else None,
            total=int(total),
        )

    @staticmethod
    def _filters(
        q: str | None, tags: list[str] | None, where: dict[str, str] | None, row_ids: list[str] | None
    ) -> tuple[list[str], list[Any]]:
        conds: list[str] = []
        params: list[Any] = []
        if q:
            conds.append("(prompt ILIKE ? OR response ILIKE ?)")
            pat = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            conds[-1] = "(prompt ILIKE ? ESCAPE '\\' OR response ILIKE ? ESCAPE '\\')"
            params += [pat, pat]
        for t in tags or []:
            conds.append("list_contains(CAST(json_extract(metadata, '$.tags') AS VARCHAR[]), ?)")
            params.append(t)
        for key, value in (where or {}).items():
            if not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", key):
                raise InvalidInput(
                    f"bad metadata field {key!r}: use names like 'cluster_id' or 'source.kind'"
                )
            conds.append(f"json_extract_string(metadata, '$.{key}') = ?")
            params.append(str(value))
        if row_ids:
            conds.append("list_contains(?, row_id)")
            params.append(list(row_ids))
        return conds, params

    def get_row(self, name: str, row_id: str, version: int | str | None = None) -> RowOut:
        page = self.rows(name, version, limit=1, row_ids=[row_id])
        if not page.rows:
            raise NotFound(f"no row {row_id!r} in {self.version(name, version).label}")
        return page.rows[0]

    def iter_rows(
        self, name: str, version: int | str | None = None, *, batch_size: int = 10_000
    ) -> Iterator[RowOut]:
        for rb in self.iter_arrow(name, version, batch_size=batch_size):
            for r in zip(*(rb.column(i).to_pylist() for i in range(rb.num_columns)), strict=True):
                yield _row_out(r)

    def iter_arrow(
        self,
        name: str,
        version: int | str | None = None,
        *,
        batch_size: int = 50_000,
        columns: str | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Live rows in order as Arrow batches: row_id, ord, prompt, prompt_messages, response, metadata."""
        _, sql = self._read_sql(name, version)
        cols = columns or "row_id, ord, prompt, prompt_messages, response, metadata"
        con = duck()
        try:
            yield from con.sql(f"SELECT {cols} FROM ({sql}) ORDER BY ord").to_arrow_reader(
                batch_size=batch_size
            )
        finally:
            con.close()

    @retry_stale
    def add_rows(
        self, name: str, rows: list[RowIn | dict[str, Any]], version: int | str | None = None
    ) -> VersionInfo:
        parsed = [r if isinstance(r, RowIn) else _row_in(r, i + 1) for i, r in enumerate(rows)]
        if not parsed:
            raise InvalidInput("no rows to add")
        for i, r in enumerate(parsed, 1):
            _validate_row(r, i)
        ids = [r.row_id for r in parsed if r.row_id]
        dup = _first_duplicate(ids)
        if dup:
            raise InvalidInput(f"row_id {dup!r} appears twice in the request")
        with self.catalog.session() as s:
            ds = self._dataset(s, name)
            v = self._active(s, ds, version)
            manifest, dsid, rev = Manifest.of(v.manifest or []), ds.id, v.revision
        if ids:
            existing = self._existing(manifest, ids)
            if existing:
                raise Conflict(
                    f"row ids already in the version: {', '.join(sorted(existing)[:5])}; edit them instead of adding"
                )
        seq = self._reserve_write_seq(dsid)
        table = _rows_table(parsed, seq)
        seg = write_segment(self.artifacts, [table], id_salt=dsid, kind="delta")
        clusters = [r.metadata.get("cluster_id") for r in parsed if r.metadata.get("cluster_id") is not None]
        return self._append_segment(
            name, v.id, seg, added=len(parsed), clusters=clusters, expected_revision=rev
        )

    def update_row(
        self,
        name: str,
        row_id: str,
        *,
        prompt: Any = None,
        response: str | None = None,
        metadata: dict[str, Any] | None = None,
        version: int | str | None = None,
    ) -> RowOut:
        """Edit one row in place (it keeps its id and position); unspecified fields stay as they were."""
        return self.update_rows(
            name,
            [{"row_id": row_id, "prompt": prompt, "response": response, "metadata": metadata}],
            version=version,
        )[0]

    @retry_stale
    def update_rows(
        self, name: str, changes: list[dict[str, Any]], version: int | str | None = None
    ) -> list[RowOut]:
        if not changes:
            raise InvalidInput("no rows to update")
        ids = [c.get("row_id") for c in changes]
        if any(not isinstance(i, str) or not i for i in ids):
            raise InvalidInput("every update needs a row_id")
        dup = _first_duplicate(ids)  # type: ignore[arg-type]
        if dup:
            raise InvalidInput(f"row_id {dup!r} appears twice in the request")
        for n, c in enumerate(changes, 1):
            # A misspelled field ("respone") would otherwise leave the row as it was and report success.
            extra = sorted(set(c) - set(_ROW_FIELDS))
            if extra:
                raise InvalidInput(_unknown_field(extra[0]), row=n)
            if all(c.get(k) is None for k in ("prompt", "response", "metadata")):
                raise InvalidInput(
                    f"nothing to change in row {c['row_id']!r}: give its new prompt, response or metadata",
                    row=n,
                )
        with self.catalog.session() as s:
            ds = self._dataset(s, name)
            v = self._active(s, ds, version)
            manifest, dsid, rev = Manifest.of(v.manifest or []), ds.id, v.revision
        current = {r.row_id: (r, o) for r, o in self._fetch(manifest, ids)}  # type: ignore[arg-type]
        missing = [i for i in ids if i not in current]
        if missing:
            raise NotFound(f"no row {missing[0]!r} in {label(name, self.version(name, version).number)}")
        new_rows: list[tuple[RowIn, int]] = []
        for n, c in enumerate(changes, 1):
            old, ordv = current[c["row_id"]]
            r = RowIn(
                row_id=old.row_id,
                prompt=c["prompt"] if c.get("prompt") is not None else old.prompt,
                response=c["response"] if c.get("response") is not None else old.response,
                metadata=c["metadata"] if c.get("metadata") is not None else old.metadata,
            )
            _validate_row(r, n)
            new_rows.append((r, ordv))
        table = _rows_table([r for r, _ in new_rows], 0, ords=[o for _, o in new_rows])
        seg = write_segment(self.artifacts, [table], id_salt=dsid, kind="delta")
        clusters = [
            r.metadata.get("cluster_id") for r, _ in new_rows if r.metadata.get("cluster_id") is not None
        ]
        self._append_segment(name, v.id, seg, added=0, clusters=clusters, expected_revision=rev)
        return [
            RowOut(row_id=r.row_id or "", prompt=r.prompt, response=r.response, metadata=r.metadata)
            for r, _ in new_rows
        ]

    @retry_stale
    def delete_rows(self, name: str, row_ids: list[str], version: int | str | None = None) -> VersionInfo:
        if not row_ids:
            raise InvalidInput("no row ids to delete")
        ids = list(dict.fromkeys(row_ids))
        with self.catalog.session() as s:
            ds = self._dataset(s, name)
            v = self._active(s, ds, version)
            manifest, dsid, rev = Manifest.of(v.manifest or []), ds.id, v.revision
        found = self._existing(manifest, ids)
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound(f"no row {missing[0]!r} in {label(name, v.number)}; nothing was deleted")
        n = len(ids)
        table = pa.table(
            {
                "row_id": pa.array(ids, pa.string()),
                "ord": pa.array([0] * n, pa.int64()),
                "prompt": pa.array([""] * n, pa.string()),
                "prompt_messages": pa.array([False] * n, pa.bool_()),
                "response": pa.array([""] * n, pa.string()),
                "metadata": pa.array(["{}"] * n, pa.string()),
                "deleted": pa.array([True] * n, pa.bool_()),
            },
            schema=INPUT_SCHEMA,
        )
        seg = write_segment(self.artifacts, [table], id_salt=dsid, kind="delta")
        return self._append_segment(
            name, v.id, seg, added=-n, clusters=[], recount_clusters=True, expected_revision=rev
        )

    def _existing(self, manifest: Manifest, ids: list[str]) -> set[str]:
        if not manifest.segments:
            return set()
        con = duck()
        try:
            sql = version_sql(
                self.artifacts,
                manifest,
                verify=True,
                columns="row_id",
                scan_filter="list_contains(?, row_id)",
            )
            got = con.execute(sql, [ids]).fetchall()
        finally:
            con.close()
        return {r[0] for r in got}

    def _fetch(self, manifest: Manifest, ids: list[str]) -> list[tuple[RowOut, int]]:
        if not manifest.segments:
            return []
        con = duck()
        try:
            sql = version_sql(
                self.artifacts,
                manifest,
                verify=True,
                columns="row_id, ord, prompt, prompt_messages, response, metadata",
                scan_filter="list_contains(?, row_id)",
            )
            got = con.execute(sql, [ids]).fetchall()
        finally:
            con.close()
        return [(_row_out(r), int(r[1])) for r in got]


_ROW_FIELDS = ("row_id", "prompt", "response", "metadata")


def _unknown_field(field: str) -> str:
    return f"unknown field {field!r}: a row has {', '.join(_ROW_FIELDS)} (put your own fields under metadata)"


def _row_in(d: dict[str, Any], n: int) -> RowIn:
    if not isinstance(d, dict):
        raise InvalidInput("each row must be an object with prompt, response and metadata", row=n)
    try:
        return RowIn.model_validate(d, strict=True)
    except ValidationError as e:
        raise InvalidInput(_validation_message(e), row=n) from None


def _validation_message(e: ValidationError) -> str:
    """pydantic's first problem in one line: `field 'response': Input should be a valid string`."""
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return _unknown_field(where)
    if err["type"] == "missing":
        return f"missing {where}"
    return f"field {where!r}: {err['msg']}" if where else str(err["msg"])


def _validate_row(r: RowIn, n: int) -> None:
    if isinstance(r.prompt, list):
        problem = check_messages(r.prompt)
        if problem:
            raise InvalidInput(f"prompt: {problem}", row=n)
    problem = check_metadata(r.metadata)
    if problem:
        raise InvalidInput(problem, row=n)
    if r.row_id is not None and not r.row_id:
        raise InvalidInput("row_id must not be empty", row=n)


def _first_duplicate(ids: list[str]) -> str | None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            return i
        seen.add(i)
    return None


def _rows_table(rows: list[RowIn], seq: int, *, ords: list[int] | None = None) -> pa.Table:
    base = seq << 32
    n = len(rows)
    return pa.table(
        {
            "row_id": pa.array([r.row_id for r in rows], pa.string()),
            "ord": pa.array(ords if ords is not None else [base + i for i in range(n)], pa.int64()),
            "prompt": pa.array(
                [r.prompt if isinstance(r.prompt, str) else _encode(r.prompt).decode() for r in rows]
            ),
            "prompt_messages": pa.array([not isinstance(r.prompt, str) for r in rows], pa.bool_()),
            "response": pa.array([r.response for r in rows], pa.string()),
            "metadata": pa.array([_encode(r.metadata).decode() for r in rows], pa.string()),
            "deleted": pa.array([False] * n, pa.bool_()),
        },
        schema=INPUT_SCHEMA,
    )
