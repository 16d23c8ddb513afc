"""Readers: turn a file (JSONL, OpenAI chat JSONL, CSV, Parquet, a Hugging Face dataset) into batches of rows.

Every reader streams: it holds one chunk of the file at a time. Every problem names the file and the
line (text formats) or row (columnar formats). With `on_error="skip"` bad records are left out and listed.

A batch is an Arrow table with columns row_id, prompt, prompt_messages, response, metadata (JSON text),
plus the 1-based line or row number of each row and the cluster ids it mentions.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import csv
import functools
import hashlib
import io
import json
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import msgspec
import numpy as np
import pyarrow as pa

from opentracy._arrow import from_numpy
from opentracy._compression import (
    COMPRESSED_SUFFIXES,
    DAMAGED,
    OPENERS,
    compression_of,
    damaged,
    open_content,
)
from opentracy._csv import reader as strict_csv
from opentracy.datasets.rows import MESSAGE_ROLES, check_messages, check_metadata, type_name
from opentracy.datasets.suffixes import SUFFIX_FORMATS
from opentracy.errors import InvalidInput

FORMATS = ("jsonl", "openai", "csv", "parquet", "hf")
OnError = Literal["raise", "skip"]
MAX_LISTED_ERRORS = 1000

BATCH_SCHEMA = pa.schema(
    [
        ("row_id", pa.string()),
        ("prompt", pa.string()),
        ("prompt_messages", pa.bool_()),
        ("response", pa.string()),
        ("metadata", pa.string()),
    ]
)

_encode = msgspec.json.Encoder().encode
_decode_any = msgspec.json.Decoder().decode


@dataclass
class Batch:
    table: pa.Table
    lines: np.ndarray | range  # the line (or row) number of each row; a range where they run on unbroken
    progress: float  # 0..1 of the source read so far


@dataclass
class Mapping:
    """Which source fields become prompt, response and metadata."""

    prompt_field: str | None = None
    response_field: str | None = None
    metadata_fields: list[str] | None = None  # None: every other field goes into metadata
    row_id_field: str = "row_id"

    @property
    def is_default(self) -> bool:
        return (
            self.prompt_field in (None, "prompt")
            and self.response_field in (None, "response")
            and (self.metadata_fields is None)
        )

    @property
    def prompt(self) -> str:
        return self.prompt_field or "prompt"

    @property
    def response(self) -> str:
        return self.response_field or "response"


@dataclass
class Errors:
    """Where bad records go: raised at once, or collected when skipping."""

    file: str
    on_error: OnError = "raise"
    unit: Literal["line", "row"] = "line"
    items: list[dict[str, Any]] = field(default_factory=list)
    count: int = 0

    def __call__(self, where: int, message: str) -> None:
        if self.on_error == "raise":
            if self.unit == "line":
                raise InvalidInput(message, file=self.file, line=where)
            raise InvalidInput(message, file=self.file, row=where)
        self.count += 1
        if len(self.items) < MAX_LISTED_ERRORS:
            self.items.append({self.unit: where, "error": message})


class _Builder:
    """Collects normalised rows for one batch."""

    __slots__ = ("row_id", "prompt", "is_msgs", "response", "metadata", "lines")

    def __init__(self) -> None:
        self.row_id: list[str | None] = []
        self.prompt: list[str] = []
        self.is_msgs: list[bool] = []
        self.response: list[str] = []
        self.metadata: list[str] = []
        self.lines: list[int] = []

    def __len__(self) -> int:
        return len(self.prompt)

    def add(
        self, row_id: str | None, prompt: Any, response: str, meta: dict[str, Any] | str, line: int
    ) -> None:
        self.row_id.append(row_id)
        if isinstance(prompt, str):
            self.prompt.append(prompt)
            self.is_msgs.append(False)
        else:
            self.prompt.append(_encode(prompt).decode())
            self.is_msgs.append(True)
        self.response.append(response)
        if isinstance(meta, dict):
            self.metadata.append(_encode(meta).decode() if meta else "{}")
        else:
            self.metadata.append(meta)
        self.lines.append(line)

    def batch(self, progress: float) -> Batch:
        t = pa.table(
            [
                pa.array(self.row_id, pa.string()),
                pa.array(self.prompt, pa.string()),
                pa.array(self.is_msgs, pa.bool_()),
                pa.array(self.response, pa.string()),
                pa.array(self.metadata, pa.string()),
            ],
            schema=BATCH_SCHEMA,
        )
        return Batch(t, np.asarray(self.lines, dtype=np.int64), progress)


class Normaliser:
    """Maps one decoded record (a dict) to a row, or reports what is wrong with it."""

    def __init__(self, mapping: Mapping, errors: Errors, *, chat: bool = False) -> None:
        self.m = mapping
        self.errors = errors
        self.chat = chat
        self.seen: set[str] = set()  # of the metadata_fields asked for, those some record had

    def check_fields_seen(self, name: str) -> None:
        """A field named in metadata_fields that no record had is a mistake in the mapping (a typo, or the
        wrong file), not a field to drop without a word."""
        missing = [f for f in self.m.metadata_fields or [] if f not in self.seen]
        if missing and not self.chat:
            raise InvalidInput(
                f"no record has the field {missing[0]!r} named in metadata_fields; nothing was uploaded",
                file=name,
            )

    def add(self, rec: Any, where: int, out: _Builder) -> None:
        err = self.errors
        if not isinstance(rec, dict):
            return err(where, f"expected a JSON object, got {type_name(rec)}")
        if self.chat or (self.m.is_default and "messages" in rec and "prompt" not in rec):
            return self._add_chat(rec, where, out)
        m = self.m
        pf, rf = m.prompt, m.response
        if pf not in rec or rec[pf] is None:
            return err(where, f"missing prompt (field {pf!r})")
        if rf not in rec or rec[rf] is None:
            return err(where, f"missing response (field {rf!r})")
        prompt, response = rec[pf], rec[rf]
        if isinstance(prompt, list):
            problem = check_messages(prompt)
            if problem:
                return err(where, f"field {pf!r}: {problem}")
        elif not isinstance(prompt, str):
            return err(
                where, f"field {pf!r} must be a string or a list of chat messages, not {type_name(prompt)}"
            )
        if not isinstance(response, str):
            return err(where, f"field {rf!r} must be a string, not {type_name(response)}")
        row_id = rec.get(m.row_id_field)
        problem = _row_id_problem(row_id, m.row_id_field)
        if problem:
            return err(where, problem)
        meta = rec.get("metadata")
        if meta is None:
            meta = {}
        elif not isinstance(meta, dict):
            return err(where, f"metadata must be an object, not {type_name(meta)}")
        else:
            meta = dict(meta)
        skip = {pf, rf, m.row_id_field, "metadata"}
        if m.metadata_fields is None:
            for k in rec:
                if k not in skip:
                    meta[k] = rec[k]
        else:
            for k in m.metadata_fields:
                if k in rec and k not in skip:
                    meta[k] = rec[k]
                    self.seen.add(k)
        problem = check_metadata(meta)
        if problem:
            return err(where, problem)
        out.add(row_id, prompt, response, meta, where)

    def _add_chat(self, rec: dict[str, Any], where: int, out: _Builder) -> None:
        """OpenAI fine-tuning format: all messages but the last are the prompt, the last assistant turn the response."""
        err = self.errors
        msgs = rec.get("messages")
        problem = check_messages(msgs)
        if problem:
            return err(where, f"field 'messages': {problem}")
        last = msgs[-1]
        if last.get("role") != "assistant":
            return err(where, "the last message must be the assistant's answer (role 'assistant')")
        if len(msgs) < 2:
            return err(where, "a chat example needs at least one message before the assistant's answer")
        content = last.get("content")
        if content is None:
            if not last.get("tool_calls"):
                return err(where, "the assistant's answer has no content")
            content = ""
        if not isinstance(content, str):
            return err(where, "the assistant's answer must be a string")
        meta: dict[str, Any] = {}
        extra_msg = {k: v for k, v in last.items() if k not in ("role", "content")}
        if last.get("content") is None:
            extra_msg["content"] = None
        if extra_msg:
            meta["openai_response_message"] = extra_msg
        if rec.get("metadata") is not None and not isinstance(rec["metadata"], dict):
            return err(where, f"metadata must be an object, not {type_name(rec['metadata'])}")
        extra_top = {k: v for k, v in rec.items() if k not in ("messages", "metadata", "row_id")}
        if extra_top:
            meta["openai_extra"] = extra_top
        if isinstance(rec.get("metadata"), dict):
            meta = {**rec["metadata"], **meta}
        problem = check_metadata(meta)
        if problem:
            return err(where, problem)
        row_id = rec.get("row_id")
        problem = _row_id_problem(row_id, "row_id")
        if problem:
            return err(where, problem)
        out.add(row_id, msgs[:-1], content, meta, where)


def _row_id_problem(row_id: Any, field_name: str) -> str | None:
    if row_id is None or (isinstance(row_id, str) and row_id):
        return None
    if isinstance(row_id, str):
        return f"field {field_name!r} must not be empty"
    return f"field {field_name!r} must be a non-empty string, not {type_name(row_id)}"


# ---------------------------------------------------------------------------------------------------
# JSONL


class _FastRow(msgspec.Struct, forbid_unknown_fields=True):
    prompt: str | list[dict[str, Any]]
    response: str
    row_id: str | None = None
    metadata: msgspec.Raw = msgspec.Raw(b"{}")


_fast_rows = msgspec.json.Decoder(list[_FastRow])
_BOM = codecs.BOM_UTF8


class _Tap(io.RawIOBase):
    """The raw bytes of a file as a decompressor reads them: hashed and counted on the way."""

    def __init__(self, path: Path, sha256: Any, counted: Callable[[int], None]) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed with the tap
        self._sha256 = sha256
        self._counted = counted

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._f.readinto(b)
        if n:
            self._sha256.update(memoryview(b)[:n])
            self._counted(n)
        return n or 0

    def drain(self) -> None:
        """Hash what the decompressor left unread (bytes after the last compressed stream)."""
        while chunk := self._f.read(8 << 20):
            self._sha256.update(chunk)
            self._counted(len(chunk))

    def release(self) -> None:
        """Close the file (closing the tap does not: a decompressor closes what it reads on its way out)."""
        self._f.close()


class SourceFile:
    """A binary file read in newline-aligned chunks, hashing every byte on the way (a compressed file's
    content is what it decompresses to; its bytes as they are are what is hashed and what progress counts)."""

    def __init__(self, path: str | os.PathLike[str], display_name: str | None = None) -> None:
        self.path = Path(path)
        self.name = display_name or self.path.name
        self.size = os.path.getsize(self.path)
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0
        self.compression = compression_of(self.path)

    @contextlib.contextmanager
    def content(self, count: bool = True) -> Iterator[BinaryIO]:
        """The file's content, decompressed when it is compressed. The file's bytes as they are are hashed and
        counted (`count`: into bytes_read, for progress) as they are read, 1 MB at a time whatever the reader
        asks for (a line, a chunk). Read it through, then leave the block: the hash is complete after that."""

        def counted(n: int) -> None:
            if count:  # else the reader sets bytes_read itself
                self.bytes_read += n

        tap = _Tap(self.path, self.sha256, counted)
        try:
            buffered = io.BufferedReader(tap, 1 << 20)
            if self.compression is None:
                yield buffered
            else:
                with OPENERS[self.compression](buffered, "rb") as f:
                    yield f
            tap.drain()
        finally:
            tap.release()

    def read_error(self, e: BaseException, line: int) -> BaseException:
        """What to raise for an error met while reading: a compressed file that cannot be read through is
        bad input (named, with the last line read whole); anything else as it is."""
        if self.compression and isinstance(e, DAMAGED):
            return damaged(self.compression, e, self.name, line - 1)
        return e

    def chunks(self, chunk_bytes: int) -> Iterator[tuple[bytes, int]]:
        """Yield (chunk, first line number); each chunk ends at a newline (or the end of the file).

        A reader thread reads and hashes ahead (hashlib releases the GIL), so I/O and hashing overlap
        with decoding.
        """
        q: queue.Queue[Any] = queue.Queue(maxsize=2)
        stop = threading.Event()

        lines_read = [0]  # a compressed file's: where an error stops the reader, ahead of the consumer

        def read() -> None:
            try:
                with self.content() as f:
                    while not stop.is_set():
                        buf = f.read(chunk_bytes)
                        if not buf:
                            break
                        if self.compression:
                            lines_read[0] += buf.count(b"\n")
                        q.put(buf)
            except BaseException as e:
                q.put(e)
            else:
                q.put(b"")  # after the file's last bytes are hashed (a compressed file's when content() ends)

        t = threading.Thread(target=read, name="source-read", daemon=True)
        t.start()
        line = 1
        rest = b""
        try:
            while True:
                buf = q.get()
                if isinstance(buf, BaseException):
                    raise self.read_error(buf, lines_read[0] + 1)
                if not buf:  # the end, once the whole file is hashed
                    if rest:
                        yield rest, line
                    return
                buf = rest + buf if rest else buf
                cut = buf.rfind(b"\n") + 1
                if cut == 0:
                    rest = buf
                    continue
                chunk, rest = buf[:cut], buf[cut:]
                yield chunk, line
                line += chunk.count(b"\n")
        finally:
            stop.set()
            while t.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    t.join(0.01)

    @property
    def progress(self) -> float:
        return self.bytes_read / self.size if self.size else 1.0


def read_jsonl(
    src: SourceFile, mapping: Mapping, errors: Errors, *, chat: bool = False, chunk_bytes: int = 4 << 20
) -> Iterator[Batch]:
    norm = Normaliser(mapping, errors, chat=chat)
    fast_ok = mapping.is_default and not chat
    for chunk, first_line in src.chunks(chunk_bytes):
        if first_line == 1 and chunk.startswith(_BOM):
            # Windows tools write a byte order mark; it is not part of the first record.
            chunk = chunk[len(_BOM) :]
        if fast_ok:
            batch = _fast_chunk(chunk, first_line, src.progress)
            if batch is not None:
                yield batch
                continue
        yield _slow_chunk(chunk, first_line, norm, src.progress)
    norm.check_fields_seen(src.name)


def _fast_chunk(chunk: bytes, first_line: int, progress: float) -> Batch | None:
    """Decode a whole chunk in one call; None if anything in it needs the careful path.

    The types of known metadata keys are checked later, in the segment writer (see segments.py).
    """
    body = chunk.rstrip(b"\r\n")
    if not body:
        return None
    try:
        rows = _fast_rows.decode(b"[" + body.replace(b"\n", b",") + b"]")
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None
    if len(rows) != body.count(b"\n") + 1:
        # A line holding two records with a comma between them decodes as two elements (a blank line or
        # a stray comma fails to decode): that line is malformed, which the careful path says.
        return None
    row_ids = [r.row_id for r in rows]
    prompts = [r.prompt for r in rows]
    metas = [bytes(r.metadata) for r in rows]
    if "" in row_ids or b"null" in metas:
        return None  # an empty row id, null metadata: let the careful path handle them
    is_msgs = [type(p) is list for p in prompts]
    if any(is_msgs):
        for i, p in enumerate(prompts):
            if is_msgs[i]:
                if check_messages(p):
                    return None
                prompts[i] = _encode(p).decode()
    t = pa.table(
        [
            pa.array(row_ids, pa.string()),
            pa.array(prompts, pa.string()),
            pa.array(is_msgs, pa.bool_()),
            pa.array([r.response for r in rows], pa.string()),
            pa.array(metas, pa.binary()).view(pa.string()),  # msgspec has checked the UTF-8 already
        ],
        schema=BATCH_SCHEMA,
    )
    return Batch(t, range(first_line, first_line + len(rows)), progress)


# Below this size a file is decoded in Python. bench/upload_decoders.py (2 cores, 2026-12-01, whole upload
# DuckDB / Python): 4.2 MB 0.19 / 0.16 s, 10.5 MB 0.21 / 0.23 s, 42 MB 0.59 / 0.92 s, 105 MB 1.28 / 2.27 s.
FAST_JSONL_MIN_BYTES = 8 << 20


class NeedsCarefulPath(Exception):
    """The DuckDB decoder met a line it does not take (bad, blank, chat prompt…): decode the file again
    with the line-by-line path, which accepts or names every line precisely."""


# Every line of a spec JSONL file decoded in DuckDB: read as one text column (a control character as the
# delimiter: JSON text cannot hold it raw), parsed once by json_transform into the four fields as text
# (strings unescaped, the metadata object minified), and refused with error() — which stops the query — at
# the first line the careful path would treat differently: a bad line, a blank line, a wrong type, a chat
# prompt, an empty row id, an unknown or repeated key. A missing field and a JSON null read the same here
# and in the careful path (no row id: one is generated; no metadata: {}).
#
# json_transform turns any value into text (5 becomes '5'), so types and keys are proven by writing the
# fields back as the row's canonical JSON `r` (segments.ROW_HASH_SQL: the four keys in order, minified)
# and comparing it with the line. A line equal to `r` holds exactly those keys, strings where strings
# belong and an object for metadata: its parse is `r`'s. So does a line equal to `r` in json.dumps'
# default layout (", " and ": "; the metadata's separators spaced by replace(), which may alter a string's
# contents — then the texts differ — but never where a token starts or ends). In a line without a
# backslash no string has an escape, so none holds a quote or a control character (raw ones are not JSON)
# and each is written back by quoting it; elsewhere to_json escapes them. Any other line has its keys
# listed by json_keys and its types by json_type (two more parses). `r`'s md5 is the row hash, so the
# hashing stage skips it; it is left NULL where the id is still to be generated (the hashing stage
# computes it then). docs/decisions/0002 has the measurements.
_DUCK_JSONL_SQL = """
WITH j AS (
  SELECT line, contains(line, '\\') AS esc,
         json_transform(line, '{{"row_id":"VARCHAR","prompt":"VARCHAR","response":"VARCHAR","metadata":"VARCHAR"}}') AS f
  FROM read_csv('{path}', columns = {{'line': 'VARCHAR'}}, header = false, delim = chr(1), quote = '',
                escape = '', auto_detect = false, max_line_size = 4194304, buffer_size = 8388608,
                compression = '{compression}')
), b AS (
  SELECT line, esc, f.row_id AS row_id, f.prompt AS prompt, f.response AS response, f.metadata AS metadata FROM j
), r AS (
  SELECT *,
         CASE WHEN esc THEN concat('{{', '"row_id":' || to_json(row_id) || ',', '"prompt":', to_json(prompt),
                                   ',"response":', to_json(response), ',"metadata":' || metadata, '}}')
              WHEN row_id IS NOT NULL AND metadata IS NOT NULL  -- the usual line: one concat, no parts to join first
                THEN concat('{{"row_id":"', row_id, '","prompt":"', prompt, '","response":"', response, '","metadata":',
                            metadata, '}}')
              ELSE concat('{{', '"row_id":"' || row_id || '",', '"prompt":"', prompt, '","response":"', response, '"',
                          ',"metadata":' || metadata, '}}') END AS r
  FROM b
), c AS (
  SELECT *,
         CASE WHEN line = r THEN true
              WHEN esc THEN line = concat('{{', '"row_id": ' || to_json(row_id) || ', ', '"prompt": ', to_json(prompt),
                                          ', "response": ', to_json(response),
                                          ', "metadata": ' || replace(replace(metadata, ',', ', '), ':', ': '), '}}')
              WHEN row_id IS NOT NULL AND metadata IS NOT NULL
                THEN line = concat('{{"row_id": "', row_id, '", "prompt": "', prompt, '", "response": "', response,
                                   '", "metadata": ', replace(replace(metadata, ',', ', '), ':', ': '), '}}')
              ELSE line = concat('{{', '"row_id": "' || row_id || '", ', '"prompt": "', prompt, '", "response": "',
                                 response, '"', ', "metadata": ' || replace(replace(metadata, ',', ', '), ':', ': '), '}}')
              END AS canonical
  FROM r
), k AS (
  SELECT *, CASE WHEN NOT canonical THEN json_keys(line) END AS k,
            CASE WHEN NOT canonical THEN json_type(line, ['$.row_id', '$.prompt', '$.response', '$.metadata']) END AS t
  FROM c
)
SELECT row_id, prompt, false AS prompt_messages, response, coalesce(metadata, '{{}}') AS metadata,
       CASE WHEN row_id IS NULL THEN NULL
            WHEN metadata IS NOT NULL THEN row_digest(r)
            WHEN esc THEN row_digest(concat('{{"row_id":', to_json(row_id), ',"prompt":', to_json(prompt), ',"response":',
                                            to_json(response), ',"metadata":{{}}}}'))
            ELSE row_digest(concat('{{"row_id":"', row_id, '","prompt":"', prompt, '","response":"', response,
                                   '","metadata":{{}}}}')) END AS row_hash
