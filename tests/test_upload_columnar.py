"""Columnar sources (Parquet, Arrow, Hugging Face folders) normalised a batch at a time in DuckDB store the same
rows, and refuse the same rows with the same messages, as the per-row path."""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_upload_paths import TRICKY, _stored

from opentracy.datasets import formats
from opentracy.datasets.export import EXPORT_SCHEMA
from opentracy.engine import Engine
from opentracy.errors import InvalidInput


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "TABLE_BATCH_ROWS", 4)  # several batches in every file here


@pytest.fixture
def fast_batches(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For every batch from now on: whether DuckDB normalised it (False: the per-row path took it)."""
    seen: list[bool] = []
    for cls in (formats.ColumnarRows, formats.ColumnarChat):

        def spy(self: formats.ColumnarRows, b: pa.Table, real=cls.batch) -> pa.Table | None:  # type: ignore[no-untyped-def]
            t = real(self, b)
            seen.append(t is not None)
            return t

        monkeypatch.setattr(cls, "batch", spy)
    return seen


@contextlib.contextmanager
def _per_row(monkeypatch: pytest.MonkeyPatch, on: bool = True) -> Iterator[None]:
    """Within: every source goes row by row (nothing is planned for DuckDB), when `on`."""
    with monkeypatch.context() as m:
        if on:
            m.setattr(formats.ColumnarRows, "plan", classmethod(lambda cls, *a, **k: None))
        yield


def _both(engine: Engine, monkeypatch: pytest.MonkeyPatch, path: Path, name: str, **kw: Any) -> tuple:
    """Upload `path` through both paths; (rows stored by the batch path, by the per-row path). When
    skipping, both must also have listed the same bad records."""
    fast = engine.datasets.upload(f"{name}-fast", path, **kw)
    with _per_row(monkeypatch):
        rows = engine.datasets.upload(f"{name}-rows", path, **kw)
    assert fast.skipped_items == rows.skipped_items
    return _stored(engine, f"{name}-fast"), _stored(engine, f"{name}-rows")


def _refusals(engine: Engine, monkeypatch: pytest.MonkeyPatch, path: Path) -> list[str]:
    """The error each path gives for `path` (batch path first); nothing may be stored."""
    out = []
    for per_row in (False, True):
        with _per_row(monkeypatch, per_row), pytest.raises(InvalidInput) as e:
            engine.datasets.upload("refused", path)
        out.append(str(e.value))
    assert engine.datasets.list()[0] == []
    return out


def _export_like() -> pa.Table:
    rows = []
    for i, r in enumerate(TRICKY * 2):
        meta = r.get("metadata")
        rows.append(
            {
                "row_id": f"{r['row_id']}-{i}" if "row_id" in r else None,
                "prompt": r["prompt"],
                "prompt_messages": False if i % 3 else None,
                "response": r["response"],
                # JSON text in several layouts, or nothing: '' and null read as {}
                "metadata": None
                if meta is None
                else json.dumps(
                    meta, ensure_ascii=i % 2 == 0, separators=(",", ":") if i % 4 else (", ", ": ")
                ),
            }
        )
    rows[1]["metadata"] = ""
    return pa.Table.from_pylist(rows, schema=EXPORT_SCHEMA)


def test_our_parquet_export_layout_is_stored_alike_by_both_paths(
    engine, tmp_path: Path, monkeypatch, fast_batches: list[bool]
) -> None:
    path = tmp_path / "export.parquet"
    pq.write_table(_export_like(), path)
    fast, rows = _both(engine, monkeypatch, path, "exp")
    assert fast == rows and len(fast) == 18
    assert fast_batches and all(fast_batches)  # every batch normalised in DuckDB


def _plain_columns(n: int) -> pa.Table:
    floats = [0.1, 1e20, -0.0, 5e-324, 1.7976931348623157e308, 123456.789, 1.0, 2.5e-7, None]
    return pa.table(
        {
            "question": [f'question {i} «{"é" * (i % 3)}» "quoted"\n\t' for i in range(n)],
            "answer": ["" if i == 2 else f"answer {i}" for i in range(n)],
            "prompt": [f"a column named prompt {i}" for i in range(n)],
            "category": [None if i == 4 else f"cat-{i % 3}" for i in range(n)],
            "n": pa.array([i * 10**15 - 7 for i in range(n)], pa.int64()),
            "u": pa.array([2**64 - 1 - i for i in range(n)], pa.uint64()),
            "x": pa.array([floats[i % len(floats)] for i in range(n)], pa.float64()),
            "ok": [i % 2 == 0 for i in range(n)],
            "nothing": pa.nulls(n),
            "cluster_id": pa.array([i % 4 for i in range(n)], pa.int32()),
            "judge_score": pa.array([i / 7 for i in range(n)], pa.float64()),
        }
    )


@pytest.mark.parametrize(
    "mapping",
    [
        {"prompt_field": "question", "response_field": "answer"},
        {"prompt_field": "question", "response_field": "answer", "metadata_fields": ["x", "category", "n"]},
        {"metadata_fields": ["ok"], "response_field": "answer"},
    ],
    ids=["all-columns", "some-columns", "prompt-column"],
)
def test_plain_columns_become_the_same_metadata_on_both_paths(
    engine, tmp_path: Path, monkeypatch, fast_batches: list[bool], mapping: dict
) -> None:
    path = tmp_path / "plain.parquet"
    pq.write_table(_plain_columns(18), path)
    fast, rows = _both(engine, monkeypatch, path, "plain", **mapping)
    assert fast == rows and len(fast) == 18
    assert all(fast_batches) and len(fast_batches) == 5
    meta = engine.datasets.rows("plain-fast", limit=1).rows[0].metadata
    if "metadata_fields" not in mapping:
        assert meta["u"] == 2**64 - 1 and meta["nothing"] is None and meta["prompt"].startswith("a column")
        assert meta["cluster_id"] == 0 and meta["x"] == 0.1


def test_floats_are_written_alike_by_both_paths(engine, tmp_path: Path, monkeypatch) -> None:
    rng = random.Random(7)
    xs: list[float] = []
    while len(xs) < 400:
        x = struct.unpack("<d", rng.randbytes(8))[0]  # any bit pattern: tiny, huge, subnormal
        if math.isfinite(x):
            xs.append(x)
    xs += [rng.uniform(-1000, 1000) for _ in range(200)] + [round(rng.uniform(0, 1), 3) for _ in range(200)]
    n = len(xs)
    t = pa.table(
        {"prompt": [f"p{i}" for i in range(n)], "response": ["r"] * n, "x": pa.array(xs, pa.float64())}
    )
    path = tmp_path / "floats.parquet"
    pq.write_table(t, path)
    monkeypatch.setattr(formats, "TABLE_BATCH_ROWS", 256)
    engine.datasets.upload("floats-fast", path)
    with _per_row(monkeypatch):
        engine.datasets.upload("floats-rows", path)
    a, b = (engine.datasets.rows(name, limit=1000).rows for name in ("floats-fast", "floats-rows"))
    assert [r.metadata for r in a] == [r.metadata for r in b]
    assert [r.metadata["x"] for r in a] == xs


def test_large_string_columns_are_taken_as_text(engine, tmp_path: Path, monkeypatch, fast_batches) -> None:
    """Hugging Face datasets often type text as large_string; the metadata column then is JSON text too."""
    t = _export_like()
    t = t.cast(
        pa.schema(
            [pa.field(f.name, pa.large_string() if f.type == pa.string() else f.type) for f in t.schema]
        )
    )
    path = tmp_path / "large.parquet"
    pq.write_table(t, path)
    fast, rows = _both(engine, monkeypatch, path, "large")
    assert fast == rows and len(fast) == 18 and all(fast_batches)
    assert engine.datasets.rows("large-rows", limit=100).rows[5].metadata["cluster_id"] == 3


BAD_ROWS = [
    ("prompt", None, "missing prompt (field 'prompt')"),
    ("response", None, "missing response (field 'response')"),
    ("row_id", "", "field 'row_id' must not be empty"),
    ("metadata", "[1, 2]", "metadata must be an object, not array"),
    ("metadata", "{not json", "column 'metadata' must hold a JSON object"),
    ("metadata", '{"a": [1, 2,]}', "column 'metadata' must hold a JSON object"),  # DuckDB would take it
    ("metadata", '{"tags": "one"}', "metadata.tags must be a list of strings"),
    ("metadata", '{"judge_score": "high"}', "metadata.judge_score must be a number"),
    ("prompt_messages", True, "column 'prompt' must hold JSON messages where 'prompt_messages' is true"),
]


@pytest.mark.parametrize("column,value,message", BAD_ROWS, ids=[f"{c}={v!r}" for c, v, _ in BAD_ROWS])
def test_a_bad_row_is_named_by_its_row_number(
    engine, tmp_path: Path, monkeypatch, column: str, value: object, message: str
) -> None:
    rows = _export_like().to_pylist()
    rows[9][column] = value  # row 10, in the third batch of four rows
    rows[15]["response"] = None  # a later bad row, in a batch DuckDB would refuse too
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=EXPORT_SCHEMA), path)
    for refusal in _refusals(engine, monkeypatch, path):
        assert "bad.parquet" in refusal and "row 10" in refusal and message in refusal, refusal
    # skipping: both paths store the same rows and list the same bad ones
    fast, per_row = _both(engine, monkeypatch, path, "skip", on_error="skip")
    assert fast == per_row and len(fast) == 16


def test_rows_the_per_row_path_changes_are_left_to_it(
    engine, tmp_path: Path, monkeypatch, fast_batches
) -> None:
    """Metadata with a null value (dropped per row) or a repeated key (the last kept) is not taken as is."""
    rows = _export_like().to_pylist()
    rows[2]["metadata"] = '{"a": null, "b": 1}'
    rows[6]["metadata"] = '{"a": 1, "a": 2}'
    rows[13]["metadata"] = '  {"padded": true}  '
    rows[17]["metadata"] = '{"x": NaN, "y": 1e400}'  # Python reads nan and inf (then stored as null)
    path = tmp_path / "changed.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=EXPORT_SCHEMA), path)
    fast, per_row = _both(engine, monkeypatch, path, "changed")
    assert fast == per_row
    assert fast_batches == [False, False, True, False, False]
    by_pos = engine.datasets.rows("changed-fast", limit=100).rows
    assert (
        by_pos[2].metadata == {"b": 1}
        and by_pos[6].metadata == {"a": 2}
        and by_pos[13].metadata == {"padded": True}
        and by_pos[17].metadata == {"x": None, "y": None}
    )


def test_a_nan_or_an_unsupported_column_type_takes_the_per_row_path(
    engine, tmp_path: Path, monkeypatch, fast_batches
) -> None:
    t = pa.table(
        {"prompt": ["a", "b", "c", "d", "e"], "response": ["r"] * 5, "x": [1.0, float("nan"), 2.0, 3.0, 4.0]}
    )
    pq.write_table(t, tmp_path / "nan.parquet")
    fast, per_row = _both(engine, monkeypatch, tmp_path / "nan.parquet", "nan")
    assert fast == per_row and fast_batches == [False, True]
    fast_batches.clear()
    t = pa.table({"prompt": ["a"], "response": ["r"], "when": pa.array([1], pa.timestamp("s"))})
    pq.write_table(t, tmp_path / "ts.parquet")
    fast, per_row = _both(engine, monkeypatch, tmp_path / "ts.parquet", "ts")
    assert fast == per_row and fast_batches == []  # not planned at all


def test_save_to_disk_batches_are_gathered(engine, tmp_path: Path, monkeypatch, fast_batches) -> None:
    import datasets

    monkeypatch.setattr(formats, "TABLE_BATCH_ROWS", 5_000)
    n = 12_345
    ds = datasets.Dataset.from_dict(
        {
            "prompt": [f"p{i}" for i in range(n)],
            "response": [f"r{i}" for i in range(n)],
            "label": list(range(n)),
        }
    )
    ds.save_to_disk(str(tmp_path / "hf"))  # record batches of 1,000 rows
    res = engine.datasets.upload("hf", tmp_path / "hf")
    assert res.rows_added == n
    assert fast_batches == [True, True, True]
    page = engine.datasets.rows("hf", where={"label": str(n - 1)}).rows
    assert [(r.prompt, r.response, r.metadata) for r in page] == [
        (f"p{n - 1}", f"r{n - 1}", {"label": n - 1})
    ]


# A `metadata` struct column: what pa.Table.from_pylist, pandas and `datasets` make of spec rows' metadata dicts.

_ODD = "".join(chr(i) for i in range(1, 128)) + "é€😀\u2028 \u001b"


def _struct_rows(n: int) -> list[dict[str, Any]]:
    floats = [0.1, 1e20, -0.0, 5e-324, 1.7976931348623157e308, 1.0, 2.5e-7, None]
    rows = []
    for i in range(n):
        meta: dict[str, Any] | None = {
            "source_trace_id": None if i % 5 == 0 else f"t_{i:04x}",
            "cluster_id": i % 3,
            "judge_score": floats[i % len(floats)],
            "tags": None if i % 7 == 0 else ["a", _ODD] if i % 2 else [],
            'odd "key", ü': _ODD[i % len(_ODD) :],
            "big": 2**63 - 1 - i,
            "flag": i % 2 == 0,
            "counts": [i, -i, None],
        }
        rows.append(
            {
                "row_id": None if i % 4 == 1 else f"row-{i}",
                "prompt": f"prompt {i} {_ODD}",
                "response": f"response {i}",
                "metadata": None if i % 6 == 5 else meta,
            }
        )
    return rows


def test_struct_metadata_is_stored_alike_by_both_paths(
    engine, tmp_path: Path, monkeypatch, fast_batches: list[bool]
) -> None:
    rows = _struct_rows(22)
    schema = pa.schema(
        [
            ("row_id", pa.string()),
            ("prompt", pa.string()),
            ("response", pa.large_string()),
            (
                "metadata",
                pa.struct(
                    [
                        ("source_trace_id", pa.string()),
                        ("cluster_id", pa.int32()),
                        ("judge_score", pa.float64()),
                        ("tags", pa.large_list(pa.string())),
                        ('odd "key", ü', pa.large_string()),
                        ("big", pa.uint64()),
                        ("flag", pa.bool_()),
                        ("counts", pa.list_(pa.int64())),
                        ("nothing", pa.null()),
                    ]
                ),
            ),
        ]
    )
    path = tmp_path / "struct.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    fast, per_row = _both(engine, monkeypatch, path, "struct")
    assert fast == per_row and len(fast) == 22
    assert fast_batches and all(fast_batches)
    stored = engine.datasets.rows("struct-fast", limit=100).rows
    assert stored[5].metadata == {}  # a null struct
    assert stored[0].metadata == {  # null fields left out (source_trace_id, tags, nothing), as per row
        "cluster_id": 0, "judge_score": 0.1, 'odd "key", ü': _ODD, "big": 2**63 - 1, "flag": True,
        "counts": [0, 0, None],
    }  # fmt: skip
    assert stored[1].metadata["tags"] == ["a", _ODD] and stored[1].metadata["big"] == 2**63 - 2


def test_struct_metadata_parquet_stores_what_the_jsonl_stores(
    engine, tmp_path: Path, monkeypatch, fast_batches: list[bool], write_jsonl
) -> None:
    """Spec rows written to Parquet by pyarrow (metadata dicts become a struct, keys a row lacks become
    nulls) are stored as the same rows written as JSONL. (A struct has one field order, the first row's
    keys first: a row whose keys come in another order is stored in the struct's.)"""
    rows = [dict(r, metadata=r["metadata"] or {}) for r in _struct_rows(22) if r["row_id"]]
    for r in rows:
        r["metadata"] = {k: v for k, v in r["metadata"].items() if v is not None}
    rows[0]["metadata"] = dict(rows[1]["metadata"])  # every key, in the order all rows have them
    rows[3]["metadata"] = {}
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    engine.datasets.upload("from-parquet", path)
    engine.datasets.upload("from-jsonl", write_jsonl(rows))
    assert _stored(engine, "from-parquet") == _stored(engine, "from-jsonl")
    assert fast_batches and all(fast_batches)


def test_struct_metadata_rows_the_per_row_path_changes_are_left_to_it(
    engine, tmp_path: Path, monkeypatch, fast_batches: list[bool]
) -> None:
    rows = _struct_rows(12)
    rows[6]["metadata"]["x"] = float("nan")  # stored as null per row (DuckDB's to_json writes NaN)
    rows[10]["metadata"]["x"] = float("-inf")
    path = tmp_path / "nan.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    fast, per_row = _both(engine, monkeypatch, path, "nan")
    assert fast == per_row and fast_batches == [True, False, False]
    stored = engine.datasets.rows("nan-fast", limit=100).rows
    assert stored[6].metadata["x"] is None and stored[10].metadata["x"] is None


def test_a_bad_struct_metadata_row_is_named_by_its_row_number(engine, tmp_path: Path, monkeypatch) -> None:
    rows = _struct_rows(12)
    path = tmp_path / "bad.parquet"
    t = pa.Table.from_pylist(rows)
    i = t.schema.get_field_index("metadata")
    meta = t.column(i).combine_chunks()
    tags = pa.array([[1, 2] if j == 9 else None for j in range(12)], pa.list_(pa.int64()))  # row 10
    bad = pa.StructArray.from_arrays(
        [meta.field(k) if meta.type.field(k).name != "tags" else tags for k in range(meta.type.num_fields)],
        fields=[meta.type.field(k) if meta.type.field(k).name != "tags" else pa.field("tags", tags.type)
                for k in range(meta.type.num_fields)],
    )  # fmt: skip
    pq.write_table(t.set_column(i, "metadata", bad), path)
    for refusal in _refusals(engine, monkeypatch, path):
        assert "bad.parquet" in refusal and "row 10" in refusal and "metadata.tags" in refusal, refusal


@pytest.mark.parametrize(
    "field_type,value",
    [
        (pa.struct([("z", pa.int64())]), {"z": None}),
        (pa.list_(pa.float64()), [0.5, None]),
        (pa.timestamp("s"), 1),
        (pa.float32(), 0.1),
    ],
    ids=["nested-struct", "list-of-floats", "timestamp", "float32"],
)
def test_struct_metadata_of_other_types_goes_row_by_row(
    engine, tmp_path: Path, monkeypatch, fast_batches: list[bool], field_type: pa.DataType, value: Any
) -> None:
    t = pa.table(
        {
            "prompt": ["a", "b"],
            "response": ["r", "s"],
            "metadata": pa.array(
                [{"k": value, "n": 1}, None], pa.struct([("k", field_type), ("n", pa.int64())])
            ),
        }
    )
    pq.write_table(t, tmp_path / "other.parquet")
    fast, per_row = _both(engine, monkeypatch, tmp_path / "other.parquet", "other")
    assert fast == per_row and fast_batches == []  # not planned


# CSV: parsed by Python's csv module as before; the parsed records are then normalised a batch at a time.


def _csv(path: Path, rows: list[list[str]], crlf: bool = False, bom: bool = False) -> Path:
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n" if crlf else "\n").writerows(rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode())
    return path


def _csv_rows() -> list[list[str]]:
    rows = [["row_id", "prompt", "response", "metadata"]]
    for i, r in enumerate(TRICKY * 2):
        meta = r.get("metadata")
        rows.append(
            [
                f"{r['row_id']}-{i}" if "row_id" in r else "",  # empty: an id is generated
                r["prompt"] + ("\nover\r\nthree lines" if i % 5 == 0 else ""),
                r["response"],
                "" if meta is None else json.dumps(meta, ensure_ascii=i % 2 == 0),
            ]
        )
    return rows


@pytest.mark.parametrize("layout", ["lf", "crlf-bom"])
def test_csv_records_are_stored_alike_by_both_paths(
    engine, tmp_path: Path, monkeypatch, fast_batches: list[bool], layout: str
) -> None:
    path = _csv(tmp_path / "rows.csv", _csv_rows(), crlf=layout != "lf", bom=layout != "lf")
    fast, rows = _both(engine, monkeypatch, path, "csv")
    assert fast == rows and len(fast) == 18 and fast_batches and all(fast_batches)
    assert sum(r[0] == "r_<generated>" for r in fast) == 4


def test_csv_columns_become_metadata_alike(engine, tmp_path: Path, monkeypatch, fast_batches) -> None:
    from opentracy.demo_data import BANKING77

    lines = (BANKING77 / "test.csv").read_text(encoding="utf-8").splitlines(keepends=True)[:40]
    path = tmp_path / "banking.csv"
    path.write_text("".join(lines), encoding="utf-8")
    # no response column in banking77: the intent is the response here, and the text stays in metadata too
    fast, rows = _both(engine, monkeypatch, path, "bank", prompt_field="text", response_field="category")
    assert fast == rows and len(fast) == 39 and all(fast_batches)
    fast, rows = _both(engine, monkeypatch, path, "bank2", prompt_field="text", response_field="text")
    assert fast == rows and len(fast) == 39  # one column as both: the per-row path's
    assert engine.datasets.rows("bank2-fast", limit=1).rows[0].metadata == {"category": "card_arrival"}


CSV_BAD = [
    (5, ["x", "", "r", "{}"], "missing prompt"),
    (5, ["x", "p", "r"], "expected 4 fields, found 3"),
    (5, ["x", "p", "r", '{"a": 1,}'], "column 'metadata' must hold a JSON object"),
    (5, ["x", "p", "r", '{"tags": [1]}'], "metadata.tags must be a list of strings"),
    (5, ["x", "p", "r", "[]"], "metadata must be an object"),
]


@pytest.mark.parametrize("at,record,message", CSV_BAD, ids=[m for _, _, m in CSV_BAD])
def test_a_bad_csv_record_is_named_by_its_line(
    engine, tmp_path: Path, monkeypatch, at: int, record: list[str], message: str
) -> None:
    rows = _csv_rows()
    rows.insert(at + 1, record)  # after records spanning several lines
    rows[16][2] = ""  # a later record with an empty response is fine; one with an empty prompt is not
    rows[17][1] = ""
    path = _csv(tmp_path / "bad.csv", rows)
    # the header, then each record before it with the lines its values span
    line = 2 + sum(1 + "".join(r).count("\n") for r in rows[1 : at + 1])
    assert line == 10
    for refusal in _refusals(engine, monkeypatch, path):
        assert f"bad.csv, line {line}" in refusal and message in refusal, refusal
    fast, per_row = _both(engine, monkeypatch, path, "skip", on_error="skip")
    assert fast == per_row and len(fast) == 17


def test_csv_problems_are_met_in_file_order(engine, tmp_path: Path, monkeypatch) -> None:
    """A record refused while parsing (a wrong field count) comes after a waiting record with bad metadata:
    the waiting records are normalised first, so the earlier problem is the one named."""
    rows = [["prompt", "response", "metadata"]] + [[f"p{i}", "r", "{}"] for i in range(9)]
    rows[6][2] = '{"judge_score": "high"}'  # line 7, the second record of the second batch
    rows[7] = ["p", "r"]  # line 8
    path = _csv(tmp_path / "order.csv", rows)
    for refusal in _refusals(engine, monkeypatch, path):
        assert "order.csv, line 7: metadata.judge_score" in refusal, refusal
    res = engine.datasets.upload("order", path, on_error="skip")
    assert [i["line"] for i in res.skipped_items] == [7, 8] and res.rows_added == 7


def test_chat_columns_store_what_the_same_messages_as_openai_jsonl_store(engine, tmp_path: Path) -> None:
    """Arrow gives every struct field of a message, null where the message had none (a `name`, `tool_calls`,
    the `image_url` of a text part): those nulls are absences, so a chat dataset from Parquet stores the
    same rows as the same messages written as OpenAI JSONL, where such keys are simply not there."""
    part = pa.struct([("type", pa.string()), ("text", pa.string()), ("image_url", pa.string())])
    call = pa.struct(
        [("id", pa.string()), ("type", pa.string()), ("function", pa.struct([("name", pa.string())]))]
    )
    message = pa.struct(
        [
            ("content", pa.string()),
            ("role", pa.string()),
            ("name", pa.string()),
            ("tool_calls", pa.list_(call)),
            ("parts", pa.list_(part)),
        ]
    )
    examples = [
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi", "name": "ana"},
            {"role": "assistant", "content": "hello"},
        ],
        [
            {"role": "user", "content": "look", "parts": [{"type": "text", "text": "this"}]},
            {
                "role": "assistant",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f"}}],
            },
        ],
    ]
    full = [[{f.name: m.get(f.name) for f in message} for m in ex] for ex in examples]  # nulls where absent
    pq.write_table(pa.table({"messages": pa.array(full, pa.list_(message))}), tmp_path / "chat.parquet")
    # the keys in the struct's order (a chat prompt is stored as its JSON text, keys in the order given)
    ordered = [[{f.name: m[f.name] for f in message if f.name in m} for m in ex] for ex in examples]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps({"messages": ex}) + "\n" for ex in ordered))
    engine.datasets.upload("from-parquet", tmp_path / "chat.parquet")
    engine.datasets.upload("from-jsonl", tmp_path / "chat.jsonl")
    parquet, jsonl = _stored(engine, "from-parquet"), _stored(engine, "from-jsonl")
    assert parquet == jsonl
    rows = engine.datasets.rows("from-parquet").rows
    assert rows[0].prompt == examples[0][:2] and rows[0].metadata == {}
    assert rows[1].prompt == examples[1][:1] and rows[1].response == ""
    assert rows[1].metadata == {
        "openai_response_message": {"tool_calls": examples[1][1]["tool_calls"], "content": None}
    }


