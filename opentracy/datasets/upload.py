"""Upload: read a file into a dataset's active version, all or nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from sqlalchemy import select

from opentracy._arrow import from_numpy
from opentracy.datasets import formats
from opentracy.datasets._core import (
    DatasetCore,
    ProgressFn,
    _merge_clusters,
    _now_iso,
    again_if_stale,
    label,
    new_id,
)
from opentracy.datasets.models import (
    UploadResult,
    VersionInfo,
)
from opentracy.errors import Cancelled, Conflict, InvalidInput
from opentracy.store.segments import (
    INPUT_SCHEMA,
    ROW_GROUP_ROWS,
    Manifest,
    SegmentInfo,
    SegmentWriter,
    duck,
    version_sql,
    write_stored_rows,
)
from opentracy.store.tables import DatasetRecord, VersionRecord, utcnow


class _DatasetAppeared(Exception):
    """The dataset an upload was to create exists now: another upload (or writer) created it meanwhile."""

    def __init__(self, dataset_id: str) -> None:
        super().__init__(dataset_id)
        self.dataset_id = dataset_id


class UploadMixin(DatasetCore):
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
        writer = SegmentWriter(self.artifacts, id_salt=dsid, kind="base", find_repeats=True)
        try:
            if src.fast is not None:
                try:
                    pos, lines = self._write_batches(src.fast(), writer, base_ord, progress, cancelled)
                except formats.NeedsCarefulPath:
                    # Something in the file needs the line-by-line path (which names bad lines): start over.
                    writer.abort()
                    writer = SegmentWriter(self.artifacts, id_salt=dsid, kind="base", find_repeats=True)
                    progress(0.0, "reading the file line by line")
                    src = formats.open_source(
                        path,
                        format=src.format,
                        mapping=mapping,
                        split=split,
                        on_error=on_error,  # type: ignore[arg-type]
                        display_name=display_name,
                        chunk_bytes=self.chunk_bytes,
                    )
                    pos, lines = self._write_batches(src.batches, writer, base_ord, progress, cancelled)
            else:
                pos, lines = self._write_batches(src.batches, writer, base_ord, progress, cancelled)
            if pos > 0xFFFFFFFF:
                raise InvalidInput("a single upload holds at most 4,294,967,295 rows; split the file")
            progress(0.9, f"writing {pos:,} rows")
            seg = writer.close()
        except BaseException:
            writer.abort()
            raise
        try:
            drop = self._check_ids(
                src, seg, writer.problems, writer.may_repeat_ids(), lines, base_ord, target
            )
            if drop:
                seg = self._rewrite(seg, drop=drop)
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
                # numbers first, then strings: ids of both kinds in one file must not fail the upload
                sorted((json.loads(c) for c in writer.cluster_ids), key=lambda v: (isinstance(v, str), v))
                if len(writer.cluster_ids) < 10_000
                else []
            )
            with self._write_lock(name):  # row writes of this process wait; other processes' are retried
                try:
                    info = again_if_stale(
                        lambda: self._commit_upload(name, dsid, description, target, seg, step, clusters)
                    )
                except _DatasetAppeared as appeared:
                    # Another upload created the dataset while this one ran (parallel uploads of shards into
                    # a new name): join it. Our ords were numbered for a new dataset, so they move to a
                    # write sequence of the existing one; the commit then checks our ids against its rows.
                    dsid = appeared.dataset_id
                    seq = self._reserve_write_seq(dsid)
                    seg = self._rewrite(seg, ord_shift=(seq << 32) - base_ord)
                    info = again_if_stale(
                        lambda: self._commit_upload(name, dsid, description, None, seg, step, clusters)
                    )
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

    @staticmethod
    def _write_batches(
        batches: Iterator[formats.Batch],
        writer: SegmentWriter,
        base_ord: int,
        progress: ProgressFn,
        cancelled: Callable[[], bool] | None,
    ) -> tuple[int, list[np.ndarray | range]]:
        """Hand a source's batches to the segment writer with their ords; (rows, line numbers per batch)."""
        lines: list[np.ndarray | range] = []
        pos = 0
        for batch in batches:
            if cancelled and cancelled():
                raise Cancelled("upload cancelled; nothing was written")
            n = batch.table.num_rows
            if n:
                ords = from_numpy(np.arange(base_ord + pos, base_ord + pos + n, dtype=np.int64))
                t = batch.table
                t = pa.table(
                    {
                        "row_id": t.column("row_id"),
                        "ord": ords,
                        "prompt": t.column("prompt"),
                        "prompt_messages": t.column("prompt_messages"),
                        "response": t.column("response"),
                        "metadata": t.column("metadata"),
                        "deleted": from_numpy(np.zeros(n, dtype=bool)),
                    },
                    schema=INPUT_SCHEMA,
                )
                if "row_hash" in batch.table.column_names:  # hashed by the decoder where it could
                    t = t.append_column("row_hash", batch.table.column("row_hash"))
                writer.add(t)
                lines.append(batch.lines)
                pos += n
            progress(min(0.9, 0.9 * batch.progress), f"read {pos:,} rows")
        return pos, lines

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

    def _check_ids(
        self,
        src: formats.OpenedSource,
        seg: SegmentInfo,
        problems: list[tuple[int, str]],
        may_repeat: bool,
        lines: list[np.ndarray | range],
        base_ord: int,
        target: VersionRecord | None,
    ) -> set[int]:
        """Refuse (or, when skipping, drop) rows with badly typed metadata, and row ids repeated in the
        file or already in the version."""
        drop: set[int] = set()
        unit = src.errors.unit

        line_of: np.ndarray | None = None  # the line of every row, built only when a row needs naming

        def where(o: int) -> int:
            nonlocal line_of
            if line_of is None:
                parts = [
                    np.arange(p.start, p.stop, dtype=np.int64) if isinstance(p, range) else p for p in lines
                ]
                line_of = np.concatenate(parts) if parts else np.empty(0, np.int64)
            return int(line_of[o - base_ord])

        for o, problem in sorted(problems):
            src.errors(where(o), problem)
            drop.add(o)

        # Repeats inside the file (only when the segment writer found two equal 64-bit id hashes) and ids the
        # version holds already: both read from the new segment, on one connection.
        vsql = None
        if target is not None and target.manifest:
            vsql = version_sql(self.artifacts, Manifest.of(target.manifest), verify=True, columns="row_id")
        if not (may_repeat or vsql):
            return drop
        path = self.artifacts.local_path(seg.key)
        con = duck()
        try:
            dups = (
                con.sql(
                    f"SELECT row_id, list(ord ORDER BY ord) FROM read_parquet('{path}') GROUP BY row_id "
                    "HAVING count(*) > 1 ORDER BY min(ord)"
                ).fetchall()
                if may_repeat
                else []
            )
            clash = (
                con.sql(
                    f"SELECT n.row_id, n.ord FROM read_parquet('{path}') n JOIN ({vsql}) e ON n.row_id = e.row_id "
                    "ORDER BY n.ord"
                ).fetchall()
                if vsql
                else []
            )
        finally:
            con.close()
        for rid, o in dups:
            first = where(o[0])
            for later in o[1:]:
                src.errors(where(later), f"duplicate row_id {rid!r} (first seen at {unit} {first})")
                drop.add(int(later))
        for rid, o in clash:
            if int(o) in drop:
                continue
            src.errors(where(o), f"row_id {rid!r} is already in the dataset; edit that row instead")
            drop.add(int(o))
        return drop

    def _ids_in_version(self, seg: SegmentInfo, manifest: Manifest) -> list[str]:
        """Row ids of a new segment that a version already holds (the first few)."""
        if not manifest.segments:
            return []
        vsql = version_sql(self.artifacts, manifest, verify=True, columns="row_id")
        con = duck()
        try:
            return [
                r[0]
                for r in con.sql(
                    f"SELECT n.row_id FROM read_parquet('{self.artifacts.local_path(seg.key)}') n "
                    f"JOIN ({vsql}) e ON n.row_id = e.row_id ORDER BY n.ord LIMIT 3"
                ).fetchall()
            ]
        finally:
            con.close()

    def _rewrite(self, seg: SegmentInfo, *, drop: Collection[int] = (), ord_shift: int = 0) -> SegmentInfo:
        """The segment again without the rows at `drop` (ords), and with every ord moved by `ord_shift`."""
        path = self.artifacts.local_path(seg.key)
        con = duck()
        try:
            reader = con.sql(
                f"SELECT * REPLACE (ord + {int(ord_shift)} AS ord) FROM read_parquet('{path}') "
                "WHERE NOT list_contains(?, ord) ORDER BY ord",
                params=[sorted(drop)],
            ).to_arrow_reader(batch_size=ROW_GROUP_ROWS)
            out = write_stored_rows(self.artifacts, reader, scratch="rewrite")
        finally:
            con.close()
        self._discard(seg)
        return out

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
                appeared = s.scalar(select(DatasetRecord.id).where(DatasetRecord.name == name))
                if appeared:
                    raise _DatasetAppeared(appeared)
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
                if latest is not None and (
                    target is None or latest.id != target.id or latest.revision != target.revision
                ):
                    # Written to meanwhile (rows edited, added or deleted; frozen; a new version started; or
                    # the dataset created by another upload): the ids were checked against the version as it
                    # was, if at all, so check them against the rows the latest holds now. Edits and
                    # deletions of other rows cannot clash; a row added meanwhile with one of our ids can.
                    clash = self._ids_in_version(seg, Manifest.of(latest.manifest or []))
                    if clash:
                        raise Conflict(
                            f"row ids {', '.join(repr(c) for c in clash[:3])} were added to "
                            f"{label(name, latest.number)} while this upload ran; nothing was uploaded"
                        )
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
