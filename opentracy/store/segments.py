"""Dataset rows in immutable Parquet segments.

A segment is a snappy Parquet file in the artifact store, named by its sha256. A version's manifest is an
ordered list of segments. "base" segments hold rows with distinct `row_id`s; "delta" segments (edits,
deletes) may repeat a `row_id` from an earlier segment and win over it (newest first), a delete being a
tombstone row with `deleted = true`. Reads merge them in DuckDB. Freezing compacts a manifest with deltas
into one base segment.

Columns: row_id, ord (int64 sort key: the order rows were added in), prompt (text, or JSON of chat
messages when prompt_messages is true), prompt_messages, response, metadata (JSON object text), row_hash
(16 bytes, md5 of the row's content), deleted.
"""

from __future__ import annotations

import hashlib
import os
import queue
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from opentracy._arrow import to_numpy
from opentracy.errors import OpentracyError
from opentracy.store.artifacts import ArtifactStore, HashingFile

INPUT_SCHEMA = pa.schema(
    [
        ("row_id", pa.string()),
        ("ord", pa.int64()),
        ("prompt", pa.string()),
        ("prompt_messages", pa.bool_()),
        ("response", pa.string()),
        ("metadata", pa.string()),
        ("deleted", pa.bool_()),
    ]
)
SEGMENT_SCHEMA = pa.schema(
    [
        ("row_id", pa.string()),
        ("ord", pa.int64()),
        ("prompt", pa.string()),
        ("prompt_messages", pa.bool_()),
        ("response", pa.string()),
        ("metadata", pa.string()),
        ("row_hash", pa.binary()),
        ("deleted", pa.bool_()),
    ]
)
ROW_COLUMNS = "row_id, ord, prompt, prompt_messages, response, metadata, row_hash"

# The row hash covers everything a row says, and nothing about where it is stored: md5 of the row as one
# canonical JSON object, keys in this order, minified by DuckDB's JSON writer (metadata is stored in that
# form already; a chat prompt is stored as its JSON text). The JSONL decoder has each field as minified
# JSON text already, so it hashes the rows that carry their id and hands the hash over (`add`).
ROW_HASH_SQL = (
    """unhex(md5('{"row_id":' || to_json(row_id) || ',"prompt":' || CASE WHEN prompt_messages THEN prompt"""
    """ ELSE to_json(prompt) END || ',"response":' || to_json(response) || ',"metadata":' || metadata || '}'))"""
)
# Rows per Parquet row group in segments. DuckDB reads a row group per thread at a time, so this bounds what
# a scan holds: with 38k-row groups, a freeze that compacts 1M edited rows peaked ~80 MB higher than with 16k
# (bench/upload.py), while reads and writes ran no faster.
ROW_GROUP_ROWS = 16_384
# snappy: about half the CPU of zstd to write and to read, for ~1.4x the bytes (docs/decisions/0031); row
# hashes are random bytes, which no codec shrinks (skipping it: ~6% of the write). Readers take any codec, so
# segments written with another one stay readable.
SEGMENT_COMPRESSION = {name: "none" if name == "row_hash" else "snappy" for name in SEGMENT_SCHEMA.names}
SEGMENT_DICTIONARY = ["response", "prompt_messages", "deleted"]  # low-cardinality columns only
SEGMENT_STATISTICS = ["row_id", "ord", "deleted"]  # what reads filter on

# Types of the metadata keys the spec names, checked in DuckDB (one JSON parse a row, no GIL held): each is
# taken out as minified JSON text (NULL when missing or null, which are allowed), whose first character
# tells its type; tags must be an array of strings only.
_META_STRUCT_SQL = (
    'json_transform(CASE WHEN prefix(metadata, \'{\') THEN metadata END, \'{"source_trace_id":"JSON",'
    '"teacher_model":"JSON","judge_score":"JSON","cluster_id":"JSON","tags":"JSON"}\')'
)
_META_PROBLEM_SQL = """CASE
  WHEN deleted THEN NULL
  WHEN NOT prefix(metadata, '{') THEN 'metadata must be an object'
  WHEN NOT prefix(_m.source_trace_id, '"') THEN 'metadata.source_trace_id must be a string'
  WHEN NOT prefix(_m.teacher_model, '"') THEN 'metadata.teacher_model must be a string'
  WHEN NOT regexp_matches(_m.judge_score, '^-?[0-9]') THEN 'metadata.judge_score must be a number'
  WHEN NOT (prefix(_m.cluster_id, '"') OR regexp_full_match(_m.cluster_id, '-?[0-9]+'))
    THEN 'metadata.cluster_id must be an integer or a string'
  WHEN NOT regexp_full_match(_m.tags, '\\[("([^"\\\\]|\\\\.)*"(,"([^"\\\\]|\\\\.)*")*)?\\]')
    THEN 'metadata.tags must be a list of strings'
  END"""