FROM k
WHERE CASE
  WHEN prompt IS NULL OR response IS NULL OR row_id = '' OR (metadata IS NOT NULL AND NOT prefix(metadata, '{{'))
    OR regexp_matches(CASE WHEN canonical THEN metadata ELSE regexp_replace(line, '"(?:[^"\\\\]|\\\\.)*"', '""', 'g') END,
                      '{lenient}')
    OR (NOT canonical AND (k IS NULL OR NOT list_has_all(['row_id', 'prompt', 'response', 'metadata'], k)
                           OR len(k) <> len(list_distinct(k)) OR t[2] <> 'VARCHAR' OR t[3] <> 'VARCHAR'
                           OR t[1] NOT IN ('VARCHAR', 'NULL') OR t[4] NOT IN ('OBJECT', 'NULL')))
  THEN error('opentracy: needs the careful path') ELSE true END
"""
# OpenAI chat JSONL decoded in DuckDB, in the plain case: `{"messages": [...]}` and nothing else, each message
# exactly {"role", "content"} in that order, both text. As in the spec query above, the messages are written
# back (quoted as they are where the line has no backslash, by to_json elsewhere) and the line must equal them
# written compact or in json.dumps' layout, which proves the keys, their order and the types. A line kept
# here is one the careful path (`Normaliser._add_chat`) maps to: every message but the last as the prompt,
# whose JSON — msgspec's on that path — is the parts written back (DuckDB escapes nine control characters
# with capital hex digits where msgspec uses small ones: a line holding one goes to the careful path), the
# last one's content as the response, no row id, no metadata. Any other line stops the query.
_DUCK_CHAT_SQL = """
WITH j AS (
  SELECT line, contains(line, '\\') AS esc,
         json_transform(line, '{{"messages":[{{"role":"VARCHAR","content":"VARCHAR"}}]}}').messages AS m
  FROM read_csv('{path}', columns = {{'line': 'VARCHAR'}}, header = false, delim = chr(1), quote = '',
                escape = '', auto_detect = false, max_line_size = 4194304, buffer_size = 8388608,
                compression = '{compression}')
), p AS (
  SELECT *,
         CASE WHEN esc THEN list_transform(m, lambda x: concat('{{"role":', to_json(x.role), ',"content":',
                                                                to_json(x.content), '}}'))
              ELSE list_transform(m, lambda x: concat('{{"role":"', x.role, '","content":"', x.content, '"}}'))
              END AS parts
  FROM j
)
SELECT NULL::VARCHAR AS row_id, concat('[', array_to_string(list_slice(parts, 1, len(parts) - 1), ','), ']') AS prompt,
       true AS prompt_messages, m[len(m)].content AS response, '{{}}' AS metadata,
       CASE WHEN false THEN row_digest('') END AS row_hash
