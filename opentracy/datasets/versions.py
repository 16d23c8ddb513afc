"""Datasets and their versions: create, list, delete, freeze, new_version, diff.

A dataset has at most one active version; only the active version takes writes. Freezing makes a version
immutable and records its content hash; `new_version` starts the next active version from a frozen parent
by copying its manifest, not its rows.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select

from opentracy.datasets._core import (
    DatasetCore,
    ProgressFn,
    _merge_clusters,
    _now_iso,
    label,
    new_id,
)
from opentracy.datasets.models import (
    DatasetInfo,
    DiffResult,
    VersionInfo,
)
from opentracy.errors import Conflict, InvalidInput
from opentracy.store.segments import (
    Manifest,
    content_hash,
    duck,
    version_sql,
)
from opentracy.store.tables import DatasetRecord, VersionRecord, utcnow


class VersionsMixin(DatasetCore):
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
        # Work other parts must finish on a version before it freezes (curation: the review queue's policy for
        # rows still pending). Each hook takes (name, version) and may write to the still-active version.
        for hook in list(getattr(self, "freeze_hooks", ())):
            hook(name, version)
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