_shared: duckdb.DuckDBPyConnection | None = None
_shared_lock = threading.Lock()


def duck(
    threads: int | None = None, memory_limit: str = "1GB", ordered: bool = True
) -> duckdb.DuckDBPyConnection:
    """An in-process DuckDB connection with bounded memory; close it when done.

    With the defaults it is a cursor of one in-memory database the process shares (opening a database costs
    ~12 ms, a cursor ~0.2 ms: most of a page of rows), so concurrent reads share its 1 GB. Other settings
    get a database of their own. `ordered=False` lets DuckDB stream results in any order (less buffering),
    for work whose readers sort.
    """
    global _shared
    if threads is None and memory_limit == "1GB" and ordered:
        with _shared_lock:
            if _shared is None:
                _shared = duckdb.connect(config={"memory_limit": "1GB", "preserve_insertion_order": True})
            return _shared.cursor()
    con = duckdb.connect(config={"memory_limit": memory_limit, "preserve_insertion_order": ordered})
    if threads:
        con.execute(f"SET threads={int(threads)}").fetchall()
    return con


def generated_row_id_sql(salt: str) -> str:
    # Deterministic for a dataset and position: the same upload into the same dataset yields the same ids.
    return f"'r_' || substr(md5('{salt}:' || CAST(ord AS VARCHAR)), 1, 16)"


@dataclass
class SegmentInfo:
    key: str
    sha256: str
    rows: int
    bytes: int
    kind: str = "base"  # base | delta
    deletes: int = 0

    def to_manifest(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "sha256": self.sha256,
            "rows": self.rows,
            "bytes": self.bytes,
            "kind": self.kind,
        }


class _Stop:
    pass


_STOP = _Stop()