FROM p
WHERE CASE
  WHEN m IS NULL OR len(m) < 2 OR m[len(m)].role IS DISTINCT FROM 'assistant'
    OR NOT list_bool_and(list_transform(m, lambda x: x IS NOT NULL AND x.role IN ({roles}) AND x.content IS NOT NULL
                                                     AND NOT regexp_matches(x.content, '{capital}')))
    OR NOT CASE WHEN line = concat('{{"messages":[', array_to_string(parts, ','), ']}}') THEN true
                WHEN esc THEN line = concat('{{"messages": [', array_to_string(list_transform(m, lambda x: concat(
                                  '{{"role": ', to_json(x.role), ', "content": ', to_json(x.content), '}}')), ', '), ']}}')
                ELSE line = concat('{{"messages": [', array_to_string(list_transform(m, lambda x: concat(
                                  '{{"role": "', x.role, '", "content": "', x.content, '"}}')), ', '), ']}}') END
  THEN error('opentracy: needs the careful path') ELSE true END
"""


# What DuckDB's JSON reader takes beyond the JSON standard (which the line-by-line readers hold to): trailing
# commas, NaN and Infinity (any case), and numbers with exponents from 308 up, which Python reads as inf or
# 0.0 where DuckDB keeps their text. JSON text holding one of these token sequences goes to the careful path.
# The decoder looks for them in a line with its strings blanked out (only in the metadata of a line proven
# canonical, where a string that happens to hold one, such as `x, ]` or `a:nan}`, costs that detour). Hex ids
# such as "t_5e839" never match: a number follows `:`, `,` or `[` and ends before `,`, `]` or `}`.
_END = r"\s*[,\]}]"
LENIENT_JSON_RE = (
    r",\s*[\]}]"
    rf"|[:,\[]\s*-?(?i:nan|inf|infinity){_END}"
    rf"|[:,\[]\s*-?[0-9]+(\.[0-9]+)?[eE][+-]?0*(30[89]|3[1-9][0-9]|[4-9][0-9][0-9]|[1-9][0-9]{{3,}}){_END}"
)
_DUCK_BATCH_SCHEMA = BATCH_SCHEMA.append(pa.field("row_hash", pa.binary()))
# The row hash's 16 bytes. md5_number gives the digest as a 128-bit integer, whose little-endian bytes are the
# digest's own: no 32-character hex string per row to allocate and parse back, as unhex(md5(...)) has (~6% of
# the decode query's CPU). DuckDB exports it to Arrow as decimal128, read below as binary without a copy.
_ROW_DIGEST_MACRO = "CREATE TEMP MACRO row_digest(s) AS " + (
    "md5_number(s)" if sys.byteorder == "little" else "unhex(md5(s))"
)


def _digests(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """`row_digest` values as binary: a decimal128's 16-byte values taken as they are, with offsets from
    numpy. Copying them into Arrow's pool instead (a cast) made its allocator (mimalloc) hold ~30 MB more at
    an upload's peak (VmHWM 456-480 against 423-431 MB). Other types are cast, which fails loudly (the upload
    then takes the careful path) unless they are binary already."""
    if (
        not pa.types.is_decimal128(col.type)
        or max((c.offset + len(c) for c in col.chunks), default=0) * 16 >= 1 << 31
    ):
        return col.cast(pa.binary())
    return pa.chunked_array(
        [
            pa.Array.from_buffers(
                pa.binary(),
                len(c),
                [
                    c.buffers()[0],
                    pa.py_buffer(np.arange(c.offset + len(c) + 1, dtype=np.int32) * np.int32(16)),
                    c.buffers()[1],
                ],
                c.null_count,
                c.offset,
            )
            for c in col.chunks
        ],
        pa.binary(),
    )


def duck_jsonl_sql(path: str, compression: str, template: str | None = None) -> str:
    """The decode query over one file (`path` quoted for SQL already)."""
    return (template or _DUCK_JSONL_SQL).format(
        path=path,
        compression=compression,
        lenient=LENIENT_JSON_RE.replace("'", "''"),
        roles=", ".join(_literal(r) for r in sorted(MESSAGE_ROLES)),
        capital=_CAPITAL_ESCAPES,
    )


def decode_connection() -> Any:
    """A DuckDB connection that can run `_DUCK_JSONL_SQL` (its result's row_hash goes through `_digests`)."""
    from opentracy.store.segments import duck

    # The scan needs little memory of its own; a higher limit only raised peak RSS (192 MB: ~35 MB more than
    # 96 MB, at the same speed).
    con = duck(memory_limit="128MB")
    con.execute(_ROW_DIGEST_MACRO)
    return con


def _peek(src: SourceFile, read: Callable[[BinaryIO], bytes]) -> bytes:
    """What `read` takes from the start of the file's content (nothing hashed). A compressed file that cannot
    be read raises NeedsCarefulPath: the careful path names the problem."""
    try:
        with open_content(src.path) as f:
            return read(f)
    except DAMAGED as e:
        if not src.compression:
            raise
        raise NeedsCarefulPath(f"{src.compression}: {e}") from None


def duck_jsonl(src: SourceFile, *, rows_per_batch: int = 32_768, chat: bool = False) -> Iterator[Batch]:
    """The rows of a spec JSONL file (`chat`: an OpenAI chat JSONL file, `_DUCK_CHAT_SQL`) decoded by DuckDB:
    in parallel and off the GIL, so the decoding no longer holds back the rest of the pipeline
    (docs/decisions/0002). Yields the same batches as `read_jsonl` would for a clean file; raises
    NeedsCarefulPath, before or after some batches, when it meets anything else (the caller then starts over
    with `read_jsonl`, which names bad lines). A reader thread hashes the file meanwhile."""
    total_lines: list[int] = []
    hashed = threading.Event()
    failure: list[BaseException] = []

    def digest() -> None:
        try:
            lines = 0
            last = b"\n"
            with src.content(count=False) as f:  # a gzip file's lines: those of its content
                while buf := f.read(8 << 20):
                    lines += int(np.count_nonzero(np.frombuffer(buf, np.uint8) == 10))  # 2x bytes.count
                    last = buf[-1:]
            total_lines.append(lines + (1 if last != b"\n" else 0))
        except BaseException as e:
            failure.append(e)
        finally:
            hashed.set()

    # Progress until the hasher has counted every line: rows over the count the first 4 MB suggest (of a
    # gzip file's content: ~5x its size, as JSONL compresses).
    head = _peek(src, lambda f: f.read(4 << 20))
    size = src.size * (5 if src.compression else 1)
    guess = max(1, round(size * max(1, head.count(b"\n")) / max(1, len(head))))
    hasher = threading.Thread(target=digest, name="source-hash", daemon=True)
    hasher.start()
    con = decode_connection()
    done = 0
    try:
        import duckdb

        path = str(src.path).replace("'", "''")
        try:
            sql = duck_jsonl_sql(path, src.compression or "none", _DUCK_CHAT_SQL if chat else None)
            reader = con.sql(sql).to_arrow_reader(batch_size=rows_per_batch)
            for rbs, _ in _gathered(((rb, 0.0) for rb in reader), rows_per_batch):
                table = pa.Table.from_batches(rbs)
                i = table.schema.get_field_index("row_hash")
                table = table.set_column(i, "row_hash", _digests(table.column(i))).cast(_DUCK_BATCH_SCHEMA)
                n = table.num_rows
                lines = range(done + 1, done + n + 1)
                done += n
                expect = total_lines[0] if total_lines else max(guess, done + 1)
                src.bytes_read = min(src.size, int(src.size * done / expect))
                yield Batch(table, lines, src.progress)
        except (duckdb.Error, pa.ArrowException, OSError) as e:  # OSError: DuckDB's IO errors through Arrow
            raise NeedsCarefulPath(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
        hashed.wait()
        if failure:
            if src.compression:  # a damaged file: the careful path names the problem
                raise NeedsCarefulPath(f"{src.compression}: {failure[0]}")
            raise failure[0]
        if done == 0 or done != total_lines[0]:  # an empty file; or lines DuckDB did not count as rows
            raise NeedsCarefulPath(f"{done} rows for {total_lines[0]} lines")
        src.bytes_read = src.size
    finally:
        con.close()
        hashed.wait()


def _gathered(
    batches: Iterable[tuple[pa.RecordBatch, float]], rows: int
) -> Iterator[tuple[list[pa.RecordBatch], float]]:
    """Record batches in groups of at least `rows` rows (the last may be smaller), with the progress of each
    group's last batch; a batch whose schema differs from the waiting ones starts a new group. DuckDB hands
    out one ~10k-row batch per chunk of its parallel scan and `datasets.save_to_disk` writes 1,000-row ones;
    every batch costs the later stages a query plan, so they are gathered first (~0.4 CPU-s less per 1M
    rows for JSONL; docs/decisions/0002)."""
    pending: list[pa.RecordBatch] = []
    waiting, progress = 0, 0.0
    for rb, at in batches:
        if not rb.num_rows:
            continue
        if pending and not rb.schema.equals(pending[0].schema):
            yield pending, progress
            pending, waiting = [], 0
        pending.append(rb)
        waiting += rb.num_rows
        progress = at
        if waiting >= rows:
            yield pending, progress
            pending, waiting = [], 0
    if pending:
        yield pending, progress


def _slow_chunk(chunk: bytes, first_line: int, norm: Normaliser, progress: float) -> Batch:
    b = _Builder()
    for i, raw in enumerate(chunk.split(b"\n")):
        line = first_line + i
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            norm.errors(line, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
            continue
        try:
            rec = _decode_any(text)
        except msgspec.DecodeError as e:
            norm.errors(line, f"malformed JSON: {e}")
            continue
        norm.add(rec, line, b)
    return b.batch(progress)


def sniff_jsonl(path: str | os.PathLike[str]) -> Literal["jsonl", "openai"]:
    """'openai' when the first record is an OpenAI chat example ({"messages": [...]}) without a prompt."""
    with open_content(path) as f:
        for raw in _readable_lines(f):
            raw = raw.removeprefix(_BOM)
            if raw.strip():
                try:
                    rec = json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    return "jsonl"  # the reader names the problem
                return (
                    "openai"
                    if isinstance(rec, dict) and "messages" in rec and "prompt" not in rec
                    else "jsonl"
                )
    return "jsonl"


# ---------------------------------------------------------------------------------------------------
# CSV


def _readable_lines(f: BinaryIO) -> Iterator[bytes]:
    """Lines of a file until one cannot be read (a damaged compressed file: the reader names the problem)."""
    try:
        yield from f
    except DAMAGED:
        return


def read_csv(src: SourceFile, mapping: Mapping, errors: Errors) -> Iterator[Batch]:
    norm = Normaliser(mapping, errors)
    state = {"line": 0}
    # Lines that are not valid UTF-8 (only when skipping: otherwise the first one raises), and why.
    bad_utf8: dict[int, str] = {}

    def lines() -> Iterator[str]:
        with src.content() as f:
            try:
                for raw in f:  # split at b"\n", which never falls inside a UTF-8 sequence
                    state["line"] += 1
                    if state["line"] == 1 and raw.startswith(_BOM):
                        raw = raw[len(_BOM) :]  # not part of the first field (which may be quoted after it)
                    try:
                        yield raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        problem = f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
                        if errors.on_error == "raise" or state["line"] == 1:
                            raise InvalidInput(problem, file=src.name, line=state["line"]) from None
                        bad_utf8[state["line"]] = problem
                        yield raw.decode("utf-8", "replace")  # the record holding this line is skipped below
            except DAMAGED as e:  # a damaged compressed file (a plain file's I/O errors pass as they are)
                raise src.read_error(e, state["line"] + 1) from None

    reader = strict_csv(lines())  # fields of any length, as pyarrow's parser (`arrow_csv`) reads them
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        raise InvalidInput(f"malformed CSV: {e}", file=src.name, line=state["line"]) from None
    if bad_utf8:  # a header spanning lines
        first = min(bad_utf8)
        raise InvalidInput(bad_utf8[first], file=src.name, line=first)
    _check_csv_header(header, mapping, src.name)
    # Records are gathered as they are parsed; each batch is then normalised in DuckDB when every record in
    # it allows (`ColumnarRows`), else record by record. A record refused on its own (a wrong field count,
    # malformed CSV, bad UTF-8) first sends the records before it on, so problems are met in file order.
    fast = _csv_plan(header, mapping)
    records: list[list[str]] = []
    wheres: list[int] = []

    def normalised() -> Iterator[Batch]:
        nonlocal records, wheres
        if not records:
            return
        recs, lines_of = records, wheres
        records, wheres = [], []
        if fast is not None:
            cols = {
                h: pa.array(
                    [(v[i] or None) for v in recs] if h == mapping.row_id_field else [v[i] for v in recs],
                    pa.string(),
                )
                for i, h in enumerate(header)
            }
            t = fast.batch(pa.table(cols))
            if t is not None:
                yield Batch(t, np.asarray(lines_of, dtype=np.int64), src.progress)
                return
        b = _Builder()
        for values, where in zip(recs, lines_of, strict=True):
            _csv_record(header, values, where, mapping, norm, b)
        yield b.batch(src.progress)

    try:
        start = state["line"] + 1
        while True:
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                yield from normalised()
                errors(start, f"malformed CSV: {e}")
                start = state["line"] + 1
                continue
            where = start
            start = state["line"] + 1
            if bad_utf8:
                bad = [n for n in range(where, start) if n in bad_utf8]
                if bad:
                    yield from normalised()
                    errors(bad[0], bad_utf8[bad[0]])
                    for n in bad:
                        del bad_utf8[n]
                    continue
            if not values or values == [""]:
                continue
            if len(values) != len(header):
                yield from normalised()
                errors(where, f"expected {len(header)} fields, found {len(values)}")
                continue
            records.append(values)
            wheres.append(where)
            if len(records) >= TABLE_BATCH_ROWS:
                yield from normalised()
        yield from normalised()
    finally:
        if fast is not None:
            fast.close()


def _csv_plan(header: list[str], mapping: Mapping) -> ColumnarRows | None:
    """How a batch of CSV records (all text; an empty cell is a missing prompt) is normalised in DuckDB."""
    schema = pa.schema([(h, pa.string()) for h in header])
    return ColumnarRows.plan(
        schema, mapping, chat=False, flag=False, drop_meta_nulls=False, empty_prompt=False
    )


def _check_csv_header(header: list[str], mapping: Mapping, name: str) -> None:
    """Refuse, naming line 1, a header the rows cannot be read by."""
    for col in (mapping.prompt, mapping.response):
        if col not in header:
            raise InvalidInput(
                f"no column {col!r} (columns: {', '.join(header)}); name the columns with prompt_field= and response_field=",
                file=name,
                line=1,
            )
    if len(set(header)) != len(header):
        raise InvalidInput("repeated column names in the header", file=name, line=1)
    _check_metadata_fields(header, mapping, name, line=1)
    # A column becomes the metadata key it is named after; CSV cells are text, which these keys never are,
    # so every record would be refused for it.
    taken = {mapping.prompt, mapping.response, mapping.row_id_field, "metadata"}
    for key, kind, example in (("judge_score", "a number", "0.9"), ("tags", "a list of strings", '["a"]')):
        if (
            key in header
            and key not in taken
            and (mapping.metadata_fields is None or key in mapping.metadata_fields)
        ):
            raise InvalidInput(
                f"column {key!r} would become metadata.{key}, which must be {kind}, but CSV cells are text: "
                f"give it inside a 'metadata' column of JSON objects (such as {{\"{key}\": {example}}}), "
                "or leave it out with metadata_fields=",
                file=name,
                line=1,
            )


def _csv_record(
    header: list[str], values: list[str], where: int, mapping: Mapping, norm: Normaliser, out: _Builder
) -> None:
    """One CSV record (as many values as the header has names) as a row, or its problem reported."""
    rec: dict[str, Any] = dict(zip(header, values, strict=True))
    if rec[mapping.prompt] == "":
        return norm.errors(where, f"missing prompt (column {mapping.prompt!r} is empty)")
    if "metadata" in rec:
        raw_meta = rec["metadata"]
        try:
            rec["metadata"] = json.loads(raw_meta) if raw_meta else {}
        except ValueError:
            return norm.errors(where, "column 'metadata' must hold a JSON object")
    if rec.get(mapping.row_id_field) == "":
        rec.pop(mapping.row_id_field)
    norm.add(rec, where, out)


# ---------------------------------------------------------------------------------------------------
# CSV parsed by pyarrow, proven to read as Python's csv module does


class _CsvScan:
    """A pass over a CSV file's content after its header line, on a thread of its own: it hashes the file,
    finds the line each record starts on, and checks that pyarrow's CSV parser reads the records as Python's
    `csv.reader(strict=True)` (the careful path) does. They differ on quoting Python refuses and pyarrow
    reads its own way (`"ab"c` as `abc`, `"x" ,y` as `x `) and on a carriage return outside quotes that does
    not end a line. Where every quote opens a field (after a comma, a newline, or the quote before it: `""`
    inside quotes) or closes one (before a comma, a line end or a quote), every carriage return outside
    quotes is followed by a newline, the quotes are balanced and no byte is NUL, both read the same records
    the same way (tests/test_upload_csv.py compares them on generated files). Whether a quote opens or
    closes follows from the count of quotes before it; a newline with an even count before it ends a record.
    Anything else sets `problem`, and the upload starts over on the careful path, which names what is wrong;
    that includes quotes inside unquoted fields (` "x"`, `ab"c`) and NUL, which both read alike but the scan
    does not prove."""

    # Read and checked at a time (tests make it a few bytes). 1M records, upload peak RSS: 8 MB blocks
    # 463 MB, 2 MB 417-441, 1 MB 407 at no gain in speed (docs/decisions/0002).
    block_bytes = 2 << 20

    def __init__(self, src: SourceFile, header_bytes: int) -> None:
        self.src = src
        self.header_bytes = header_bytes
        self.problem: str | None = None
        self._starts: collections.deque[np.ndarray] = collections.deque()  # the line each record starts on
        self._available = 0
        self._done = False
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="csv-scan", daemon=True)

    def __enter__(self) -> _CsvScan:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._stop = True
        self._thread.join()

    def take(self, n: int) -> np.ndarray:
        """The start lines of the next n records, once scanned; NeedsCarefulPath when the scan found a
        problem, or ended with fewer records."""
        with self._cond:
            while not self.problem and self._available < n and not self._done:
                self._cond.wait()
            if self.problem:
                raise NeedsCarefulPath(f"CSV: {self.problem}")
            if self._available < n:
                raise NeedsCarefulPath(f"CSV: pyarrow read more records than the {self._available} found")
            out: list[np.ndarray] = []
            need = n
            while need:
                a = self._starts[0]
                if len(a) <= need:
                    out.append(self._starts.popleft())
                    need -= len(a)
                else:
                    out.append(a[:need])
                    self._starts[0] = a[need:]
                    need = 0
            self._available -= n
            return np.concatenate(out) if out else np.zeros(0, np.int64)

    def finish(self) -> None:
        """Wait for the scan's end: the file is hashed then. NeedsCarefulPath on a problem, or on records
        left that pyarrow did not read."""
        with self._cond:
            while not self._done:
                self._cond.wait()
            if self.problem:
                raise NeedsCarefulPath(f"CSV: {self.problem}")
            if self._available:
                raise NeedsCarefulPath(f"CSV: {self._available} records pyarrow did not read")

    def _run(self) -> None:
        try:
            self.problem = self._scan()
        except BaseException as e:  # a damaged compressed file, an I/O error: the careful path names it
            self.problem = f"{type(e).__name__}: {e}"
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _found(self, starts: np.ndarray) -> None:
        if len(starts):
            with self._cond:
                self._starts.append(starts.astype(np.int64))
                self._available += len(starts)
                self._cond.notify_all()

    def _scan(self) -> str | None:
        quotes = 0  # quotes so far: odd inside a quoted field
        newlines = 1  # newlines so far (the header's)
        prev = 10  # the byte before the block
        need_next: tuple[int, ...] = ()  # what the block's first byte must be (the last byte asked)
        end, end_line = -1, 2  # where the last record ended (its newline's offset) and the line after it
        offset = 0  # of the block, in the content after the header
        skip = self.header_bytes
        with self.src.content() as f:  # hashed, and counted for progress
            while True:
                if self._stop:  # the upload stopped reading: leave without hashing the rest
                    raise NeedsCarefulPath("stopped")
                buf = f.read(self.block_bytes)
                if skip:  # the header's bytes
                    cut = min(skip, len(buf))
                    buf, skip = buf[cut:], skip - cut
                    if cut and not buf:
                        continue
                if not buf:
                    break
                b = np.frombuffer(buf, np.uint8)
                n = len(b)
                if need_next and int(b[0]) not in need_next:
                    return "a quote or a carriage return followed by something else"
                if buf.find(b"\0") >= 0:
                    return "a NUL byte"
                q = np.flatnonzero(b == 34)
                opening, closing = q[quotes & 1 :: 2], q[1 - (quotes & 1) :: 2]
                if len(opening) and opening[0] == 0 and prev not in (44, 10, 34):
                    return "a quote in the middle of a field"
                x = b[opening[opening > 0] - 1]  # (comparisons: np.isin costs 30x as much here)
                if ((x != 44) & (x != 10) & (x != 34)).any():
                    return "a quote in the middle of a field"
                x = b[closing[closing < n - 1] + 1]
                if ((x != 44) & (x != 10) & (x != 13) & (x != 34)).any():
                    return "text after a closing quote"
                cr = np.flatnonzero(b == 13) if buf.find(b"\r") >= 0 else q[:0]
                cr = cr[((quotes + np.searchsorted(q, cr)) & 1) == 0]  # outside quotes
                if (b[cr[cr < n - 1] + 1] != 10).any():
                    return "a carriage return that does not end a line"
                nl = np.flatnonzero(b == 10)
                outside = ((quotes + np.searchsorted(q, nl)) & 1) == 0
                ends = nl[outside]
                lines_after = newlines + np.flatnonzero(outside) + 2  # the line after each record's end
                # The records between consecutive ends; empty ones (nothing, or a lone CR) both skip.
                cr_before = np.where(ends > 0, b[np.maximum(ends - 1, 0)], prev) == 13
                lengths = np.diff(np.concatenate(([end], ends + offset))) - 1 - cr_before
                starts = np.concatenate(([end_line], lines_after[:-1]))[lengths > 0]
                if len(ends):
                    end, end_line = int(ends[-1]) + offset, int(lines_after[-1])
                if len(cr) and cr[-1] == n - 1:
                    need_next = (10,)
                elif len(closing) and closing[-1] == n - 1:
                    need_next = (44, 10, 13, 34)
                else:
                    need_next = ()
                quotes += len(q)
                newlines += len(nl)
                prev = int(b[-1])
                offset += n
                self._found(starts)
        if quotes & 1:
            return "a quoted field left open at the end of the file"
        if need_next == (10,):
            return "a carriage return at the end of the file"
        if offset - end - 1 > 0:  # a last record with no newline after it
            self._found(np.array([end_line], dtype=np.int64))
        return None


def _csv_header(first: bytes) -> list[str] | None:
    """The header record when the first line holds all of it, as the careful path reads it."""
    if not first.endswith(b"\n") or first.count(b'"') % 2 or b"\r" in first[:-2] or b"\0" in first:
        return None
    try:
        return next(strict_csv([first.removeprefix(_BOM).decode("utf-8")]))
    except (UnicodeDecodeError, csv.Error, StopIteration):
        return None


# pyarrow's CSV block. A record longer than a block is refused by pyarrow (the careful path then takes the
# file). 1M records, upload peak RSS: 1 MB blocks 489-534 MB, 256 KB 417-441, 128 KB 421-431, same speed.
CSV_BLOCK_BYTES = 256 << 10


def arrow_csv(src: SourceFile, mapping: Mapping, *, rows_per_batch: int | None = None) -> Iterator[Batch]:
    """The records of a CSV file parsed by pyarrow (multi-threaded, off the GIL) where `_CsvScan` proves
    it reads them as the careful path's `csv` module does, and normalised a batch at a time by
    `ColumnarRows`. Raises NeedsCarefulPath, before or after some batches, at anything else (a header the
    careful path refuses, a bad record, a row it would refuse): the upload then starts over with `read_csv`,
    which names every problem. docs/decisions/0002 has the measurements."""
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    first = _peek(src, lambda f: f.readline(1 << 20))
    header = _csv_header(first)
    if header is None or len(header) < 2:
        raise NeedsCarefulPath("CSV: the header")
    try:
        _check_csv_header(header, mapping, src.name)
    except InvalidInput:
        raise NeedsCarefulPath("CSV: the header") from None  # which read_csv names as it is
    fast = _csv_plan(header, mapping)
    if fast is None:
        raise NeedsCarefulPath("CSV: columns read row by row")
    raw = pa.OSFile(str(src.path))
    stream: Any = pa.CompressedInputStream(raw, src.compression) if src.compression else raw
    done = 0
    try:
        with _CsvScan(src, len(first)) as scan:
            try:
                reader = pacsv.open_csv(
                    stream,
                    read_options=pacsv.ReadOptions(
                        skip_rows=1, column_names=header, block_size=CSV_BLOCK_BYTES
                    ),
                    parse_options=pacsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=True),
                    convert_options=pacsv.ConvertOptions(
                        column_types={h: pa.string() for h in header},
                        strings_can_be_null=False,
                        quoted_strings_can_be_null=False,
                    ),
                )
                for rbs, _ in _gathered(((rb, 0.0) for rb in reader), rows_per_batch or TABLE_BATCH_ROWS):
                    table = pa.Table.from_batches(rbs)
                    if mapping.row_id_field in header:  # an empty cell: no row id (one is generated)
                        i = header.index(mapping.row_id_field)
                        col = table.column(i)
                        empty = pc.invert(pc.cast(pc.binary_length(col), pa.bool_()))  # no Python scalar: no
                        none = pa.nulls(len(col), pa.string())  # pandas probe (opentracy/_arrow.py)
                        table = table.set_column(i, mapping.row_id_field, pc.if_else(empty, none, col))
                    t = fast.batch(table)
                    if t is None:
                        raise NeedsCarefulPath("CSV: a record read row by row")
                    lines = scan.take(t.num_rows)
                    done += t.num_rows
                    yield Batch(t, lines, src.progress)
            except (pa.ArrowException, OSError) as e:
                raise NeedsCarefulPath(
                    f"CSV: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                ) from None
            scan.finish()
        if done == 0:
            raise NeedsCarefulPath("CSV: no records")
        src.bytes_read = src.size
    finally:
        fast.close()
        stream.close()
        raw.close()


# ---------------------------------------------------------------------------------------------------
# Columnar sources: Parquet, Arrow, Hugging Face folders


def _check_metadata_fields(names: list[str], mapping: Mapping, name: str, line: int | None = None) -> None:
    missing = [f for f in mapping.metadata_fields or [] if f not in names]
    if missing:
        raise InvalidInput(
            f"no column {missing[0]!r} for metadata_fields (columns: {', '.join(names)})",
            file=name,
            line=line,
        )


def _check_columns(schema: pa.Schema, mapping: Mapping, name: str, chat: bool) -> None:
    names = schema.names
    if chat:
        if "messages" not in names:
            raise InvalidInput(f"no column 'messages' (columns: {', '.join(names)})", file=name)
        return
    _check_metadata_fields(names, mapping, name)
    for col, what in ((mapping.prompt, "prompt"), (mapping.response, "response")):
        if col not in names:
            raise InvalidInput(
                f"no {what} column {col!r} (columns: {', '.join(names)}); choose one with {what}_field=",
                file=name,
            )
    rt = schema.field(mapping.response).type
    if not (pa.types.is_string(rt) or pa.types.is_large_string(rt)):
        raise InvalidInput(
            f"column {mapping.response!r} has type {rt}; the response must be a string column "
            "(opentracy does not convert types silently)",
            file=name,
        )
    pt = schema.field(mapping.prompt).type
    if not (
        pa.types.is_string(pt)
        or pa.types.is_large_string(pt)
        or pa.types.is_list(pt)
        or pa.types.is_large_list(pt)
    ):
        raise InvalidInput(
            f"column {mapping.prompt!r} has type {pt}; the prompt must be a string or a list of chat messages",
            file=name,
        )


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


# Types of the columns that become metadata values which DuckDB's json_object writes as msgspec writes the Python
# value the per-row path gets (the segment writer then minifies both the same way: tests/test_upload_paths.py).
def _plain_json_type(t: pa.DataType) -> bool:
    return (
        _is_text(t)
        or pa.types.is_integer(t)
        or pa.types.is_boolean(t)
        or pa.types.is_float64(t)
        or pa.types.is_null(t)
    )


def _plain_struct(t: pa.DataType) -> bool:
    """A `metadata` struct column DuckDB can write as the per-row path does: distinct field names, each of
    a plain type or a list of text, integers or booleans (such as `tags`): what `pa.Table.from_pylist`,
    pandas and `datasets` make of spec rows' metadata dicts."""
    if not pa.types.is_struct(t):
        return False
    fields = [t.field(i) for i in range(t.num_fields)]
    return len({f.name for f in fields}) == len(fields) and all(
        _plain_json_type(f.type)
        or (
            (pa.types.is_list(f.type) or pa.types.is_large_list(f.type))
            and _plain_json_type(f.type.value_type)
            and not pa.types.is_floating(f.type.value_type)
        )
        for f in fields
    )


def _struct_metadata(t: pa.StructType) -> tuple[str, list[str]]:
    """The JSON object of a `metadata` struct column, written in DuckDB as the per-row path writes the dict
    Arrow gives it: fields in order, those that are null left out (concat_ws skips NULL arguments), a null
    struct read as {}. And the conditions its rows need to be taken so: finite floats (the per-row path stores
    NaN and infinities as null)."""
    m = '"metadata"'
    parts, ok = [], []
    for i in range(t.num_fields):
        f = t.field(i)
        v = f"struct_extract({m}, {_literal(f.name)})"
        parts.append(
            f"CASE WHEN {v} IS NOT NULL THEN {_literal(json.dumps(f.name) + ':')} || to_json({v}) END"
        )
        if pa.types.is_float64(f.type):
            ok.append(f"({v} IS NULL OR isfinite({v}))")
    body = f"'{{' || concat_ws(',', {', '.join(parts)}) || '}}'" if parts else "'{}'"
    return f"CASE WHEN {m} IS NULL THEN '{{}}' ELSE {body} END", ok


class ColumnarRows:
    """The rows of Arrow batches (Parquet, Arrow, Hugging Face, CSV) normalised a batch at a time in DuckDB,
    where the per-row path would take each row as it is: text prompt and response, a row id that is text or
    missing, metadata that is a JSON object per row, a struct of plain fields (`_plain_struct`) or built from
    plain columns. A batch with any row
    the per-row path would refuse or change (a missing prompt, an empty row id, metadata that is not an
    object, repeats a key, holds a null the per-row path drops or JSON only DuckDB reads, or gives a known
    key the wrong type) is not
    taken (`batch` gives None) and goes through the per-row path, which names the row. `plan` gives None for
    sources it cannot take at all (chat columns, other column types)."""

    def __init__(self, schema: pa.Schema, sql: str, prompt: str, response: str, row_id: str | None) -> None:
        self.schema = schema
        self.sql = sql
        self.prompt, self.response, self.row_id = prompt, response, row_id
        self._con: Any = None

    @classmethod
    def plan(
        cls,
        schema: pa.Schema,
        mapping: Mapping,
        *,
        chat: bool,
        flag: bool,
        drop_meta_nulls: bool,
        empty_prompt: bool = True,
    ) -> ColumnarRows | None:
        names = schema.names
        pf, rf, idf = mapping.prompt, mapping.response, mapping.row_id_field
        if chat:
            return ColumnarChat.plan_chat(schema, mapping)
        if len(set(names)) != len(names) or len({pf, rf, idf, "metadata"}) != 4:
            return None
        if pf not in names or rf not in names:
            return None
        if not (_is_text(schema.field(pf).type) and _is_text(schema.field(rf).type)):
            return None
        if idf in names and not _is_text(schema.field(idf).type):
            return None
        skip = {pf, rf, idf, "metadata"} | ({"prompt_messages"} if flag else set())
        if mapping.metadata_fields is None:
            extras = [n for n in names if n not in skip]
        else:
            extras = [n for n in mapping.metadata_fields if n in names and n not in skip]
        has_meta = "metadata" in names
        meta_type = schema.field("metadata").type if has_meta else None
        if has_meta and (extras or not (_is_text(meta_type) or _plain_struct(meta_type))):
            return None  # merging the two, or a struct of other types: the per-row path
        if not all(_plain_json_type(schema.field(n).type) for n in extras):
            return None
        ok = [f"{_ident(pf)} IS NOT NULL", f"{_ident(rf)} IS NOT NULL"]
        if not empty_prompt:  # CSV: an empty cell is a missing prompt
            ok.append(f"{_ident(pf)} <> ''")
        if idf in names:
            ok.append(f"({_ident(idf)} IS NULL OR {_ident(idf)} <> '')")
        if flag:
            ok.append('"prompt_messages" IS NOT TRUE')
        meta_ok = ["true"]
        keys = "NULL"
        if has_meta and pa.types.is_struct(meta_type):
            meta, finite = _struct_metadata(meta_type)
            ok += finite
        elif has_meta:
            m = '"metadata"'
            meta = f"CASE WHEN {m} IS NULL OR {m} = '' THEN '{{}}' ELSE {m} END"
            # JSON (json_keys raises on anything else: the batch then goes row by row) and an object (the
            # metadata checks below want a '{' first), each key once (Python keeps the last of repeated
            # keys), nothing only DuckDB reads, and where Parquet rows drop null values, no null (a `: null`
            # inside a string only costs the detour)
            keys = "json_keys(metadata)"
            lenient = LENIENT_JSON_RE + (r"|:\s*null\s*[,}]" if drop_meta_nulls else "")
            meta_ok = ["len(_k) = list_unique(_k)", f"NOT regexp_matches(metadata, {_literal(lenient)})"]
        elif extras:
            meta = "json_object(" + ", ".join(f"{_literal(n)}, {_ident(n)}" for n in extras) + ")"
            ok += [
                f"({_ident(n)} IS NULL OR isfinite({_ident(n)}))"
                for n in extras
                if pa.types.is_float64(schema.field(n).type)
            ]
        else:
            meta = "'{}'"
        from opentracy.store.segments import _META_PROBLEM_SQL, _META_STRUCT_SQL

        sql = (
            f"WITH x AS (SELECT {meta} AS metadata, false AS deleted, {' AND '.join(ok)} AS ok FROM b), "
            f"y AS (SELECT *, {_META_STRUCT_SQL} AS _m, {keys} AS _k FROM x) "
            f"SELECT CASE WHEN ok AND {' AND '.join(meta_ok)} AND ({_META_PROBLEM_SQL}) IS NULL THEN metadata "
            "ELSE error('opentracy: row by row') END AS metadata FROM y"
        )
        return cls(schema, sql, pf, rf, idf if idf in names else None)

    def _query(self, b: pa.RecordBatch | pa.Table) -> pa.Table | None:
        """The plan's query over the batch; None when a row refused it (or the batch is typed otherwise)."""
        import duckdb

        if self._con is None:
            from opentracy.store.segments import duck

            self._con = duck(memory_limit="256MB")
        if not b.schema.equals(self.schema):  # a later file of a folder, typed otherwise
            return None
        try:
            self._con.register("b", b)
            try:
                return self._con.sql(self.sql).to_arrow_table()
            finally:
                self._con.unregister("b")
        except (duckdb.Error, pa.ArrowException):
            return None

    def batch(self, b: pa.RecordBatch | pa.Table) -> pa.Table | None:
        """The batch as BATCH_SCHEMA rows, or None when a row in it needs the per-row path."""
        res = self._query(b)
        if res is None:
            return None
        meta = res.column(0)
        n = b.num_rows
        names = b.schema.names
        rid = (
            b.column(names.index(self.row_id)).cast(pa.string()) if self.row_id else pa.nulls(n, pa.string())
        )
        return pa.table(
            [
                rid,
                b.column(names.index(self.prompt)).cast(pa.string()),
                from_numpy(np.zeros(n, dtype=bool)),
                b.column(names.index(self.response)).cast(pa.string()),
                meta.cast(pa.string()),
            ],
            schema=BATCH_SCHEMA,
        )

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


# Characters DuckDB's to_json escapes as \u00XX with capital hex digits where msgspec (the per-row path) writes
# small ones: text holding one goes row by row, so both write a chat prompt's JSON alike.
_CAPITAL_ESCAPES = "[\x0b\x0e\x0f\x1a-\x1f]"


class ColumnarChat(ColumnarRows):
    """Chat examples in a `messages` column (Hugging Face, Parquet) a batch at a time, in the plain case: the
    column is a list of {role, content} text structs, and other columns (but `metadata`) are of plain types.
    A row is taken as the per-row path (`Normaliser._add_chat`) takes it — every message but the last is the
    prompt (its JSON, keys in the struct's order), the last one's content the response, the other columns
    metadata `openai_extra` (nulls kept, as there), `row_id` the row id — when it has
    at least two messages, each with a known role and content, and the last is the assistant's; a batch
    with any other row goes row by row, which names it."""

    @classmethod
    def plan_chat(cls, schema: pa.Schema, mapping: Mapping) -> ColumnarChat | None:
        names, idf = schema.names, "row_id"  # the per-row path's chat examples take their id from `row_id`
        if "messages" not in names or "metadata" in names or len(set(names)) != len(names):
            return None
        extras = [n for n in names if n not in ("messages", idf)]  # metadata `openai_extra`, nulls kept
        if not all(_plain_json_type(schema.field(n).type) for n in extras):
            return None
        t = schema.field("messages").type
        if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_struct(t.value_type):
            return None
        fields = {f.name: f.type for f in t.value_type}
        if set(fields) != {"role", "content"} or not all(_is_text(x) for x in fields.values()):
            return None
        if idf in names and not _is_text(schema.field(idf).type):
            return None
        # Straight over the batch's columns (no CTE: an extra column named like an alias would shadow it).
        m, rid = '"messages"', _ident(idf) if idf in names else "NULL"
        roles = ", ".join(_literal(r) for r in sorted(MESSAGE_ROLES))
        ok = (
            f"{m} IS NOT NULL AND len({m}) >= 2 AND {m}[len({m})].role = 'assistant'"
            f" AND ({rid} IS NULL OR {rid} <> '')"
            f" AND list_bool_and(list_transform({m}, lambda x: x IS NOT NULL AND x.role IN ({roles})"
            f" AND x.content IS NOT NULL AND NOT regexp_matches(x.content, {_literal(_CAPITAL_ESCAPES)})))"
        )
        ok += "".join(
            f" AND ({_ident(n)} IS NULL OR isfinite({_ident(n)}))"
            for n in extras
            if pa.types.is_float64(schema.field(n).type)
        )
        meta = "'{}'"
        if extras:
            pairs = ", ".join(f"{_literal(n)}, {_ident(n)}" for n in extras)
            meta = f"json_object('openai_extra', json_object({pairs}))"
        sql = (
            f"SELECT CASE WHEN {ok} THEN CAST(to_json(list_slice({m}, 1, len({m}) - 1)) AS VARCHAR)"
            f" ELSE error('opentracy: row by row') END AS prompt, {m}[len({m})].content AS response,"
            f" CAST({meta} AS VARCHAR) AS metadata FROM b"
        )
        return cls(schema, sql, "messages", "messages", idf if idf in names else None)

    def batch(self, b: pa.RecordBatch | pa.Table) -> pa.Table | None:
        res = self._query(b)
        if res is None:
            return None
        n = b.num_rows
        rid = b.column(b.schema.names.index(self.row_id)) if self.row_id else pa.nulls(n, pa.string())
        return pa.table(
            [
                rid.cast(pa.string()),
                res.column("prompt").cast(pa.string()),
                from_numpy(np.ones(n, dtype=bool)),
                res.column("response").cast(pa.string()),
                res.column("metadata").cast(pa.string()),
            ],
            schema=BATCH_SCHEMA,
        )


def read_tables(
    tables: Iterator[tuple[pa.RecordBatch, float]],
    schema: pa.Schema,
    name: str,
    mapping: Mapping,
    errors: Errors,
    *,
    chat: bool = False,
) -> Iterator[Batch]:
    """Rows from Arrow record batches (Parquet, Arrow, HF). Row numbers count from 1 across the source.
    Batches whose rows need nothing of the per-row path are normalised in DuckDB (`ColumnarRows`)."""
    _check_columns(schema, mapping, name, chat)
    norm = Normaliser(mapping, errors, chat=chat)
    # Our own Parquet export: `prompt` is text, JSON of the chat messages where `prompt_messages` is true.
    flag = (
        not chat
        and mapping.prompt == "prompt"
        and "prompt_messages" in schema.names
        and pa.types.is_boolean(schema.field("prompt_messages").type)
    )
    fast = ColumnarRows.plan(schema, mapping, chat=chat, flag=flag, drop_meta_nulls=True)
    try:
        yield from _read_tables(tables, mapping, errors, norm, flag, fast)
    finally:
        if fast is not None:
            fast.close()


# Rows normalised at a time from columnar sources and CSV (one DuckDB query each: a few ms to plan).
TABLE_BATCH_ROWS = 32_768


def _read_tables(
    tables: Iterator[tuple[pa.RecordBatch, float]],
    mapping: Mapping,
    errors: Errors,
    norm: Normaliser,
    flag: bool,
    fast: ColumnarRows | None,
) -> Iterator[Batch]:
    row = 0
    gathered = ((pa.Table.from_batches(g), at) for g, at in _gathered(tables, TABLE_BATCH_ROWS))
    for rb, progress in gathered if fast is not None else tables:
        t = fast.batch(rb) if fast is not None else None
        if t is not None:
            yield Batch(t, range(row + 1, row + rb.num_rows + 1), progress)
            row += rb.num_rows
            continue
        b = _Builder()
        meta_is_text = "metadata" in rb.schema.names and _is_text(rb.schema.field("metadata").type)
        for rec in rb.to_pylist():
            row += 1
            if flag and rec.pop("prompt_messages", None) and isinstance(rec.get("prompt"), str):
                try:
                    rec["prompt"] = json.loads(rec["prompt"])
                except ValueError:
                    rec["prompt"] = None
                if not isinstance(rec["prompt"], list):
                    errors(row, "column 'prompt' must hold JSON messages where 'prompt_messages' is true")
                    continue
            if meta_is_text and isinstance(rec.get("metadata"), str):
                try:
                    rec["metadata"] = json.loads(rec["metadata"]) if rec["metadata"] else {}
                except ValueError:
                    errors(row, "column 'metadata' must hold a JSON object")
                    continue
            if isinstance(rec.get("metadata"), dict):
                rec["metadata"] = {k: v for k, v in rec["metadata"].items() if v is not None}
            # Arrow structs come back with every field, null where a message had none (a name, tool calls,
            # the image of a text part): what was absent stays absent, as in JSON.
            for col in (mapping.prompt, "messages"):
                if isinstance(rec.get(col), list):
                    rec[col] = _absent_nulls(rec[col])
            norm.add(rec, row, b)
        yield b.batch(progress)


def _absent_nulls(value: Any) -> Any:
    """`value` with every object's null fields left out, at any depth (list items are kept)."""
    if isinstance(value, dict):
        return {k: _absent_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_absent_nulls(v) for v in value]
    return value


def parquet_batches(path: Path) -> tuple[pa.Schema, Iterator[tuple[pa.RecordBatch, float]]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    total = pf.metadata.num_rows or 1

    def gen() -> Iterator[tuple[pa.RecordBatch, float]]:
        done = 0
        for rb in pf.iter_batches(batch_size=TABLE_BATCH_ROWS):
            done += rb.num_rows
            yield rb, done / total

    return pf.schema_arrow, gen()


def arrow_file_batches(paths: list[Path]) -> tuple[pa.Schema, Iterator[tuple[pa.RecordBatch, float]]]:
    """Arrow IPC files or streams (what `datasets.save_to_disk` writes), in order."""

    def open_reader(p: Path) -> Any:
        f = pa.memory_map(str(p))
        try:
            return pa.ipc.open_stream(f)
        except pa.ArrowInvalid:
            return pa.ipc.open_file(f)

    first = open_reader(paths[0])
    schema = first.schema

    def gen() -> Iterator[tuple[pa.RecordBatch, float]]:
        for i, p in enumerate(paths):
            r = first if i == 0 else open_reader(p)
            batches = (
                r
                if hasattr(r, "read_next_batch") and not hasattr(r, "num_record_batches")
                else (r.get_batch(j) for j in range(r.num_record_batches))
            )
            for rb in batches:
                yield rb, i / len(paths)

    return schema, gen()


def _concat_parquet(paths: list[Path]) -> tuple[pa.Schema, Iterator[tuple[pa.RecordBatch, float]]]:
    import pyarrow.parquet as pq

    schema = pq.ParquetFile(paths[0]).schema_arrow

    def gen() -> Iterator[tuple[pa.RecordBatch, float]]:
        for i, p in enumerate(paths):
            for rb in pq.ParquetFile(p).iter_batches(batch_size=TABLE_BATCH_ROWS):
                yield rb, i / len(paths)

    return schema, gen()


def hf_splits(folder: Path) -> dict[str, list[Path]]:
    """The splits of a Hugging Face dataset folder and the data files of each, in order."""
    if (folder / "dataset_dict.json").exists():
        splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
        return {s: _saved_files(folder / s) for s in splits}
    if (folder / "state.json").exists():
        return {"train": _saved_files(folder)}
    # A plain folder of parquet/arrow files, as on the Hub: split folders or `{split}-00000-of-00001.parquet`.
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".parquet", ".arrow") and p.is_file())
    if not files:
        raise InvalidInput(
            "no dataset found: expected a `save_to_disk` folder or .parquet/.arrow files", file=str(folder)
        )
    out: dict[str, list[Path]] = {}
    for p in files:
        rel = p.relative_to(folder).parts
        split = None
        for part in rel[:-1]:
            if part in ("train", "test", "validation", "valid", "dev", "eval"):
                split = part
        if split is None:
            stem = p.stem.split("-")[0].split(".")[0]
            split = stem if stem in ("train", "test", "validation", "valid", "dev", "eval") else "train"
        out.setdefault(split, []).append(p)
    return out


def _saved_files(d: Path) -> list[Path]:
    state = json.loads((d / "state.json").read_text())
    return [d / f["filename"] for f in state["_data_files"]]


def hf_batches(
    folder: Path, split: str | None
) -> tuple[str, pa.Schema, Iterator[tuple[pa.RecordBatch, float]]]:
    splits = hf_splits(folder)
    if split is None:
        if len(splits) == 1:
            split = next(iter(splits))
        elif "train" in splits:
            split = "train"
        else:
            raise InvalidInput(
                f"choose a split with split= (this dataset has: {', '.join(splits)})", file=str(folder)
            )
    if split not in splits:
        raise InvalidInput(f"no split {split!r} (this dataset has: {', '.join(splits)})", file=str(folder))
    files = splits[split]
    if files[0].suffix == ".parquet":
        schema, gen = _concat_parquet(files)
    else:
        schema, gen = arrow_file_batches(files)
    return split, schema, gen


def hub_batches(
    repo_id: str, split: str | None
) -> tuple[str, pa.Schema, Iterator[tuple[pa.RecordBatch, float]]]:
    """A dataset from the Hugging Face Hub (needs the network and the `datasets` package)."""
    try:
        import datasets
    except ImportError:
        raise InvalidInput(
            "loading from the Hugging Face Hub needs `pip install opentracy[hf]`", file=repo_id
        ) from None
    try:
        ds = datasets.load_dataset(repo_id, split=split or "train")
    except Exception as e:  # network, auth, unknown repo: all become one clear message
        raise InvalidInput(
            f"could not load {repo_id!r} from the Hugging Face Hub: {e}", file=repo_id
        ) from None
    table = ds.data.table
    total = max(1, len(table))

    def gen() -> Iterator[tuple[pa.RecordBatch, float]]:
        done = 0
        for rb in table.to_batches(max_chunksize=50_000):
            done += rb.num_rows
            yield rb, done / total

    return split or "train", table.schema, gen()


def detect_format(path: Path, fmt: str | None) -> str:
    if fmt:
        fmt = fmt.lower()
        aliases = {"json": "jsonl", "ndjson": "jsonl", "chat": "openai", "huggingface": "hf", "arrow": "hf"}
        fmt = aliases.get(fmt, fmt)
        if fmt not in FORMATS:
            raise InvalidInput(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
        return fmt
    if path.is_dir():
        return "hf"
    suffixes = [x.lower() for x in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:  # rows.jsonl.gz: the format is the name's before
        suffixes.pop()
    suffix = suffixes[-1] if suffixes else ""
    named = SUFFIX_FORMATS.get(suffix)
    if named == "jsonl":
        return sniff_jsonl(path)
    if named:
        return named
    if suffix == ".arrow":
        return "hf"
    raise InvalidInput(
        f"cannot tell the format from the name {path.name!r}; pass format= (one of {', '.join(FORMATS)})",
        file=path.name,
    )


@dataclass
class OpenedSource:
    format: str
    batches: Iterator[Batch]
    errors: Errors
    file: SourceFile | FilesDigest | None
    split: str | None = None
    # A faster decoder to try first (spec JSONL: `duck_jsonl`; CSV: `arrow_csv`); it may raise
    # NeedsCarefulPath, after which the source must be opened again and read through `batches`.
    fast: Callable[[], Iterator[Batch]] | None = None

    def sha256(self) -> str | None:
        return self.file.sha256.hexdigest() if self.file is not None else None


def open_source(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    mapping: Mapping | None = None,
    split: str | None = None,
    on_error: OnError = "raise",
    display_name: str | None = None,
    chunk_bytes: int = 4 << 20,
) -> OpenedSource:
    """Open any supported source as a stream of row batches (nothing is read until iterated)."""
    mapping = mapping or Mapping()
    if on_error not in ("raise", "skip"):
        raise InvalidInput(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    p = Path(path)
    name = display_name or p.name
    if not p.exists():
        if format in (None, "hf") and "/" in str(path) and not str(path).startswith((".", "/")):
            errs = Errors(str(path), on_error, "row")
            split, schema, gen = hub_batches(str(path), split)
            batches = read_tables(gen, schema, str(path), mapping, errs)
            return OpenedSource("hf", _require_rows(batches, errs, str(path), False), errs, None, split)
        raise InvalidInput("no such file", file=str(path))
    fmt = detect_format(p, format)
    if fmt in ("jsonl", "openai"):
        src = SourceFile(p, name)
        errs = Errors(name, on_error, "line")
        batches = read_jsonl(src, mapping, errs, chat=fmt == "openai", chunk_bytes=chunk_bytes)
        fast = None
        if (
            fmt in ("jsonl", "openai")
            and mapping.is_default
            and src.size >= FAST_JSONL_MIN_BYTES
            and src.compression
            in (
                None,
                "gzip",  # DuckDB reads gzip itself
            )
        ):
            # rows per batch follow the ingest granularity setting (4 MB: 32,768 rows)
            per_batch = max(256, min(32_768, chunk_bytes // 128))
            fast = functools.partial(duck_jsonl, src, rows_per_batch=per_batch, chat=fmt == "openai")
        return OpenedSource(fmt, _require_rows(batches, errs, name, src.size == 0), errs, src, fast=fast)
    if fmt == "csv":
        src = SourceFile(p, name)
        errs = Errors(name, on_error, "line")
        batches = read_csv(src, mapping, errs)
        fast = None
        if src.compression in (None, "gzip", "bz2"):  # what pyarrow decompresses
            fast = functools.partial(arrow_csv, src, mapping)
        return OpenedSource(fmt, _require_rows(batches, errs, name, src.size == 0), errs, src, fast=fast)
    if fmt == "parquet":
        if p.is_dir():
            fmt = "hf"
        else:
            src = SourceFile(p, name)
            errs = Errors(name, on_error, "row")
            try:
                schema, gen = parquet_batches(p)
            except (pa.ArrowInvalid, OSError) as e:
                raise InvalidInput(f"not a readable Parquet file: {e}", file=name) from None
            chat = "messages" in schema.names and mapping.prompt not in schema.names
            hashed = _hashing(gen, src)
            batches = read_tables(hashed, schema, name, mapping, errs, chat=chat)
            return OpenedSource(fmt, _require_rows(batches, errs, name, False), errs, src)
    errs = Errors(name, on_error, "row")
    split, schema, gen = hf_batches(p, split)
    chat = "messages" in schema.names and mapping.prompt not in schema.names
    # Provenance names the folder and split, and hashes the split's data files in order.
    digest = FilesDigest(f"{name}[{split}]", hf_splits(p)[split])
    batches = read_tables(digest.after(gen), schema, f"{name} [{split}]", mapping, errs, chat=chat)
    return OpenedSource("hf", _require_rows(batches, errs, name, False), errs, digest, split)


class FilesDigest:
    """sha256 over several files, in order, taken once they have been read through (for provenance)."""

    def __init__(self, name: str, files: list[Path]) -> None:
        self.name = name
        self.files = files
        self.sha256 = hashlib.sha256()

    def after(self, gen: Iterator[tuple[pa.RecordBatch, float]]) -> Iterator[tuple[pa.RecordBatch, float]]:
        yield from gen
        for f in self.files:
            with open(f, "rb") as fh:
                while chunk := fh.read(8 << 20):
                    self.sha256.update(chunk)


def _require_rows(batches: Iterator[Batch], errors: Errors, name: str, empty_file: bool) -> Iterator[Batch]:
    """Pass the batches through; a source without a single record (empty, only blank lines) is an error."""
    n = 0
    for b in batches:
        n += b.table.num_rows
        yield b
    if n == 0 and errors.count == 0:
        raise InvalidInput("the file is empty" if empty_file else "no rows in the file", file=name)


def _hashing(
    gen: Iterator[tuple[pa.RecordBatch, float]], src: SourceFile
) -> Iterator[tuple[pa.RecordBatch, float]]:
    """Hash a file read by another library (Parquet) once it has been read through."""
    yield from gen
    with open(src.path, "rb") as f:
        while chunk := f.read(8 << 20):
            src.sha256.update(chunk)
            src.bytes_read += len(chunk)
