"""The datasets core: named datasets, their versions, and the rows in each.

A dataset has at most one active version; only the active version takes writes. Freezing makes a version
immutable and records its content hash; `new_version` starts the next active version from a frozen parent
by copying its manifest, not its rows.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import delete, func, select, update

from opentracy.datasets import formats
from opentracy.datasets.models import (
    DatasetInfo,
    DatasetWarning,
    DiffResult,
    RowIn,
    RowOut,
    RowPage,
    UploadResult,
    VersionInfo,
)
from opentracy.datasets.rows import check_messages, check_metadata
from opentracy.errors import Cancelled, Conflict, InvalidInput, NotFound
from opentracy.store.artifacts import ArtifactStore
from opentracy.store.catalog import Catalog
from opentracy.store.segments import (
    INPUT_SCHEMA,
    ROW_GROUP_ROWS,
    SEGMENT_DICTIONARY,
    SEGMENT_SCHEMA,
    SEGMENT_STATISTICS,
    Manifest,
    SegmentInfo,
    SegmentWriter,
    content_hash,
    duck,
    version_sql,
    write_segment,
)
from opentracy.store.tables import DatasetRecord, VersionRecord, utcnow

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
MIN_DISTILL_ROWS = 200
MAX_SEGMENTS_BEFORE_COMPACTION = 64
_encode = msgspec.json.Encoder().encode

ProgressFn = Callable[[float, str], None]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def label(name: str, number: int) -> str:
    return f"{name}-v{number}"


def warnings_for(
    row_count: int, stats: dict[str, Any], provenance: list[dict[str, Any]]
) -> list[DatasetWarning]:
    """The spec's three 'common mistakes', as warnings on a version."""
    out: list[DatasetWarning] = []
    if row_count < MIN_DISTILL_ROWS:
        out.append(
            DatasetWarning(
                code="too_few_rows",
                message=f"{row_count} rows: don't distill with < {MIN_DISTILL_ROWS} rows; the student tends to "
                "overfit. 500-2000 is the sweet spot for most tasks.",
            )
        )
    clusters = stats.get("cluster_ids") or []
    if len(clusters) > 1:
        shown = ", ".join(str(c) for c in clusters[:5]) + (", …" if len(clusters) > 5 else "")
        out.append(
            DatasetWarning(
                code="mixed_clusters",
                message=f"rows come from {stats.get('cluster_count', len(clusters))} clusters ({shown}): don't mix "
                "unrelated clusters in one dataset; one dataset = one coherent task.",
            )
        )
    curated = [p for p in provenance if p.get("kind") == "curation"]
    if not curated:
        out.append(
            DatasetWarning(
                code="not_curated",
                message="no curation in this version's provenance: don't skip curation on the first run; let the "
                "judge drop failures, refusals and truncated outputs before training.",
            )
        )
    elif any(p.get("judge_skipped") for p in curated[-1:]):
        out.append(DatasetWarning(code="curated_without_judge", message="curated without an LLM judge."))
    return out


def _merge_clusters(stats: dict[str, Any], new: Iterable[Any]) -> dict[str, Any]:
    have = list(stats.get("cluster_ids") or [])
    seen = {json.dumps(c) for c in have}
    for c in new:
        k = json.dumps(c)
        if k not in seen:
            seen.add(k)
            have.append(c)
    have.sort(key=lambda c: (isinstance(c, str), c))
    return {**stats, "cluster_ids": have[:1000], "cluster_count": len(have)}


def parse_version_ref(name: str, ref: int | str | None) -> int | None:
    """Accept 3, "3", "v3" or "name-v3"; None means the latest version."""
    if ref is None or ref == "" or ref == "latest":
        return None
    if isinstance(ref, int):
        return ref
    s = str(ref)
    if s.startswith(name + "-v"):
        s = s[len(name) + 2 :]
    elif s.startswith("v"):
        s = s[1:]
    if "@" in s:
        s = s.split("@", 1)[0]
    if not s.isdigit():
        raise InvalidInput(f"bad version {ref!r}: use a number (3), 'v3' or '{name}-v3'")
    return int(s)


