"""Writers: a version's rows as JSONL (spec rows), OpenAI chat fine-tuning JSONL, CSV, Parquet, or a
Hugging Face `datasets.Dataset` / `DatasetDict` with a deterministic train/validation split.

Text formats stream: `iter_export()` yields bytes a batch at a time, for files and HTTP responses alike.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from opentracy.datasets.suffixes import gzipped
from opentracy.errors import InvalidInput

EXPORT_FORMATS = ("jsonl", "openai", "csv", "parquet")
MEDIA_TYPES = {
    "jsonl": "application/x-ndjson",
    "openai": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}
EXTENSIONS = {"jsonl": ".jsonl", "openai": ".jsonl", "csv": ".csv", "parquet": ".parquet"}
_enc = msgspec.json.Encoder()

# Parquet export: the spec's columns, prompt as text (JSON of the messages when prompt_messages is true).
EXPORT_SCHEMA = pa.schema(
    [
        ("row_id", pa.string()),
        ("prompt", pa.string()),
        ("prompt_messages", pa.bool_()),
        ("response", pa.string()),
        ("metadata", pa.string()),
    ]
)


def check_format(fmt: str) -> str:
    f = (fmt or "").lower()
    if f == "chat":
        f = "openai"
    if f not in EXPORT_FORMATS:
        raise InvalidInput(f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    return f


def _cols(rb: pa.RecordBatch) -> tuple[list[Any], ...]:
    names = rb.schema.names
    return tuple(
        rb.column(names.index(c)).to_pylist()
        for c in ("row_id", "prompt", "prompt_messages", "response", "metadata")
    )


def _jsonl_lines(rb: pa.RecordBatch) -> bytes:
    out = []
    for rid, prompt, is_msgs, response, meta in zip(*_cols(rb), strict=True):
        # prompt (when messages) and metadata are stored as JSON text already: splice, don't re-encode.
        out.append(
            b'{"row_id":'
            + _enc.encode(rid)
            + b',"prompt":'
            + (prompt.encode() if is_msgs else _enc.encode(prompt))
            + b',"response":'
            + _enc.encode(response)
            + b',"metadata":'
            + (meta or "{}").encode()
            + b"}\n"
        )
    return b"".join(out)


def openai_record(prompt: Any, response: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """One row as an OpenAI chat fine-tuning example; the inverse of the upload reader's chat mapping."""
    messages = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    answer: dict[str, Any] = {"role": "assistant", "content": response}
    extra_msg = metadata.get("openai_response_message")
    if isinstance(extra_msg, dict):
        answer.update(extra_msg)
    rec: dict[str, Any] = {"messages": [*messages, answer]}
    extra_top = metadata.get("openai_extra")
    if isinstance(extra_top, dict):
        rec.update(extra_top)
    return rec


def _openai_lines(rb: pa.RecordBatch) -> bytes:
    out = []
    for _rid, prompt, is_msgs, response, meta in zip(*_cols(rb), strict=True):
        p = json.loads(prompt) if is_msgs else prompt
        out.append(_enc.encode(openai_record(p, response, json.loads(meta) if meta else {})) + b"\n")
    return b"".join(out)


def _csv_chunk(rb: pa.RecordBatch, header: bool) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(["row_id", "prompt", "response", "metadata"])
    for rid, prompt, _is_msgs, response, meta in zip(*_cols(rb), strict=True):
        w.writerow([rid, prompt, response, meta])
    return buf.getvalue().encode()


def iter_export(batches: Iterator[pa.RecordBatch], fmt: str) -> Iterator[bytes]:
    """Bytes of the export, batch by batch (jsonl, openai, csv). Parquet goes through `write_export`."""
    fmt = check_format(fmt)
    if fmt == "parquet":
        raise InvalidInput("parquet is not a streaming format; use write_export")
    first = True
    for rb in batches:
        if fmt == "jsonl":
            yield _jsonl_lines(rb)
        elif fmt == "openai":
            yield _openai_lines(rb)
        else:
            yield _csv_chunk(rb, first)
        first = False
    if first and fmt == "csv":
        yield _csv_chunk(pa.RecordBatch.from_pylist([], schema=EXPORT_SCHEMA), True)


def write_export(batches: Iterator[pa.RecordBatch], fmt: str, dest: str | os.PathLike[str]) -> int:
    """Write an export file; returns the number of rows."""
    fmt = check_format(fmt)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    n = 0
    try:
        if fmt == "parquet":
            with pq.ParquetWriter(tmp, EXPORT_SCHEMA, compression="zstd") as w:
                for rb in batches:
                    n += rb.num_rows
                    w.write_batch(
                        pa.record_batch(
                            [rb.column(rb.schema.names.index(c)) for c in EXPORT_SCHEMA.names],
                            schema=EXPORT_SCHEMA,
                        )
                    )
        else:

            def counted() -> Iterator[pa.RecordBatch]:
                nonlocal n
                for rb in batches:
                    n += rb.num_rows
                    yield rb

            with gzip.open(tmp, "wb", compresslevel=6) if gzipped(dest) else open(tmp, "wb") as f:
                for chunk in iter_export(counted(), fmt):
                    f.write(chunk)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n


def to_hf(
    table: pa.Table, *, test_size: float | int | None = None, seed: int = 0, messages: bool | None = None
) -> Any:
    """A `datasets.Dataset` (or a `DatasetDict` with train/validation when `test_size` is given).

    Columns: row_id, prompt, response, metadata (JSON text) — or row_id, messages, metadata when the rows
    are chat-shaped (or `messages=True`), the form TRL's SFT trainer takes. The split is deterministic for
    a given seed.
    """
    try:
        import datasets
    except ImportError:
        raise InvalidInput("exporting to Hugging Face datasets needs `pip install opentracy[hf]`") from None
    names = table.schema.names
    is_msgs = table.column(names.index("prompt_messages")).to_pylist()
    use_messages = any(is_msgs) if messages is None else messages
    rids = table.column(names.index("row_id")).to_pylist()
    metas = table.column(names.index("metadata")).to_pylist()
    prompts = table.column(names.index("prompt")).to_pylist()
    responses = table.column(names.index("response")).to_pylist()
    if use_messages:
        msgs = []
        for p, m, r, meta in zip(prompts, is_msgs, responses, metas, strict=True):
            rec = openai_record(json.loads(p) if m else p, r, json.loads(meta) if meta else {})
            msgs.append(rec["messages"])
        try:
            ds = datasets.Dataset.from_dict({"row_id": rids, "messages": msgs, "metadata": metas})
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            # A column holds one type: e.g. message content as text in one row and a list of parts in another.
            raise InvalidInput(
                f"these chat messages do not fit one Hugging Face `messages` column ({e}): a field, such as "
                "a message's content, has values of different types in different rows"
            ) from None
    else:
        ds = datasets.Dataset.from_dict(
            {"row_id": rids, "prompt": prompts, "response": responses, "metadata": metas}
        )
    if test_size is None:
        return ds
    if len(ds) < 2:
        raise InvalidInput("a train/validation split needs at least 2 rows")
    if isinstance(test_size, bool) or not (
        (isinstance(test_size, float) and 0 < test_size < 1)
        or (isinstance(test_size, int) and 1 <= test_size < len(ds))
    ):
        raise InvalidInput(
            f"test_size must be a fraction between 0 and 1 or a number of rows from 1 to {len(ds) - 1:,} "
            f"(this version has {len(ds):,} rows), not {test_size!r}"
        )
    parts = ds.train_test_split(test_size=test_size, seed=seed, shuffle=True)
    return datasets.DatasetDict({"train": parts["train"], "validation": parts["test"]})