@dataclass
class SegmentWriter:
    """Writes Arrow tables (INPUT_SCHEMA) into one Parquet segment through a 3-stage pipeline.

    The caller's thread decodes and calls `add()`; a hashing thread fills generated row ids and row
    hashes in DuckDB; a writing thread compresses and writes row groups. Both threads spend their time
    in native code that releases the GIL, so decoding overlaps hashing and writing on two cores.
    """

    artifacts: ArtifactStore
    id_salt: str
    kind: str = "base"
    rows: int = 0
    deletes: int = 0
    find_repeats: bool = False  # say whether row ids may repeat (`may_repeat_ids`), as uploads must
    _rid_hashes: list[np.ndarray] = field(default_factory=list)  # 64-bit hashes of the row ids, per batch
    _repeats: bool = False  # two of those hashes are equal (set when the hashing thread ends)
    # (ord, problem) for rows whose metadata has a known key of the wrong type
    problems: list[tuple[int, str]] = field(default_factory=list)
    # distinct metadata.cluster_id values, as JSON text
    cluster_ids: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._path = str(self.artifacts.scratch_file("seg", ".parquet"))
        self._q_hash: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._q_write: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._writer: pq.ParquetWriter | None = None
        self._sink: HashingFile | None = None
        self._t_hash = threading.Thread(target=self._hash_loop, name="segment-hash", daemon=True)
        self._t_write = threading.Thread(target=self._write_loop, name="segment-write", daemon=True)
        self._t_hash.start()
        self._t_write.start()
        self._closed = False

    # stage 2
    def _hash_loop(self) -> None:
        con = duck(threads=1, memory_limit="256MB")
        gen = generated_row_id_sql(self.id_salt)
        # Only derived columns come back from DuckDB; prompt and response pass through untouched. Metadata is
        # stored minified by DuckDB's json(), whatever wrote it, so equal content always hashes equal (rows
        # that come with their hash have it in that form already).
        sql = (
            f"SELECT row_id, metadata, coalesce(_given, {ROW_HASH_SQL}) AS row_hash, hash(row_id) AS _rid,"
            f" {_META_PROBLEM_SQL} AS _problem, _m.cluster_id AS _cluster"
            f" FROM (SELECT COALESCE(row_id, {gen}) AS row_id, prompt, prompt_messages, response,"
            " CASE WHEN _given IS NULL THEN CAST(json(metadata) AS VARCHAR) ELSE metadata END AS metadata,"
            f" deleted, _given, {_META_STRUCT_SQL} AS _m FROM b)"
        )
        # A batch whose rows all came with their hash (the JSONL decoder's) needs neither the hash nor
        # re-minified metadata: only the checks run, and prompt and response are not even scanned (~20% of
        # this stage's CPU).
        checks_sql = (
            f"SELECT hash(row_id) AS _rid, {_META_PROBLEM_SQL} AS _problem, _m.cluster_id AS _cluster"
            f" FROM (SELECT row_id, metadata, deleted, {_META_STRUCT_SQL} AS _m FROM b)"
        )
        try:
            while True:
                b = self._q_hash.get()
                if b is _STOP:
                    break
                if self._error is not None:
                    continue
                if b.column("_given").null_count == 0:
                    res = con.sql(checks_sql).to_arrow_table()
                    row_id, metadata, row_hash = b.column("row_id"), b.column("metadata"), b.column("_given")
                else:
                    res = con.sql(sql).to_arrow_table()
                    row_id, metadata, row_hash = (
                        res.column("row_id"),
                        res.column("metadata"),
                        res.column("row_hash"),
                    )
                # A copy: a view would keep the whole batch alive (Arrow's release callback is per batch).
                if self.find_repeats:
                    self._rid_hashes.append(to_numpy(res.column("_rid")).view(np.uint64))
                if res.column("_problem").null_count < res.num_rows:
                    ords = b.column("ord").to_pylist()
                    for i, p in enumerate(res.column("_problem").to_pylist()):
                        if p is not None:
                            self.problems.append((int(ords[i]), str(p)))
                clusters = res.column("_cluster")
                if clusters.null_count < res.num_rows:
                    self.cluster_ids.update(pc.unique(clusters).drop_null().to_pylist())  # JSON null: NULL
                out = pa.table(
                    [
                        row_id,
                        b.column("ord"),
                        b.column("prompt"),
                        b.column("prompt_messages"),
                        b.column("response"),
                        metadata,
                        row_hash,
                        b.column("deleted"),
                    ],
                    schema=SEGMENT_SCHEMA,
                )
                self._q_write.put(out)
        except BaseException as e:  # handed to the caller's thread by add()/close()
            self._error = e
        finally:
            con.close()
            self._q_write.put(_STOP)
        # Sorted while the writing thread writes the last row groups, rather than after it (~2% of an upload).
        try:
            if self.find_repeats and self._error is None and self._rid_hashes:
                h = np.concatenate(self._rid_hashes)
                self._rid_hashes.clear()
                h.sort()
                self._repeats = bool(np.any(h[1:] == h[:-1]))
        except BaseException as e:
            self._error = e

    # stage 3
    def _write_loop(self) -> None:
        try:
            while True:
                t = self._q_write.get()
                if t is _STOP:
                    break
                if self._error is not None:
                    continue
                if self._writer is None:
                    self._sink = HashingFile(self._path)  # hashed as written: not read again by put_file
                    # Two writers making the same edit would write the same bytes, hence one file under one
                    # content address, which a writer that lost a race could then delete under the other. A
                    # delta is written once per write, so each gets a token of its own in the file's metadata.
                    token = (
                        {b"opentracy.write": secrets.token_hex(8).encode()} if self.kind == "delta" else None
                    )
                    self._writer = segment_parquet_writer(self._sink, metadata=token)
                self._writer.write_table(t, row_group_size=ROW_GROUP_ROWS)
        except BaseException as e:
            self._error = e

    def add(self, table: pa.Table) -> None:
        """Queue rows (INPUT_SCHEMA). A `row_hash` column may come along: where it is not null it is the
        row's hash (ROW_HASH_SQL) and its metadata is already in stored form, so neither is computed again."""
        if self._error is not None:
            raise self._error
        if table.num_rows == 0:
            return
        self.rows += table.num_rows
        if self.kind == "delta":
            self.deletes += int(pa.compute.sum(table.column("deleted")).as_py() or 0)
        given = table.column("row_hash") if "row_hash" in table.column_names else None
        table = table.select(INPUT_SCHEMA.names).cast(INPUT_SCHEMA)
        given = given.cast(pa.binary()) if given is not None else pa.nulls(table.num_rows, pa.binary())
        self._q_hash.put(table.append_column("_given", given))

    def _finish_threads(self) -> None:
        if not self._closed:
            self._closed = True
            self._q_hash.put(_STOP)
            self._t_hash.join()
            self._t_write.join()
            try:
                if self._writer is not None:
                    self._writer.close()
            finally:
                if self._sink is not None:
                    self._sink.close()

    def close(self) -> SegmentInfo:
        """Finish writing and move the file into the store under its content address."""
        self._finish_threads()
        if self._error is not None:
            self.abort()
            raise self._error
        digest = None
        if self._writer is None:  # no rows: still a valid, empty segment
            pq.write_table(SEGMENT_SCHEMA.empty_table(), self._path, compression=SEGMENT_COMPRESSION)
        elif self._sink is not None:
            digest = self._sink.hexdigest()
        key, digest, size = self.artifacts.put_file(
            self._path, prefix="segments", suffix=".parquet", sha256=digest
        )
        return SegmentInfo(
            key=key, sha256=digest, rows=self.rows, bytes=size, kind=self.kind, deletes=self.deletes
        )

    def abort(self) -> None:
        self._error = self._error or OpentracyError("segment write aborted")
        self._finish_threads()
        if os.path.exists(self._path):
            os.unlink(self._path)

    def may_repeat_ids(self) -> bool:
        """Whether two rows written may share a row id (their 64-bit hashes do; known after `close`). False
        proves no id repeats; True asks the caller to look at the ids themselves."""
        if not self.find_repeats:
            raise RuntimeError("this SegmentWriter was not asked to find repeated row ids")
        self._finish_threads()
        return self._repeats


