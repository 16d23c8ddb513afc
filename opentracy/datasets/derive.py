"""Derived versions: the next version of a dataset written whole from rows a stage computed (curation now,
generation later), instead of edits on a copy of the parent.

The rows go into one fresh base segment (row ids and order kept from the parent); the version record, its
provenance (the parent's steps plus this one, with the job id) and whatever the caller adds in the same
transaction appear together or not at all. A job that died after committing finds its version again with
`find_derived(name, job_id)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa
from sqlalchemy import func, select

from opentracy.datasets._core import DatasetCore, _merge_clusters, _now_iso, label
from opentracy.datasets.models import VersionInfo
from opentracy.errors import Conflict, InvalidInput
from opentracy.store.segments import SegmentWriter
from opentracy.store.tables import DatasetRecord, VersionRecord, utcnow


class DeriveMixin(DatasetCore):
    # Called as hook(name, version) at the start of every freeze (see VersionsMixin.freeze).
    freeze_hooks: list[Callable[[str, int | str | None], None]]

    def add_freeze_hook(self, hook: Callable[[str, int | str | None], None]) -> None:
        if "freeze_hooks" not in self.__dict__:
            self.freeze_hooks = []
        self.freeze_hooks.append(hook)

    def derive_version(
        self,
        name: str,
        parent: int | str,
        tables: Iterable[pa.Table],
        *,
        step: dict[str, Any],
        in_transaction: Callable[[Any, VersionRecord], None] | None = None,
    ) -> VersionInfo:
        """Create the next active version, child of the frozen `parent`, holding exactly the rows of `tables`
        (INPUT_SCHEMA; `ord` decides their order). `step` is appended to the parent's provenance.
        `in_transaction(session, version)` runs inside the transaction that creates the version."""
        with self.catalog.session() as s:
            ds = self._dataset(s, name)
            p = self._version(s, ds, parent)
            if p.status != "frozen":
                raise Conflict(
                    f"{label(name, p.number)} is active: freeze it before deriving a version from it"
                )
            dsid, pid = ds.id, p.id
        w = SegmentWriter(self.artifacts, id_salt=dsid, kind="base")
        try:
            for t in tables:
                w.add(t)
        except BaseException:
            w.abort()
            raise
        seg = w.close()
        if w.problems:
            ordv, problem = w.problems[0]
            self._discard(seg)
            raise InvalidInput(f"a derived row (ord {ordv}) is not valid: {problem}")
        import json

        clusters = [json.loads(c) for c in w.cluster_ids]
        try:
            with self.catalog.session() as s:
                ds = self._dataset(s, name)
                p = s.get(VersionRecord, pid)
                active = s.scalar(
                    select(VersionRecord).where(
                        VersionRecord.dataset_id == ds.id, VersionRecord.status == "active"
                    )
                )
                if active is not None:
                    raise Conflict(
                        f"{label(name, active.number)} is active: a dataset has at most one active version. "
                        f"Freeze it first (`opentracy datasets freeze {name}`)."
                    )
                top = (
                    s.scalar(select(func.max(VersionRecord.number)).where(VersionRecord.dataset_id == ds.id))
                    or 0
                )
                stats = _merge_clusters(
                    {k: x for k, x in (p.stats or {}).items() if k not in ("cluster_ids", "cluster_count")},
                    clusters,
                )
                v = self._new_version_record(
                    ds,
                    top + 1,
                    parent=p,
                    manifest=[seg.to_manifest()],
                    row_count=seg.rows,
                    stats=stats,
                    provenance=list(p.provenance or [])
                    + [
                        {
                            **step,
                            "parent": label(name, p.number),
                            "parent_hash": p.content_hash,
                            "at": _now_iso(),
                        }
                    ],
                )
                s.add(v)
                ds.updated_at = utcnow()
                s.flush()
                if in_transaction is not None:
                    in_transaction(s, v)
                s.flush()
                return self._info(ds, v)
        except BaseException:
            self._discard(seg)
            raise

    def find_derived(self, name: str, job_id: str) -> VersionInfo | None:
        """The version a job already derived, if any: the first version whose provenance has a step with this
        job id (later versions inherit the step from it)."""
        with self.catalog.session() as s:
            ds = s.scalar(select(DatasetRecord).where(DatasetRecord.name == name))
            if ds is None:
                return None
            q = select(VersionRecord).where(VersionRecord.dataset_id == ds.id).order_by(VersionRecord.number)
            for v in s.scalars(q).all():
                if any(step.get("job_id") == job_id for step in v.provenance or []):
                    return self._info(ds, v)
        return None

    # -- generation (issue 7) ----------------------------------------------------------------------------
    def create_derived(
        self,
        name: str,
        tables: Iterable[pa.Table],
        *,
        step: dict[str, Any],
        description: str = "",
        in_transaction: Callable[[Any, VersionRecord], None] | None = None,
    ) -> VersionInfo:
        """Create a new dataset whose first, active version holds exactly the rows of `tables` (INPUT_SCHEMA),
        with `step` as its provenance. The dataset, its version and whatever `in_transaction(session,
        version)` adds appear together or not at all; a dataset of that name created meanwhile is a Conflict."""
        from opentracy.datasets._core import new_id

        self.check_name(name)
        dsid = new_id("ds")
        w = SegmentWriter(self.artifacts, id_salt=dsid, kind="base")
        try:
            for t in tables:
                w.add(t)
        except BaseException:
            w.abort()
            raise
        seg = w.close()
        if w.problems:
            ordv, problem = w.problems[0]
            self._discard(seg)
            raise InvalidInput(f"a derived row (ord {ordv}) is not valid: {problem}")
        import json

        clusters = [json.loads(c) for c in w.cluster_ids]
        try:
            with self.catalog.session() as s:
                if s.scalar(select(DatasetRecord.id).where(DatasetRecord.name == name)):
                    raise Conflict(f"a dataset named {name!r} was created meanwhile; nothing was written")
                ds = DatasetRecord(id=dsid, name=name, description=description or "", write_seq=0)
                s.add(ds)
                s.flush()
                v = self._new_version_record(
                    ds,
                    1,
                    manifest=[seg.to_manifest()],
                    row_count=seg.rows,
                    stats=_merge_clusters({}, clusters),
                    provenance=[{**step, "at": _now_iso()}],
                )
                s.add(v)
                s.flush()
                if in_transaction is not None:
                    in_transaction(s, v)
                s.flush()
                return self._info(ds, v)
        except BaseException:
            self._discard(seg)
            raise
