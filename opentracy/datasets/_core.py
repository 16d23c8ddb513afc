"""Shared plumbing of the datasets service: catalog lookups, manifests, segments, warnings."""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import func, select, update

from opentracy.datasets.models import (
    DatasetInfo,
    DatasetWarning,
    RowOut,
    VersionInfo,
)
from opentracy.errors import Conflict, InvalidInput, NotFound, StaleWrite
from opentracy.names import check_dataset_name
from opentracy.store.artifacts import ArtifactStore
from opentracy.store.catalog import Catalog
from opentracy.store.segments import (
    ROW_GROUP_ROWS,
    Manifest,
    SegmentInfo,
    duck,
    version_sql,
    write_stored_rows,
)
from opentracy.store.tables import DatasetRecord, VersionRecord, utcnow

MIN_DISTILL_ROWS = 200
MAX_SEGMENTS_BEFORE_COMPACTION = 64
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
    # A generation whose samples were judged (errors dropped, duplicates collapsed) is curated too.
    curated = [
        p
        for p in provenance
        if p.get("kind") == "curation" or (p.get("kind") == "generation" and p.get("judge"))
    ]
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


def _row_out(r: tuple[Any, ...]) -> RowOut:
    row_id, _ord, prompt, is_msgs, response, metadata = r[:6]
    # Stored rows were validated on the way in: built without validating them again (~half a page's time).
    return RowOut.model_construct(
        row_id=row_id,
        prompt=json.loads(prompt) if is_msgs else prompt,
        response=response,
        metadata=json.loads(metadata) if metadata else {},
    )


T = TypeVar("T")


class _Lru:
    """A small thread-safe least-recently-used map."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._d: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            if key not in self._d:
                return None
            self._d.move_to_end(key)
            return self._d[key]

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)


def again_if_stale(call: Callable[[], T], attempts: int = 8) -> T:
    """Run `call` again when another write to the same version committed between its read and its commit
    (StaleWrite), backing off a little more each time; the last StaleWrite is raised."""
    for attempt in range(attempts - 1):
        try:
            return call()
        except StaleWrite:
            time.sleep(random.uniform(0.005, 0.02) * 2**attempt)
    return call()


def retry_stale(op: Callable[..., T]) -> Callable[..., T]:
    """A row write that re-reads the version and re-checks its rows when another write overtook it. Writers
    in this process take turns per dataset, so they rarely meet; writers in other processes retry."""

    @functools.wraps(op)
    def run(self: DatasetCore, name: str, *args: Any, **kwargs: Any) -> T:
        with self._write_lock(name):
            return again_if_stale(lambda: op(self, name, *args, **kwargs))

    return run


class DatasetCore:
    def __init__(self, catalog: Catalog, artifacts: ArtifactStore, *, chunk_bytes: int = 4 << 20) -> None:
        self.catalog = catalog
        self.artifacts = artifacts
        self.chunk_bytes = chunk_bytes
        self._write_locks: dict[str, threading.RLock] = {}
        self._write_locks_guard = threading.Lock()
        self._totals = _Lru(256)  # filtered row counts, for the pages after the first

    @contextlib.contextmanager
    def _write_lock(self, name: str) -> Iterator[None]:
        with self._write_locks_guard:
            lock = self._write_locks.setdefault(name, threading.RLock())
        with lock:
            yield

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
            raise StaleWrite(f"version {v.id} changed while this write was in progress; retry it")

    @staticmethod
    def check_name(name: str) -> None:
        check_dataset_name(name)

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

    def _compact(self, con: Any, rows_sql: str) -> SegmentInfo:
        """Write the live rows of a manifest as one base segment.

        Rows are written in scan order (base rows keep theirs, edits land in place of nothing: readers order
        by `ord`), so compaction streams instead of sorting every row.
        """
        reader = con.sql(
            f"SELECT row_id, ord, prompt, prompt_messages, response, metadata, row_hash, false AS deleted FROM ({rows_sql})"
        ).to_arrow_reader(batch_size=ROW_GROUP_ROWS)
        return write_stored_rows(self.artifacts, reader, scratch="compact")

    def _cluster_ids(self, con: Any, rows_sql: str) -> list[Any]:
        res = con.sql(
            f"SELECT DISTINCT c FROM (SELECT json_extract(metadata, '$.cluster_id') AS c FROM ({rows_sql})) "
            "WHERE c IS NOT NULL AND c <> 'null' LIMIT 1001"
        ).fetchall()
        return [json.loads(c) for (c,) in res]

    def _read_sql(
        self, name: str, version: int | str | None, scan_filter: str | None = None
    ) -> tuple[VersionInfo, str]:
        with self.catalog.session() as s:
            ds = self._dataset(s, name)
            v = self._version(s, ds, version)
            info = self._info(ds, v)
            manifest = Manifest.of(v.manifest or [])
        return info, version_sql(self.artifacts, manifest, verify=True, scan_filter=scan_filter)

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
        expected_revision: int | None = None,
    ) -> VersionInfo:
        """Commit a written segment to a version. With `expected_revision` (the revision the caller read and
        checked its write against) a version changed since raises StaleWrite; the segment is then discarded."""
        try:
            with self.catalog.session() as s:
                ds = self._dataset(s, name)
                v = s.get(VersionRecord, version_id)
                if v is None or v.status != "active":
                    raise Conflict(
                        f"{label(name, v.number) if v else version_id} was frozen during this write; nothing changed"
                    )
                rev = v.revision if expected_revision is None else expected_revision
                if v.revision != rev:
                    raise StaleWrite(f"version {v.id} changed while this write was in progress; retry it")
                manifest = list(v.manifest or []) + [seg.to_manifest()]
                stats = _merge_clusters(v.stats or {}, clusters)
                values: dict[str, Any] = {
                    "manifest": manifest,
                    "row_count": v.row_count + added,
                    "stats": stats,
                }
                if provenance_step:
                    values["provenance"] = list(v.provenance or []) + [provenance_step]
                self._save_manifest(s, v, rev, **values)
                ds.updated_at = utcnow()
                s.flush()
                s.refresh(v)
                vid = v.id
        except Conflict:
            self._discard(seg)  # nothing refers to it: leave no orphan file behind
            raise
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

    def _discard(self, seg: SegmentInfo) -> None:
        with self.catalog.session() as s:
            used = any(
                seg.key in {x["key"] for x in (m or [])}
                for (m,) in s.execute(select(VersionRecord.manifest)).all()
            )
        if not used:
            self.artifacts.delete(seg.key)