def segment_parquet_writer(sink: Any, metadata: dict[bytes, bytes] | None = None) -> pq.ParquetWriter:
    """A Parquet writer with the segment schema, codecs, dictionary and statistics settings."""
    return pq.ParquetWriter(
        sink,
        SEGMENT_SCHEMA.with_metadata(metadata) if metadata else SEGMENT_SCHEMA,
        compression=SEGMENT_COMPRESSION,
        use_dictionary=SEGMENT_DICTIONARY,
        write_statistics=SEGMENT_STATISTICS,
    )


def write_stored_rows(
    artifacts: ArtifactStore, batches: Iterable[pa.RecordBatch], *, scratch: str
) -> SegmentInfo:
    """Rows already in stored form (SEGMENT_SCHEMA: ids, hashes and metadata final, as a compaction or a
    rewrite reads them back) as one base segment, hashed as it is written."""
    tmp = artifacts.scratch_file(scratch, ".parquet")
    sink = HashingFile(tmp)
    n = 0
    try:
        with segment_parquet_writer(sink) as w:
            for rb in batches:
                n += rb.num_rows
                rb = rb.cast(SEGMENT_SCHEMA) if rb.schema != SEGMENT_SCHEMA else rb
                w.write_batch(rb, row_group_size=ROW_GROUP_ROWS)
    except BaseException:
        sink.close()
        tmp.unlink(missing_ok=True)
        raise
    sink.close()
    key, digest, size = artifacts.put_file(tmp, prefix="segments", suffix=".parquet", sha256=sink.hexdigest())
    return SegmentInfo(key=key, sha256=digest, rows=n, bytes=size, kind="base")


def write_segment(
    artifacts: ArtifactStore, tables: Iterable[pa.Table], *, id_salt: str, kind: str = "base"
) -> SegmentInfo:
    w = SegmentWriter(artifacts, id_salt=id_salt, kind=kind)
    try:
        for t in tables:
            w.add(t)
    except BaseException:
        w.abort()
        raise
    return w.close()


