"""Exports at the library level: jsonl (spec rows), openai, csv, parquet, and Hugging Face datasets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import spec_rows

from opentracy.errors import InvalidInput

SYSTEM = {"role": "system", "content": "Classify the ticket: billing, technical or feature_request."}


def rows_of(engine, name: str, version=None) -> list[dict]:
    return [r.model_dump() for r in engine.datasets.iter_rows(name, version)]


def tricky_rows() -> list[dict]:
    """Spec rows with text that export formats must escape: quotes, commas, newlines, unicode, empty strings."""
    rows = spec_rows(12)
    rows[1]["prompt"] = 'He said "refund me", then: 10,00 € — now?'
    rows[2]["prompt"] = "line one\nline two\r\nline three\n"
    rows[3]["response"] = ""
    rows[4]["metadata"] = {}
    rows[5]["metadata"] = {
        **rows[5]["metadata"],
        "note": "ünïcödé ✓ 日本語",
        "nested": {"a": [1, 2.5, None, True]},
    }
    rows[6]["prompt"] = "\t  leading and trailing space  "
    return rows


def chat_rows() -> list[dict]:
    rows = spec_rows(6)
    for i in (0, 2, 4):
        rows[i]["prompt"] = [SYSTEM, {"role": "user", "content": f"Ticket: question {i}"}]
    return rows


@pytest.fixture(autouse=True)
def _quiet_hf():
    import datasets

    datasets.disable_progress_bars()


# ---------------------------------------------------------------------------------------------------
# jsonl


def test_export_jsonl_writes_spec_rows(engine, write_jsonl, tmp_path):
    rows = tricky_rows()
    engine.datasets.upload("tickets", write_jsonl(rows))
    out = tmp_path / "out" / "tickets.jsonl"  # the folder is created
    assert engine.datasets.export("tickets", None, "jsonl", out) == 12
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 12
    parsed = [json.loads(line) for line in lines]
    assert parsed == rows
    assert all(list(p) == ["row_id", "prompt", "response", "metadata"] for p in parsed)
    assert not list(out.parent.glob("*.part"))
    # and it uploads again to the same rows, and the same content hash
    engine.datasets.upload("copy", out)
    assert rows_of(engine, "copy") == rows
    assert engine.datasets.freeze("copy").content_hash == engine.datasets.freeze("tickets").content_hash


def test_export_jsonl_keeps_message_prompts(engine, write_jsonl, tmp_path):
    rows = chat_rows()
    engine.datasets.upload("chat", write_jsonl(rows))
    out = tmp_path / "chat.jsonl"
    engine.datasets.export("chat", None, "jsonl", out)
    assert [json.loads(x) for x in out.read_text().splitlines()] == rows
    engine.datasets.upload("chat2", out)
    assert rows_of(engine, "chat2") == rows


def test_export_a_given_version_and_after_edits(engine, write_jsonl, tmp_path):
    engine.datasets.upload("t", write_jsonl(spec_rows(10)))
    engine.datasets.freeze("t")
    engine.datasets.upload("t", write_jsonl(spec_rows(15)[10:], "more.jsonl"))  # v2
    engine.datasets.update_row("t", "r_0000003", response="technical", metadata={"tags": ["reviewed"]})
    engine.datasets.delete_rows("t", ["r_0000004"])
    out1, out2 = tmp_path / "v1.jsonl", tmp_path / "v2.jsonl"
    assert engine.datasets.export("t", 1, "jsonl", out1) == 10
    assert engine.datasets.export("t", "t-v2", "jsonl", out2) == 14
    assert [json.loads(x) for x in out1.read_text().splitlines()] == spec_rows(10)
    v2 = [json.loads(x) for x in out2.read_text().splitlines()]
    assert v2 == rows_of(engine, "t", 2)
    assert [r["row_id"] for r in v2][:5] == ["r_0000000", "r_0000001", "r_0000002", "r_0000003", "r_0000005"]
    assert v2[3]["response"] == "technical" and v2[3]["metadata"] == {"tags": ["reviewed"]}


# ---------------------------------------------------------------------------------------------------
# openai


def test_export_openai_chat_format(engine, write_jsonl, tmp_path):
    rows = chat_rows()
    engine.datasets.upload("chat", write_jsonl(rows))
    out = tmp_path / "train.jsonl"
    assert engine.datasets.export("chat", None, "openai", out) == 6
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    for rec, row in zip(recs, rows, strict=True):
        prompt = (
            row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
        )
        assert rec == {"messages": [*prompt, {"role": "assistant", "content": row["response"]}]}
    # re-uploaded, it exports to the same file
    res = engine.datasets.upload("chat2", out)
    assert res.format == "openai" and res.rows_added == 6
    out2 = tmp_path / "train2.jsonl"
    engine.datasets.export("chat2", None, "openai", out2)
    assert out2.read_bytes() == out.read_bytes()


def test_export_chat_alias(engine, write_jsonl, tmp_path):
    engine.datasets.upload("t", write_jsonl(spec_rows(2)))
    assert engine.datasets.export("t", None, "chat", tmp_path / "c.jsonl") == 2
    assert (
        json.loads((tmp_path / "c.jsonl").read_text().splitlines()[0])["messages"][-1]["role"] == "assistant"
    )


# ---------------------------------------------------------------------------------------------------
# csv


def test_export_csv_and_upload_again(engine, write_jsonl, tmp_path):
    rows = tricky_rows()
    engine.datasets.upload("tickets", write_jsonl(rows))
    out = tmp_path / "tickets.csv"
    assert engine.datasets.export("tickets", None, "csv", out) == 12
    with open(out, encoding="utf-8", newline="") as f:
        got = list(csv.reader(f))
    assert got[0] == ["row_id", "prompt", "response", "metadata"]
    assert [(r[0], r[1], r[2], json.loads(r[3])) for r in got[1:]] == [
        (r["row_id"], r["prompt"], r["response"], r["metadata"]) for r in rows
    ]
    res = engine.datasets.upload("copy", out)
    assert res.format == "csv" and res.rows_added == 12
    assert rows_of(engine, "copy") == rows


# ---------------------------------------------------------------------------------------------------
# parquet


def test_export_parquet_and_upload_again(engine, write_jsonl, tmp_path):
    rows = tricky_rows() + [{**r, "row_id": r["row_id"] + "-chat"} for r in chat_rows()]
    engine.datasets.upload("tickets", write_jsonl(rows))
    out = tmp_path / "tickets.parquet"
    assert engine.datasets.export("tickets", None, "parquet", out) == len(rows)
    t = pq.read_table(out)
    assert t.schema.names == ["row_id", "prompt", "prompt_messages", "response", "metadata"]
    assert t.column("row_id").to_pylist() == [r["row_id"] for r in rows]
    assert t.column("prompt_messages").to_pylist() == [isinstance(r["prompt"], list) for r in rows]
    assert [json.loads(m) for m in t.column("metadata").to_pylist()] == [r["metadata"] for r in rows]
    res = engine.datasets.upload("copy", out)
    assert res.format == "parquet" and res.rows_added == len(rows)
    assert rows_of(engine, "copy") == rows


# ---------------------------------------------------------------------------------------------------
# empty versions and bad requests


def test_export_empty_version(engine, tmp_path):
    engine.datasets.create("empty")
    assert engine.datasets.export("empty", None, "jsonl", tmp_path / "e.jsonl") == 0
    assert (tmp_path / "e.jsonl").read_bytes() == b""
    assert engine.datasets.export("empty", None, "openai", tmp_path / "e.chat.jsonl") == 0
    assert (tmp_path / "e.chat.jsonl").read_bytes() == b""
    assert engine.datasets.export("empty", None, "csv", tmp_path / "e.csv") == 0
    assert (tmp_path / "e.csv").read_text().splitlines() == ["row_id,prompt,response,metadata"]
    assert engine.datasets.export("empty", None, "parquet", tmp_path / "e.parquet") == 0
    t = pq.read_table(tmp_path / "e.parquet")
    assert t.num_rows == 0 and t.schema.names == [
        "row_id",
        "prompt",
        "prompt_messages",
        "response",
        "metadata",
    ]
    assert b"".join(engine.datasets.export_bytes("empty", None, "jsonl")) == b""
    # a frozen empty version exports the same way
    engine.datasets.freeze("empty")
    assert engine.datasets.export("empty", 1, "jsonl", tmp_path / "f.jsonl") == 0
    ds = engine.datasets.to_hf("empty")
    assert len(ds) == 0 and set(ds.column_names) >= {"row_id", "prompt", "response", "metadata"}


def test_export_bad_requests(engine, write_jsonl, tmp_path):
    engine.datasets.upload("t", write_jsonl(spec_rows(3)))
    with pytest.raises(InvalidInput, match="unknown export format 'xml'"):
        engine.datasets.export("t", None, "xml", tmp_path / "t.xml")
    assert not (tmp_path / "t.xml").exists()
    from opentracy.errors import NotFound

    with pytest.raises(NotFound):
        engine.datasets.export("nope", None, "jsonl", tmp_path / "n.jsonl")
    with pytest.raises(NotFound):
        engine.datasets.export("t", 7, "jsonl", tmp_path / "n.jsonl")
    assert not (tmp_path / "n.jsonl").exists() and not list(Path(tmp_path).glob("*.part"))


def test_export_format_follows_the_suffix_unless_given(engine, write_jsonl, tmp_path):
    import pyarrow.parquet as pq

    engine.datasets.upload("t", write_jsonl(spec_rows(3)))
    assert engine.datasets.export("t", None, None, tmp_path / "t.parquet") == 3
    assert pq.read_table(tmp_path / "t.parquet").column("row_id").to_pylist() == [
        r["row_id"] for r in spec_rows(3)
    ]
    engine.datasets.export("t", None, None, tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().count("\n") == 4
    engine.datasets.export("t", None, "openai", tmp_path / "t.parquet")  # said outright: as said
    assert "messages" in (tmp_path / "t.parquet").read_text()
    for name in ("t", "t.txt", "t.jsonl.zip"):
        with pytest.raises(InvalidInput, match=f"cannot tell the export format from the name '{name}'"):
            engine.datasets.export("t", None, None, tmp_path / name)
        assert not (tmp_path / name).exists()


def test_export_to_a_gz_name_writes_gzip_that_uploads_again(engine, write_jsonl, tmp_path):
    import gzip

    engine.datasets.upload("t", write_jsonl(spec_rows(5)))
    for fmt in ("jsonl", "csv", "openai"):
        plain, packed = tmp_path / f"t.{fmt}", tmp_path / f"t.{fmt}.gz"
        engine.datasets.export("t", None, fmt, plain)
        engine.datasets.export("t", None, fmt if fmt == "openai" else None, packed)
        assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()
    res = engine.datasets.upload("again", tmp_path / "t.jsonl.gz")  # the round trip, compressed
    assert res.rows_added == 5
    assert [r.row_id for r in engine.datasets.iter_rows("again")] == [r["row_id"] for r in spec_rows(5)]
    for name, fmt in (("t.parquet.gz", None), ("t.gz", "parquet")):
        with pytest.raises(InvalidInput, match="Parquet is compressed inside; name the file .parquet"):
            engine.datasets.export("t", None, fmt, tmp_path / name)
    with pytest.raises(InvalidInput, match="cannot tell the export format from the name 't.gz'"):
        engine.datasets.export("t", None, None, tmp_path / "t.gz")
    assert not list(tmp_path.glob("*.part"))


def test_export_bytes_matches_file(engine, write_jsonl, tmp_path):
    engine.datasets.upload("t", write_jsonl(chat_rows()))
    for fmt in ("jsonl", "openai", "csv"):
        out = tmp_path / f"t.{fmt}"
        engine.datasets.export("t", None, fmt, out)
        assert b"".join(engine.datasets.export_bytes("t", None, fmt)) == out.read_bytes()


# ---------------------------------------------------------------------------------------------------
# Hugging Face


def test_to_hf_dataset_without_split(engine, write_jsonl):
    rows = spec_rows(20)
    engine.datasets.upload("t", write_jsonl(rows))
    ds = engine.datasets.to_hf("t")
    assert len(ds) == 20 and ds.column_names == ["row_id", "prompt", "response", "metadata"]
    assert ds["row_id"] == [r["row_id"] for r in rows]
    assert ds["prompt"] == [r["prompt"] for r in rows] and ds["response"] == [r["response"] for r in rows]
    assert [json.loads(m) for m in ds["metadata"]] == [r["metadata"] for r in rows]


def test_to_hf_train_validation_split_is_deterministic(engine, write_jsonl):
    engine.datasets.upload("t", write_jsonl(spec_rows(50)))
    dd = engine.datasets.to_hf("t", test_size=0.2, seed=7)
    assert set(dd) == {"train", "validation"}
    assert len(dd["train"]) == 40 and len(dd["validation"]) == 10
    train, val = dd["train"]["row_id"], dd["validation"]["row_id"]
    assert not set(train) & set(val) and set(train) | set(val) == {f"r_{i:07d}" for i in range(50)}
    again = engine.datasets.to_hf("t", test_size=0.2, seed=7)
    assert again["train"]["row_id"] == train and again["validation"]["row_id"] == val
    other = engine.datasets.to_hf("t", test_size=0.2, seed=8)
    assert len(other["validation"]) == 10 and set(other["validation"]["row_id"]) != set(val)
    # every row keeps its content through the split
    by_id = {r["row_id"]: r for r in rows_of(engine, "t")}
    for r in dd["validation"]:
        assert r["prompt"] == by_id[r["row_id"]]["prompt"] and r["response"] == by_id[r["row_id"]]["response"]
    # an absolute validation size
    dd = engine.datasets.to_hf("t", test_size=5, seed=7)
    assert len(dd["train"]) == 45 and len(dd["validation"]) == 5
    # sizes the split cannot take are a clear error, not datasets' ValueError
    for bad in (0.0, 1.0, -0.5, 0, 50, 51, True):
        with pytest.raises(
            InvalidInput,
            match=r"test_size must be a fraction between 0 and 1 or a number of rows from 1 to 49",
        ):
            engine.datasets.to_hf("t", test_size=bad)


def test_to_hf_from_a_frozen_version_is_reproducible(engine, write_jsonl):
    engine.datasets.upload("t", write_jsonl(spec_rows(30)))
    engine.datasets.freeze("t")
    engine.datasets.upload("t", write_jsonl(spec_rows(40)[30:], "more.jsonl"))
    dd1 = engine.datasets.to_hf("t", 1, test_size=0.2, seed=7)
    assert len(dd1["train"]) + len(dd1["validation"]) == 30
    assert (
        engine.datasets.to_hf("t", "t-v1", test_size=0.2, seed=7)["validation"]["row_id"]
        == dd1["validation"]["row_id"]
    )
    assert len(engine.datasets.to_hf("t", test_size=0.2, seed=7)["validation"]) == 8


def test_to_hf_chat_rows_give_a_messages_column(engine, write_jsonl):
    rows = chat_rows()
    engine.datasets.upload("chat", write_jsonl(rows))
    ds = engine.datasets.to_hf("chat")
    assert ds.column_names == ["row_id", "messages", "metadata"]
    for got, row in zip(ds, rows, strict=True):
        prompt = (
            row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
        )
        assert got["messages"] == [*prompt, {"role": "assistant", "content": row["response"]}]
    dd = engine.datasets.to_hf("chat", test_size=0.5, seed=1)
    assert len(dd["train"]) == 3 and len(dd["validation"]) == 3 and "messages" in dd["train"].column_names


def test_to_hf_openai_rows_keep_message_extras(engine, write_jsonl):
    recs = [
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello", "weight": 0},
            ]
        },
        {
            "messages": [
                SYSTEM,
                {"role": "user", "content": "Refund?"},
                {"role": "assistant", "content": "billing", "weight": 1},
            ]
        },
    ]
    engine.datasets.upload("chat", write_jsonl(recs, "chat.jsonl"))
    ds = engine.datasets.to_hf("chat")
    # Arrow gives every message the same fields: absent ones come back as None
    got = [[{k: v for k, v in m.items() if v is not None} for m in r["messages"]] for r in ds]
    assert got == [r["messages"] for r in recs]


def test_to_hf_messages_that_do_not_fit_one_column_is_a_clear_error(engine, write_jsonl):
    recs = [
        {"messages": [{"role": "user", "content": "plain text"}, {"role": "assistant", "content": "a"}]},
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "parts"}]},
                {"role": "assistant", "content": "b"},
            ]
        },
    ]
    engine.datasets.upload("mixed", write_jsonl(recs, "chat.jsonl"))
    with pytest.raises(InvalidInput, match="messages"):
        engine.datasets.to_hf("mixed")
    # the other formats take them as they are
    assert engine.datasets.export("mixed", None, "jsonl", write_jsonl([], "out.jsonl")) == 2


def test_to_hf_split_needs_two_rows(engine, write_jsonl):
    engine.datasets.upload("one", write_jsonl(spec_rows(1)))
    with pytest.raises(InvalidInput, match="at least 2 rows"):
        engine.datasets.to_hf("one", test_size=0.2)