class DatasetService:
    def __init__(self, catalog: Catalog, artifacts: ArtifactStore, *, chunk_bytes: int = 4 << 20) -> None:
        self.catalog = catalog
        self.artifacts = artifacts
        self.chunk_bytes = chunk_bytes

    # ------------------------------------------------------------------------------------------
    # catalog helpers

    def _dataset(self, s: Any, name: str) -> DatasetRecord:
        rec = s.scalar(select(DatasetRecord).where(DatasetRecord.name == name))
        if rec is None:
            raise NotFound(f"no dataset named {name!r}")
        return rec

    def _version(self, s: Any, ds: DatasetRecord, ref: int | str | None) -> VersionRecord:
        q = select(VersionRecord).where(VersionRecord.dataset_id == ds.id)
        if ref == "active":
            v = s.scalar(q.where(VersionRecord.status == "active"))
            if v is None:
                raise NotFound(
                    f"dataset {ds.name!r} has no active version; start one with `opentracy datasets new-version {ds.name}`"
                )
            return v
        number = parse_version_ref(ds.name, ref)
        if number is None:
            v = s.scalar(q.order_by(VersionRecord.number.desc()).limit(1))
            if v is None:
                raise NotFound(f"dataset {ds.name!r} has no versions")
            return v
        v = s.scalar(q.where(VersionRecord.number == number))
        if v is None:
            raise NotFound(f"dataset {ds.name!r} has no version {number} ({label(ds.name, number)})")
        return v

    def _active(self, s: Any, ds: DatasetRecord, ref: int | str | None = None) -> VersionRecord:
        """The version a write goes to; refuses a frozen one with a message that says what to do."""
        v = self._version(s, ds, ref)
        if v.status != "active":
            raise Conflict(
                f"{label(ds.name, v.number)} is frozen and cannot change. Start a new version from it with "
                f"`opentracy datasets new-version {ds.name}` (client: new_version({ds.name!r})) and write there.",
                version=label(ds.name, v.number),
            )
        return v

    def _info(self, ds: DatasetRecord, v: VersionRecord) -> VersionInfo:
        lbl = label(ds.name, v.number)
        return VersionInfo(
            id=v.id,
            dataset=ds.name,
            number=v.number,
            label=lbl,
            status=v.status,  # type: ignore[arg-type]
            parent=v.parent_id and self._label_of(v.parent_id, ds),
            row_count=v.row_count,
            content_hash=v.content_hash,
            ref=f"{lbl}@{v.content_hash.split(':', 1)[-1][:12]}" if v.content_hash else lbl,
            provenance=list(v.provenance or []),
            warnings=warnings_for(v.row_count, v.stats or {}, v.provenance or []),
            segments=len(v.manifest or []),
            bytes=sum(int(x.get("bytes", 0)) for x in v.manifest or []),
            created_at=v.created_at,
            updated_at=v.updated_at,
            frozen_at=v.frozen_at,
        )

    def _label_of(self, version_id: str, ds: DatasetRecord) -> str:
        with self.catalog.session() as s:
            v = s.get(VersionRecord, version_id)
            return label(ds.name, v.number) if v else version_id

    def _dataset_info(self, s: Any, ds: DatasetRecord) -> DatasetInfo:
        n = (
            s.scalar(select(func.count()).select_from(VersionRecord).where(VersionRecord.dataset_id == ds.id))
            or 0
        )
        latest = s.scalar(
            select(VersionRecord)
            .where(VersionRecord.dataset_id == ds.id)
            .order_by(VersionRecord.number.desc())
            .limit(1)
        )
        return DatasetInfo(
            id=ds.id,
            name=ds.name,
            description=ds.description,
            created_at=ds.created_at,
            updated_at=ds.updated_at,
            versions=n,
            latest=self._info(ds, latest) if latest else None,
        )

    def _reserve_write_seq(self, dataset_id: str) -> int:
        with self.catalog.session() as s:
            seq = s.execute(
                update(DatasetRecord)
                .where(DatasetRecord.id == dataset_id)
                .values(write_seq=DatasetRecord.write_seq + 1)
                .returning(DatasetRecord.write_seq)
            ).scalar_one()
        return int(seq)

    def _save_manifest(
        self,
        s: Any,
        v: VersionRecord,
        expected_revision: int,
        **values: Any,
    ) -> None:
        """Update a version only if nobody else changed it since we read it."""
        values.setdefault("updated_at", utcnow())
        res = s.execute(
            update(VersionRecord)
            .where(VersionRecord.id == v.id, VersionRecord.revision == expected_revision)
            .values(revision=expected_revision + 1, **values)
        )
        if res.rowcount != 1:
            raise Conflict(f"version {v.id} changed while this write was in progress; retry it")

    # ------------------------------------------------------------------------------------------
    # datasets

    @staticmethod
    def check_name(name: str) -> None:
        if not NAME_RE.match(name or ""):
            raise InvalidInput(
                f"bad dataset name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
            )

    def create(self, name: str, description: str = "") -> DatasetInfo:
        self.check_name(name)
        with self.catalog.session() as s:
            if s.scalar(select(DatasetRecord.id).where(DatasetRecord.name == name)):
                raise Conflict(f"a dataset named {name!r} already exists")
            ds = DatasetRecord(id=new_id("ds"), name=name, description=description or "", write_seq=0)
            s.add(ds)
            s.flush()
            s.add(self._new_version_record(ds, 1, provenance=[{"kind": "create", "at": _now_iso()}]))
            s.flush()
            return self._dataset_info(s, ds)

    def _new_version_record(
        self,
        ds: DatasetRecord,
        number: int,
        *,
        parent: VersionRecord | None = None,
        manifest: list[dict[str, Any]] | None = None,
        provenance: list[dict[str, Any]] | None = None,
        row_count: int = 0,
        stats: dict[str, Any] | None = None,
    ) -> VersionRecord:
        return VersionRecord(
            id=new_id("dv"),
            dataset_id=ds.id,
            number=number,
            status="active",
            parent_id=parent.id if parent else None,
            row_count=row_count,
            manifest=manifest or [],
            provenance=provenance or [],
            stats=stats or {},
            revision=0,
        )

    def get(self, name: str) -> DatasetInfo:
        with self.catalog.session() as s:
            return self._dataset_info(s, self._dataset(s, name))

    def list(
        self, *, limit: int = 50, offset: int = 0, q: str | None = None
    ) -> tuple[list[DatasetInfo], int]:
        limit = max(1, min(int(limit), 500))
        with self.catalog.session() as s:
            base = select(DatasetRecord)
            if q:
                base = base.where(DatasetRecord.name.contains(q, autoescape=True))
            total = s.scalar(select(func.count()).select_from(base.subquery())) or 0
            recs = s.scalars(base.order_by(DatasetRecord.name).offset(max(0, offset)).limit(limit)).all()
            return [self._dataset_info(s, d) for d in recs], total

    def delete(self, name: str, confirm: str | None) -> None:
        """Delete a dataset and all its versions. `confirm` must repeat the name: nothing goes implicitly."""
        if confirm != name:
            raise InvalidInput(
                f"deleting a dataset removes every version of it; confirm by passing its name ({name!r})"
            )
        with self.catalog.session() as s:
            ds = self._dataset(s, name)
            versions = s.scalars(select(VersionRecord).where(VersionRecord.dataset_id == ds.id)).all()
            keys = {seg["key"] for v in versions for seg in v.manifest or []}
            s.execute(delete(VersionRecord).where(VersionRecord.dataset_id == ds.id))
            s.execute(delete(DatasetRecord).where(DatasetRecord.id == ds.id))
            still_used = {
                seg["key"] for (m,) in s.execute(select(VersionRecord.manifest)).all() for seg in m or []
            }
        for key in keys - still_used:
            self.artifacts.delete(key)

    # ------------------------------------------------------------------------------------------
    # versions

    def version(self, name: str, version: int | str | None = None) -> VersionInfo:
        with self.catalog.session() as s:
            ds = self._dataset(s, name)
            return self._info(ds, self._version(s, ds, version))

    def versions(self, name: str) -> list[VersionInfo]:
        with self.catalog.session() as s:
            ds = self._dataset(s, name)
            vs = s.scalars(
                select(VersionRecord).where(VersionRecord.dataset_id == ds.id).order_by(VersionRecord.number)
            ).all()
            return [self._info(ds, v) for v in vs]

    def freeze(
        self, name: str, version: int | str | None = None, *, progress: ProgressFn | None = None
    ) -> VersionInfo:
        """Make a version immutable: compact its segments into one and record its content hash."""
        progress = progress or (lambda f, m: None)
        with self.catalog.session() as s:
            ds = self._dataset(s, name)
            v = self._version(s, ds, version)
            if v.status == "frozen":
                raise Conflict(f"{label(name, v.number)} is already frozen")
            manifest, rev = Manifest.of(v.manifest or []), v.revision
        con = duck(memory_limit="512MB")
        try:
            progress(0.05, "verifying segments")
            sql = version_sql(self.artifacts, manifest, verify=True)
            segs = list(manifest.segments)
            if manifest.has_deltas or len(segs) > 1:
                progress(0.2, f"compacting {len(segs)} segments")
                seg = self._compact(con, sql)
                segs = [seg.to_manifest()]
                sql = version_sql(self.artifacts, Manifest.of(segs), verify=False)
            progress(0.6, "hashing content")
            digest, count = content_hash(con, sql)
            progress(0.85, "collecting cluster ids")
            clusters = self._cluster_ids(con, sql)
        finally:
            con.close()
        with self.catalog.session() as s:
            ds = self._dataset(s, name)
            v = s.get(VersionRecord, v.id)
            stats = _merge_clusters(
                {k: x for k, x in (v.stats or {}).items() if k not in ("cluster_ids", "cluster_count")},
                clusters,
            )
            now = utcnow()
            self._save_manifest(
                s,
                v,
                rev,
                status="frozen",
                manifest=segs,
                content_hash=digest,
                row_count=count,
                stats=stats,
                frozen_at=now,
            )
            ds.updated_at = now
            s.flush()
            s.refresh(v)
            info = self._info(ds, v)
        progress(1.0, "frozen")  # outside the transaction: progress writes to the catalog too
        return info

    def _compact(self, con: Any, rows_sql: str) -> SegmentInfo:
        """Write the live rows of a manifest as one base segment.

        Rows are written in scan order (base rows keep theirs, edits land in place of nothing: readers order
        by `ord`), so compaction streams instead of sorting every row.
        """
        tmp = self.artifacts.scratch_file("compact", ".parquet")
        reader = con.sql(
            f"SELECT row_id, ord, prompt, prompt_messages, response, metadata, row_hash, false AS deleted FROM ({rows_sql})"
        ).to_arrow_reader(batch_size=ROW_GROUP_ROWS)
        n = 0
        with pq.ParquetWriter(tmp, SEGMENT_SCHEMA, compression="zstd", use_dictionary=SEGMENT_DICTIONARY,
                              write_statistics=SEGMENT_STATISTICS) as w:  # fmt: skip
            for rb in reader:
                n += rb.num_rows
                w.write_batch(rb.cast(SEGMENT_SCHEMA) if rb.schema != SEGMENT_SCHEMA else rb)
        key, digest, size = self.artifacts.put_file(tmp, prefix="segments", suffix=".parquet")
        return SegmentInfo(key=key, sha256=digest, rows=int(n), bytes=size, kind="base")

    def _cluster_ids(self, con: Any, rows_sql: str) -> list[Any]:
        res = con.sql(
            f"SELECT DISTINCT CAST(json_extract(metadata, '$.cluster_id') AS VARCHAR) AS c FROM ({rows_sql}) "
            "WHERE json_extract(metadata, '$.cluster_id') IS NOT NULL AND "
            "json_type(json_extract(metadata, '$.cluster_id')) <> 'NULL' LIMIT 1001"
        ).fetchall()
        return [json.loads(c) for (c,) in res]

    def new_version(self, name: str, parent: int | str | None = None) -> VersionInfo:
        """Start the next active version from a frozen parent (the latest by default), sharing its segments."""
        with self.catalog.session() as s:
            ds = self._dataset(s, name)
            active = s.scalar(
                select(VersionRecord).where(
                    VersionRecord.dataset_id == ds.id, VersionRecord.status == "active"
                )
            )
            if active is not None:
                raise Conflict(
                    f"{label(name, active.number)} is still active: a dataset has at most one active version. "
                    f"Freeze it first (`opentracy datasets freeze {name}`)."
                )
            p = self._version(s, ds, parent)
            top = (
                s.scalar(select(func.max(VersionRecord.number)).where(VersionRecord.dataset_id == ds.id)) or 0
            )
            v = self._new_version_record(
                ds,
                top + 1,
                parent=p,
                manifest=list(p.manifest or []),
                row_count=p.row_count,
                stats=dict(p.stats or {}),
                provenance=list(p.provenance or [])
                + [
                    {
                        "kind": "new_version",
                        "parent": label(name, p.number),
                        "parent_hash": p.content_hash,
                        "at": _now_iso(),
                    }
                ],
            )
            s.add(v)
            ds.updated_at = utcnow()
            s.flush()
            return self._info(ds, v)

    def add_provenance(
        self, name: str, step: dict[str, Any], version: int | str | None = None
    ) -> VersionInfo:
        """Record a step (e.g. a curation run) on the active version."""
        with self.catalog.session() as s:
            ds = self._dataset(s, name)
            v = self._active(s, ds, version)
            self._save_manifest(
                s, v, v.revision, provenance=list(v.provenance or []) + [{**step, "at": _now_iso()}]
            )
            s.flush()
            s.refresh(v)
            return self._info(ds, v)

    # ------------------------------------------------------------------------------------------
    # reading rows

    def _read_sql(
        self, name: str, version: int | str | None, scan_filter: str | None = None
    ) -> tuple[VersionInfo, str]:
        with self.catalog.session() as s:
            ds = self._dataset(s, name)
            v = self._version(s, ds, version)
            info = self._info(ds, v)
            manifest = Manifest.of(v.manifest or [])
        return info, version_sql(self.artifacts, manifest, verify=True, scan_filter=scan_filter)

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
            # The total: the catalog knows it unless a filter applies.
            if conds:
                total = con.execute(
                    f"SELECT count(*) FROM ({sql}) WHERE {' AND '.join(conds)}", params
                ).fetchall()[0][0]
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

    def diff(self, name: str, a: int | str | None, b: int | str | None, *, limit: int = 1000) -> DiffResult:
        """Rows added, removed and changed from version a to version b, by row id and row hash."""
        with self.catalog.session() as s:
            ds = self._dataset(s, name)
            vb = self._version(s, ds, b)
            if a is None:
                if not vb.parent_id:
                    raise InvalidInput(
                        f"{label(name, vb.number)} has no parent; name the version to compare with"
                    )
                va = s.get(VersionRecord, vb.parent_id)
            else:
                va = self._version(s, ds, a)
            ma, mb = Manifest.of(va.manifest or []), Manifest.of(vb.manifest or [])
            la, lb = label(name, va.number), label(name, vb.number)
        cols = "row_id, row_hash"
        sa = version_sql(self.artifacts, ma, verify=True, columns=cols)
        sb = version_sql(self.artifacts, mb, verify=True, columns=cols)
        con = duck()
        try:
            con.execute(
                "CREATE TEMP TABLE d AS SELECT COALESCE(a.row_id, b.row_id) AS row_id, "
                f"CASE WHEN a.row_id IS NULL THEN 'added' WHEN b.row_id IS NULL THEN 'removed' "
                f"WHEN a.row_hash <> b.row_hash THEN 'changed' ELSE 'same' END AS kind "
                f"FROM ({sa}) a FULL OUTER JOIN ({sb}) b ON a.row_id = b.row_id"
            ).fetchall()
            counts = dict(con.sql("SELECT kind, count(*) FROM d GROUP BY kind").fetchall())
            ids: dict[str, list[str]] = {}
            for kind in ("added", "removed", "changed"):
                ids[kind] = [
                    r[0]
                    for r in con.execute(
                        "SELECT row_id FROM d WHERE kind = ? ORDER BY row_id LIMIT ?", [kind, limit]
                    ).fetchall()
                ]
        finally:
            con.close()
        return DiffResult(
            dataset=name,
            a=la,
            b=lb,
            added=counts.get("added", 0),
            removed=counts.get("removed", 0),
            changed=counts.get("changed", 0),
            unchanged=counts.get("same", 0),
            added_ids=ids["added"],
            removed_ids=ids["removed"],
            changed_ids=ids["changed"],
            truncated=any(counts.get(k, 0) > limit for k in ("added", "removed", "changed")),
        )

    # ------------------------------------------------------------------------------------------
    # writing rows (active version only)

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
            manifest, dsid = Manifest.of(v.manifest or []), ds.id
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
        return self._append_segment(name, v.id, seg, added=len(parsed), clusters=clusters)

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
        with self.catalog.session() as s:
            ds = self._dataset(s, name)
            v = self._active(s, ds, version)
            manifest, dsid = Manifest.of(v.manifest or []), ds.id
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
        self._append_segment(name, v.id, seg, added=0, clusters=clusters)
        return [
            RowOut(row_id=r.row_id or "", prompt=r.prompt, response=r.response, metadata=r.metadata)
            for r, _ in new_rows
        ]

    def delete_rows(self, name: str, row_ids: list[str], version: int | str | None = None) -> VersionInfo:
        if not row_ids:
            raise InvalidInput("no row ids to delete")
        ids = list(dict.fromkeys(row_ids))
        with self.catalog.session() as s:
            ds = self._dataset(s, name)
            v = self._active(s, ds, version)
            manifest, dsid = Manifest.of(v.manifest or []), ds.id
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
        return self._append_segment(name, v.id, seg, added=-n, clusters=[], recount_clusters=True)

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

    def _append_segment(
        self,
        name: str,
        version_id: str,
        seg: SegmentInfo,
        *,
        added: int,
        clusters: list[Any],
        recount_clusters: bool = False,
        provenance_step: dict[str, Any] | None = None,
    ) -> VersionInfo:
        with self.catalog.session() as s:
            ds = self._dataset(s, name)
            v = s.get(VersionRecord, version_id)
            if v is None or v.status != "active":
                raise Conflict(
                    f"{label(name, v.number) if v else version_id} was frozen during this write; nothing changed"
                )
            manifest = list(v.manifest or []) + [seg.to_manifest()]
            stats = _merge_clusters(v.stats or {}, clusters)
            values: dict[str, Any] = {"manifest": manifest, "row_count": v.row_count + added, "stats": stats}
            if provenance_step:
                values["provenance"] = list(v.provenance or []) + [provenance_step]
            self._save_manifest(s, v, v.revision, **values)
            ds.updated_at = utcnow()
            s.flush()
            s.refresh(v)
            vid = v.id
        if recount_clusters or len(manifest) > MAX_SEGMENTS_BEFORE_COMPACTION:
            self._maintain(
                name, vid, compact=len(manifest) > MAX_SEGMENTS_BEFORE_COMPACTION, recount=recount_clusters
            )
        return self.version(name, self._number_of(vid))

    def _number_of(self, version_id: str) -> int:
        with self.catalog.session() as s:
            return s.get(VersionRecord, version_id).number

    def _maintain(self, name: str, version_id: str, *, compact: bool, recount: bool) -> None:
        """Compact a long manifest and/or recount the clusters a version's rows come from."""
        with self.catalog.session() as s:
            v = s.get(VersionRecord, version_id)
            manifest, rev = Manifest.of(v.manifest or []), v.revision
            stats = dict(v.stats or {})
        con = duck()
        try:
            sql = version_sql(self.artifacts, manifest, verify=True)
            values: dict[str, Any] = {}
            if compact:
                seg = self._compact(con, sql)
                values["manifest"] = [seg.to_manifest()]
            if recount:
                base = {k: x for k, x in stats.items() if k not in ("cluster_ids", "cluster_count")}
                values["stats"] = _merge_clusters(base, self._cluster_ids(con, sql))
        finally:
            con.close()
        with self.catalog.session() as s:
            v = s.get(VersionRecord, version_id)
            with contextlib.suppress(
                Conflict
            ):  # another write got there first; it maintains the version itself
                self._save_manifest(s, v, rev, **values)

    # ------------------------------------------------------------------------------------------
    # upload

    def upload(
        self,
        name: str,
        path: str | Path,
        *,
        format: str | None = None,
        prompt_field: str | None = None,
        response_field: str | None = None,
        metadata_fields: list[str] | None = None,
        split: str | None = None,
        on_error: str = "raise",
        description: str | None = None,
        display_name: str | None = None,
        progress: ProgressFn | None = None,
        cancelled: Callable[[], bool] | None = None,
        job_id: str | None = None,
    ) -> UploadResult:
        """Read a file into the dataset's active version (creating the dataset if needed). All or nothing."""
        t0 = time.perf_counter()
        progress = progress or (lambda f, m: None)
        self.check_name(name)
        mapping = formats.Mapping(prompt_field, response_field, metadata_fields)
        src = formats.open_source(
            path,
            format=format,
            mapping=mapping,
            split=split,
            on_error=on_error,  # type: ignore[arg-type]
            display_name=display_name,
            chunk_bytes=self.chunk_bytes,
        )
        # Where the rows will go. A new dataset is only created when the rows are committed.
        with self.catalog.session() as s:
            ds = s.scalar(select(DatasetRecord).where(DatasetRecord.name == name))
            target = None
            if ds is not None:
                latest = s.scalar(
                    select(VersionRecord)
                    .where(VersionRecord.dataset_id == ds.id)
                    .order_by(VersionRecord.number.desc())
                    .limit(1)
                )
                target = latest
                dsid = ds.id
            else:
                dsid = new_id("ds")
        seq = self._reserve_write_seq(dsid) if ds is not None else 1
        base_ord = seq << 32
        writer = SegmentWriter(self.artifacts, id_salt=dsid, kind="base")
        lines: list[np.ndarray] = []
        pos = 0
        try:
            for batch in src.batches:
                if cancelled and cancelled():
                    raise Cancelled("upload cancelled; nothing was written")
                n = batch.table.num_rows
                if n:
                    ords = pa.array(np.arange(base_ord + pos, base_ord + pos + n, dtype=np.int64))
                    t = batch.table
                    t = pa.table(
                        {
                            "row_id": t.column("row_id"),
                            "ord": ords,
                            "prompt": t.column("prompt"),
                            "prompt_messages": t.column("prompt_messages"),
                            "response": t.column("response"),
                            "metadata": t.column("metadata"),
                            "deleted": pa.array(np.zeros(n, dtype=bool)),
                        },
                        schema=INPUT_SCHEMA,
                    )
                    writer.add(t)
                    lines.append(batch.lines)
                    pos += n
                progress(min(0.9, 0.9 * batch.progress), f"read {pos:,} rows")
            if pos > 0xFFFFFFFF:
                raise InvalidInput("a single upload holds at most 4,294,967,295 rows; split the file")
            progress(0.9, f"writing {pos:,} rows")
            seg = writer.close()
        except BaseException:
            writer.abort()
            raise
        try:
            line_of = np.concatenate(lines) if lines else np.empty(0, np.int64)
            rid_hashes, _ = writer.row_id_hashes()
            drop = self._check_ids(src, seg, writer.problems, rid_hashes, line_of, base_ord, target)
            if drop:
                seg = self._rewrite_without(seg, drop)
            if seg.rows == 0:  # only possible when skipping: every record was bad
                first = src.errors.items[0] if src.errors.items else {}
                where = ", ".join(f"{k} {v}" for k, v in first.items() if k != "error")
                raise InvalidInput(
                    f"no valid rows: all {src.errors.count} record(s) were bad (first: {where}: {first.get('error')}); "
                    "nothing was uploaded",
                    file=src.file.name if src.file else str(path),
                )
            progress(0.97, "committing")
            step = {
                "kind": "upload",
                "file": src.file.name if src.file else str(path),
                "sha256": src.sha256(),
                "format": src.format,
                "split": src.split,
                "rows": seg.rows,
                "skipped": src.errors.count,
                "options": {
                    k: v
                    for k, v in {
                        "prompt_field": prompt_field,
                        "response_field": response_field,
                        "metadata_fields": metadata_fields,
                        "on_error": on_error if on_error != "raise" else None,
                    }.items()
                    if v is not None
                },
                "at": _now_iso(),
            }
            if job_id:
                step["job_id"] = job_id
            clusters = (
                sorted(json.loads(c) for c in writer.cluster_ids) if len(writer.cluster_ids) < 10_000 else []
            )
            info = self._commit_upload(name, dsid, description, target, seg, step, clusters)
        except BaseException:
            self._discard(seg)
            raise
        progress(1.0, f"uploaded {seg.rows:,} rows")
        return UploadResult(
            dataset=name,
            version=info,
            rows_added=seg.rows,
            skipped=src.errors.count,
            skipped_items=src.errors.items,
            file=step["file"],
            sha256=step["sha256"],
            format=src.format,
            seconds=round(time.perf_counter() - t0, 3),
        )

    def find_job_step(self, name: str, job_id: str) -> dict[str, Any] | None:
        """The result of an upload job that already committed (found by its provenance step), if any."""
        with self.catalog.session() as s:
            ds = s.scalar(select(DatasetRecord).where(DatasetRecord.name == name))
            if ds is None:
                return None
            for v in s.scalars(select(VersionRecord).where(VersionRecord.dataset_id == ds.id)).all():
                for step in v.provenance or []:
                    if step.get("job_id") == job_id:
                        info = self._info(ds, v)
                        return {
                            "dataset": name,
                            "version": info.model_dump(mode="json"),
                            "rows_added": step.get("rows", 0),
                            "skipped": step.get("skipped", 0),
                            "skipped_items": [],
                            "file": step.get("file"),
                            "sha256": step.get("sha256"),
                            "format": step.get("format"),
                            "seconds": 0.0,
                        }
        return None

    # ------------------------------------------------------------------------------------------
    # export

    def export(self, name: str, version: int | str | None, fmt: str, dest: str | Path) -> int:
        """Write a version to a file (jsonl, openai, csv, parquet); returns the row count."""
        from opentracy.datasets.export import check_format, write_export

        return write_export(self.iter_arrow(name, version), check_format(fmt), dest)

    def export_bytes(self, name: str, version: int | str | None, fmt: str) -> Iterator[bytes]:
        from opentracy.datasets.export import check_format, iter_export

        self.version(name, version)  # fail before streaming starts
        return iter_export(self.iter_arrow(name, version), check_format(fmt))

    def to_hf(
        self,
        name: str,
        version: int | str | None = None,
        *,
        test_size: float | int | None = None,
        seed: int = 0,
    ) -> Any:
        """The version as a `datasets.Dataset`, or a train/validation `DatasetDict` when test_size is given."""
        from opentracy.datasets.export import to_hf

        batches = list(self.iter_arrow(name, version))
        table = (
            pa.Table.from_batches(batches)
            if batches
            else pa.table(
                {
                    c: pa.array([], t)
                    for c, t in [
                        ("row_id", pa.string()),
                        ("ord", pa.int64()),
                        ("prompt", pa.string()),
                        ("prompt_messages", pa.bool_()),
                        ("response", pa.string()),
                        ("metadata", pa.string()),
                    ]
                }
            )
        )
        return to_hf(table, test_size=test_size, seed=seed)

    def _discard(self, seg: SegmentInfo) -> None:
        with self.catalog.session() as s:
            used = any(
                seg.key in {x["key"] for x in (m or [])}
                for (m,) in s.execute(select(VersionRecord.manifest)).all()
            )
        if not used:
            self.artifacts.delete(seg.key)

    def _check_ids(
        self,
        src: formats.OpenedSource,
        seg: SegmentInfo,
        problems: list[tuple[int, str]],
        rid_hashes: np.ndarray,
        line_of: np.ndarray,
        base_ord: int,
        target: VersionRecord | None,
    ) -> set[int]:
        """Refuse (or, when skipping, drop) rows with badly typed metadata, and row ids repeated in the
        file or already in the version."""
        drop: set[int] = set()
        unit = src.errors.unit

        def where(o: int) -> int:
            return int(line_of[o - base_ord])

        for o, problem in sorted(problems):
            src.errors(where(o), problem)
            drop.add(o)

        # Repeats inside the file: a cheap check on 64-bit hashes, then the exact ids from the segment.
        if len(rid_hashes) > 1:
            srt = np.sort(rid_hashes)
            if np.any(srt[1:] == srt[:-1]):
                path = self.artifacts.local_path(seg.key)
                con = duck()
                try:
                    dups = con.sql(
                        f"SELECT row_id, list(ord ORDER BY ord) FROM read_parquet('{path}') GROUP BY row_id "
                        "HAVING count(*) > 1 ORDER BY min(ord)"
                    ).fetchall()
                finally:
                    con.close()
                for rid, o in dups:
                    first = where(o[0])
                    for later in o[1:]:
                        src.errors(where(later), f"duplicate row_id {rid!r} (first seen at {unit} {first})")
                        drop.add(int(later))
        vsql = None
        if target is not None and target.manifest:
            vsql = version_sql(self.artifacts, Manifest.of(target.manifest), verify=True, columns="row_id")
        if vsql:
            path = self.artifacts.local_path(seg.key)
            con = duck()
            try:
                clash = con.sql(
                    f"SELECT n.row_id, n.ord FROM read_parquet('{path}') n JOIN ({vsql}) e ON n.row_id = e.row_id ORDER BY n.ord"
                ).fetchall()
            finally:
                con.close()
            for rid, o in clash:
                if int(o) in drop:
                    continue
                src.errors(where(o), f"row_id {rid!r} is already in the dataset; edit that row instead")
                drop.add(int(o))
        return drop

    def _rewrite_without(self, seg: SegmentInfo, drop: set[int]) -> SegmentInfo:
        path = self.artifacts.local_path(seg.key)
        con = duck()
        try:
            reader = con.sql(
                f"SELECT * FROM read_parquet('{path}') WHERE NOT list_contains(?, ord) ORDER BY ord",
                params=[sorted(drop)],
            ).to_arrow_reader(batch_size=50_000)
            tmp = self.artifacts.scratch_file("rewrite", ".parquet")
            import pyarrow.parquet as pq

            n = 0
            with pq.ParquetWriter(tmp, reader.schema, compression="zstd") as w:
                for rb in reader:
                    n += rb.num_rows
                    w.write_batch(rb)
        finally:
            con.close()
        self._discard(seg)
        key, digest, size = self.artifacts.put_file(tmp, prefix="segments", suffix=".parquet")
        return SegmentInfo(key=key, sha256=digest, rows=n, bytes=size, kind="base")

    def _commit_upload(
        self,
        name: str,
        dsid: str,
        description: str | None,
        target: VersionRecord | None,
        seg: SegmentInfo,
        step: dict[str, Any],
        clusters: list[Any],
    ) -> VersionInfo:
        with self.catalog.session() as s:
            ds = s.get(DatasetRecord, dsid)
            if ds is None:
                if s.scalar(select(DatasetRecord.id).where(DatasetRecord.name == name)):
                    raise Conflict(
                        f"a dataset named {name!r} was created while this upload ran; upload again"
                    )
                ds = DatasetRecord(id=dsid, name=name, description=description or "", write_seq=1)
                s.add(ds)
                s.flush()
                v = self._new_version_record(
                    ds,
                    1,
                    manifest=[seg.to_manifest()],
                    row_count=seg.rows,
                    provenance=[step],
                    stats=_merge_clusters({}, clusters),
                )
                s.add(v)
            else:
                if description:
                    ds.description = description
                latest = s.scalar(
                    select(VersionRecord)
                    .where(VersionRecord.dataset_id == ds.id)
                    .order_by(VersionRecord.number.desc())
                    .limit(1)
                )
                if target is not None and (
                    latest is None or latest.id != target.id or latest.revision != target.revision
                ):
                    raise Conflict(f"dataset {name!r} changed while this upload ran; upload again")
                if latest is not None and latest.status == "active":
                    v = latest
                    self._save_manifest(
                        s,
                        v,
                        v.revision,
                        manifest=list(v.manifest or []) + [seg.to_manifest()],
                        row_count=v.row_count + seg.rows,
                        provenance=list(v.provenance or []) + [step],
                        stats=_merge_clusters(v.stats or {}, clusters),
                    )
                else:
                    parent = latest
                    v = self._new_version_record(
                        ds,
                        (parent.number if parent else 0) + 1,
                        parent=parent,
                        manifest=list(parent.manifest or []) + [seg.to_manifest()]
                        if parent
                        else [seg.to_manifest()],
                        row_count=(parent.row_count if parent else 0) + seg.rows,
                        provenance=(
                            list(parent.provenance or [])
                            + [
                                {
                                    "kind": "new_version",
                                    "parent": label(name, parent.number),
                                    "parent_hash": parent.content_hash,
                                    "at": step["at"],
                                }
                            ]
                            if parent
                            else []
                        )
                        + [step],
                        stats=_merge_clusters(dict(parent.stats or {}) if parent else {}, clusters),
                    )
                    s.add(v)
            ds.updated_at = utcnow()
            s.flush()
            s.refresh(v)
            return self._info(ds, v)


# ----------------------------------------------------------------------------------------------
# helpers


def _row_out(r: tuple[Any, ...]) -> RowOut:
    row_id, _ord, prompt, is_msgs, response, metadata = r[:6]
    return RowOut(
        row_id=row_id,
        prompt=json.loads(prompt) if is_msgs else prompt,
        response=response,
        metadata=json.loads(metadata) if metadata else {},
    )


def _row_in(d: dict[str, Any], n: int) -> RowIn:
    if not isinstance(d, dict):
        raise InvalidInput("each row must be an object with prompt, response and metadata", row=n)
    try:
        return RowIn.model_validate(d, strict=True)
    except Exception as e:
        raise InvalidInput(f"not a valid row: {str(e).splitlines()[0:3]}", row=n) from None


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