def _chat_table(order: tuple[str, str], large: bool, n: int = 40, plain: bool = False) -> pa.Table:
    """Chat examples whose text holds every ASCII character (controls, quotes, backslashes) and more; with
    `plain`, none of the characters that send a batch row by row on their own."""
    text_t = pa.large_string() if large else pa.string()
    message = pa.struct([(k, text_t) for k in order])
    list_t = pa.large_list(message) if large else pa.list_(message)
    chars = [chr(i) for i in range(128)] + ["é", "\u2028", "😀", "\ufeff", "</script>"]
    if plain:
        chars = [c for c in chars if not re.match(formats._CAPITAL_ESCAPES, c)]
    rng = random.Random(5)
    examples, ids = [], []
    for i in range(n):
        turns = [("system", "be brief")] if i % 3 == 0 else []
        turns += [
            ("user", "".join(rng.choice(chars) for _ in range(12))),
            ("assistant", f'answer {i} \\ "ok"'),
        ]
        if i % 4 == 1:
            turns = [("user", "first"), ("assistant", "then"), *turns]
        examples.append([{k: (r if k == "role" else c) for k in order} for r, c in turns])
        ids.append(None if i % 5 == 0 else f"c-{i}")
    return pa.table(
        {
            "row_id": pa.array(ids, text_t),
            "messages": pa.array(examples, list_t),
            # other columns: metadata `openai_extra`, nulls kept
            "source": [None if i % 7 == 0 else f"set-{i % 3}" for i in range(n)],
            "turns": pa.array([len(e) for e in examples], pa.int64()),
            "score": [None if i % 6 == 0 else i / 7 for i in range(n)],
            "kept": [i % 2 == 0 for i in range(n)],
            "nothing": pa.nulls(n),
        }
    )