# ---------------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class Manifest:
    segments: tuple[dict[str, Any], ...]

    @classmethod
    def of(cls, raw: Sequence[dict[str, Any]]) -> Manifest:
        return cls(tuple(dict(s) for s in raw))

    @property
    def has_deltas(self) -> bool:
        return any(s.get("kind") == "delta" for s in self.segments)


def _sql_list(items: Sequence[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in items) + "]"


def version_sql(
    artifacts: ArtifactStore,
    manifest: Manifest,
    *,
    verify: bool,
    columns: str = ROW_COLUMNS,
    scan_filter: str | None = None,
) -> str:
    """SQL for the live rows of a manifest (unordered; callers ORDER BY ord where order matters).

    A row is live unless it is a tombstone or a later delta segment holds the same row_id. Deltas are small,
    so this is an anti-join against them that streams over the base segments, instead of a window over
    every row. `scan_filter` (SQL on segment columns) is applied at the scan, below the anti-join.
    """
    if not manifest.segments:
        return (
            f"SELECT {columns} FROM (SELECT NULL::VARCHAR AS row_id, NULL::BIGINT AS ord, NULL::VARCHAR AS prompt,"
            " NULL::BOOLEAN AS prompt_messages, NULL::VARCHAR AS response, NULL::VARCHAR AS metadata,"
            " NULL::BLOB AS row_hash) WHERE false"
        )
    # A file listed twice (two deltas with the same bytes, written before deltas got a token of their own)
    # counts at its last place: a later write wins, and its rows are not read twice.
    last = {s["key"]: i for i, s in enumerate(manifest.segments)}
    manifest = Manifest(tuple(s for i, s in enumerate(manifest.segments) if last[s["key"]] == i))
    paths = [
        artifacts.verify(s["key"], s.get("sha256")) if verify else artifacts.local_path(s["key"])
        for s in manifest.segments
    ]
    if not manifest.has_deltas:
        return f"SELECT {columns} FROM read_parquet({_sql_list(paths)})" + (
            f" WHERE {scan_filter}" if scan_filter else ""
        )
    all_paths = _sql_list(paths)
    delta_paths = _sql_list(
        [p for p, s in zip(paths, manifest.segments, strict=True) if s.get("kind") == "delta"]
    )
    # The latest delta segment of each edited row id (small); a row is overridden by a later one.
    latest = (
        f"SELECT row_id AS _lid, max(list_position({all_paths}, filename)) AS _lseg"
        f" FROM read_parquet({delta_paths}, filename = true) GROUP BY row_id"
    )
    scan = f"SELECT *, list_position({all_paths}, filename) AS _seg FROM read_parquet({all_paths}, filename = true)"
    if scan_filter:
        scan += f" WHERE {scan_filter}"
    return (
        f"SELECT {columns} FROM ({scan}) AS r LEFT JOIN ({latest}) AS l ON l._lid = r.row_id"
        " WHERE NOT r.deleted AND (l._lseg IS NULL OR l._lseg <= r._seg)"
    )


def content_hash(con: duckdb.DuckDBPyConnection, rows_sql: str) -> tuple[str, int]:
    """sha256 over (row_id, row_hash) in row order: the identity of a version's content."""
    h = hashlib.sha256()
    n = 0
    reader = con.sql(
        f"SELECT row_id || ':' || hex(row_hash) || chr(10) AS line FROM ({rows_sql}) ORDER BY ord"
    ).to_arrow_reader(batch_size=200_000)
    for batch in reader:
        col = batch.column(0)
        n += len(col)
        # Arrow's string buffer holds the lines back to back: hash it without making Python strings.
        bufs = col.buffers()
        offs = np.frombuffer(bufs[1], dtype=np.int32)[col.offset : col.offset + len(col) + 1]
        h.update(memoryview(bufs[2])[int(offs[0]) : int(offs[-1])])
    return "sha256:" + h.hexdigest(), n


def iter_batches(
    con: duckdb.DuckDBPyConnection, sql: str, batch_size: int = 50_000
) -> Iterator[pa.RecordBatch]:
    yield from con.sql(sql).to_arrow_reader(batch_size=batch_size)


ProgressFn = Callable[[float, str], None]