@pytest.mark.parametrize("order,large", [(("role", "content"), False), (("content", "role"), True)])
def test_chat_columns_are_stored_alike_by_both_paths(
    engine, tmp_path: Path, monkeypatch, fast_batches: list[bool], order: tuple[str, str], large: bool
) -> None:
    path = tmp_path / "chat.parquet"
    pq.write_table(_chat_table(order, large), path)
    fast, rows = _both(engine, monkeypatch, path, "chat")
    assert fast == rows and len(fast) == 40
    # batches whose text holds a character DuckDB escapes otherwise than msgspec (\u001B against \u001b) go
    # row by row; the others are taken a batch at a time
    assert True in fast_batches and False in fast_batches
    first = engine.datasets.rows("chat-fast", limit=1).rows[0]
    assert first.prompt[0] == {"role": "system", "content": "be brief"}
    extra = {"source": None, "turns": 3, "score": None, "kept": True, "nothing": None}
    assert first.metadata == {"openai_extra": extra}


def test_a_bad_chat_row_is_named_by_its_row_number(engine, tmp_path: Path, monkeypatch, fast_batches) -> None:
    t = _chat_table(("role", "content"), False, plain=True).to_pylist()
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    t[6]["messages"] = [{"role": "user", "content": "q"}, {"role": "user", "content": "no answer"}]
    t[9]["messages"][0]["role"] = "robot"
    t[13]["messages"] = [{"role": "assistant", "content": "alone"}]
    t[17]["messages"][-1]["content"] = None
    t[21]["row_id"] = ""
    table = pa.table(
        {
            "row_id": [r["row_id"] for r in t],
            "messages": pa.array([r["messages"] for r in t], pa.list_(message)),
        }
    )
    path = tmp_path / "bad-chat.parquet"
    pq.write_table(table, path)
    for refusal in _refusals(engine, monkeypatch, path):
        assert "bad-chat.parquet, row 7: the last message must be the assistant's" in refusal, refusal
    fast, per_row = _both(engine, monkeypatch, path, "skip", on_error="skip")
    assert fast == per_row and len(fast) == 35
    assert fast_batches.count(True) >= 4  # the batches without a bad row went through DuckDB
    skipped = engine.datasets.upload("listed", path, on_error="skip").skipped_items
    assert [i["row"] for i in skipped] == [7, 10, 14, 18, 22]
