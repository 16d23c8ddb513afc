"""The two JSONL decoders — DuckDB's (files from 64 MB) and the line-by-line one — store the same rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opentracy.datasets import formats
from opentracy.engine import Engine
from opentracy.errors import InvalidInput
from opentracy.store.segments import ROW_HASH_SQL, duck

TRICKY = [
    {"row_id": "a", "prompt": "plain", "response": "ok"},
    {"prompt": "no row id: one is generated from the position", "response": "r"},
    {"row_id": "é-ü", "prompt": "naïve café — ünïcödé", "response": "日本語", "metadata": {"k": "ß"}},
    {"row_id": "e", "prompt": "emoji 😀 and a pair escaped", "response": "😀 again", "metadata": {}},
    {"row_id": "q", "prompt": 'quotes " and \\ backslashes \\" and \t tabs\nnewlines', "response": "\u0000nul"},
    {"row_id": "m", "prompt": "metadata of every kind", "response": "x",
     "metadata": {"source_trace_id": "t_1", "teacher_model": "openai/gpt-4o", "judge_score": 0.875,
                  "cluster_id": 3, "tags": ["a", "b"], "nested": {"z": [1, 2.5, -3e-7, True, None]},
                  "big": 12345678901234567, "float": 1.0, "exp": 1e300}},
    {"row_id": "k", "metadata": {"b": 1, "a": 2}, "response": "key order kept", "prompt": "fields in any order"},
    {"prompt": "another generated id", "response": "r2", "metadata": {"cluster_id": "7"}},
]  # fmt: skip


def _write(path: Path, rows: list[dict], *, ensure_ascii: bool, spaced: bool, crlf: bool = False) -> Path:
    sep = (", ", ": ") if spaced else (",", ":")
    nl = "\r\n" if crlf else "\n"
    path.write_text("".join(json.dumps(r, ensure_ascii=ensure_ascii, separators=sep) + nl for r in rows))
    return path


def _hashes(engine: Engine, name: str) -> dict[str, tuple[bytes, bytes]]:
    """row_id -> (stored row hash, the hash ROW_HASH_SQL gives the stored row now)."""
    _, sql = engine.datasets._read_sql(name, None)
    con = duck()
    try:
        res = con.sql(f"SELECT row_id, row_hash, {ROW_HASH_SQL} FROM ({sql})").fetchall()
    finally:
        con.close()
    return {r[0]: (r[1], r[2]) for r in res}


def _stored(engine: Engine, name: str) -> list[tuple]:
    page = engine.datasets.rows(name, limit=100)
    hashes = _hashes(engine, name)
    assert all(stored == now for stored, now in hashes.values()), "a stored row hash is not the row's hash"
    # generated ids depend on the dataset (its id salts them): compare their shape, not their value
    return [
        ("r_<generated>" if r.row_id.startswith("r_") and len(r.row_id) == 18 else r.row_id,
         json.dumps(r.prompt), r.response, json.dumps(r.metadata),
         None if r.row_id.startswith("r_") and len(r.row_id) == 18 else hashes[r.row_id][0])
        for r in page.rows
    ]  # fmt: skip


@pytest.mark.parametrize("variant", ["ascii", "utf8-spaced", "crlf", "utf8-compact"])
def test_both_decoders_store_the_same_rows(engine, tmp_path: Path, monkeypatch, variant: str) -> None:
    rows = TRICKY * 3
    for i, r in enumerate(rows):  # distinct ids across the repeats
        if "row_id" in r:
            rows[i] = {**r, "row_id": f"{r['row_id']}-{i}"}
    src = _write(
        tmp_path / "rows.jsonl", rows, ensure_ascii=variant == "ascii",
        spaced=variant not in ("ascii", "utf8-compact"), crlf=variant == "crlf",
    )  # fmt: skip
    used: list[str] = []
    hashed_by_decoder = 0
    real = formats.duck_jsonl

    def spy(s, **kw):  # type: ignore[no-untyped-def]
        nonlocal hashed_by_decoder
        used.append("duckdb")
        for b in real(s, **kw):
            hashed_by_decoder += b.table.num_rows - b.table.column("row_hash").null_count
            yield b

    monkeypatch.setattr(formats, "duck_jsonl", spy)
    engine.datasets.upload("fast", src)
    assert used == ["duckdb"]
    monkeypatch.setattr(formats, "FAST_JSONL_MIN_BYTES", 1 << 40)  # the line-by-line decoder
    engine.datasets.upload("careful", src)
    assert used == ["duckdb"]
    fast, careful = _stored(engine, "fast"), _stored(engine, "careful")
    assert fast == careful and len(fast) == len(rows)
    assert sum(r[0] == "r_<generated>" for r in fast) == 6
    # the decoder hashes every row that has its id (6 of the 8, three times); the others get theirs with
    # the generated id
    assert hashed_by_decoder == 18


def test_a_file_the_duckdb_decoder_refuses_is_read_line_by_line(engine, tmp_path: Path, monkeypatch) -> None:
    refused: list[str] = []
    real = formats.duck_jsonl

    def spy(s, **kw):  # type: ignore[no-untyped-def]
        try:
            yield from real(s, **kw)
        except formats.NeedsCarefulPath as e:
            refused.append(str(e))
            raise

    monkeypatch.setattr(formats, "duck_jsonl", spy)
    good = [{"prompt": f"p{i}", "response": "r"} for i in range(5)]
    # chat prompts, JSON nulls and blank lines are the careful path's: accepted there
    chat = {"prompt": [{"role": "user", "content": "hi"}], "response": "hello"}
    src = tmp_path / "mixed.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in [*good, chat]) + "\n" + json.dumps(good[0]) + "\n")
    res = engine.datasets.upload("mixed", src)
    assert res.rows_added == 7 and len(refused) == 1
    # a bad line: refused by DuckDB, then named by the careful path; nothing stored
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"prompt": "x", "response": 5}\n')
    with pytest.raises(InvalidInput) as e:
        engine.datasets.upload("bad", bad)
    assert "line 6" in str(e.value) and "bad.jsonl" in str(e.value) and len(refused) == 2
    assert "bad" not in [d.name for d in engine.datasets.list()[0]]
    # a field of its own (kept as metadata by the careful path) and a repeated field: DuckDB leaves both
    # to the careful path, so the result is the careful path's
    for k, text in enumerate(('{"prompt": "x", "response": "y", "extra": 1}',
                              '{"prompt": "x", "response": "y", "prompt": "z"}')):  # fmt: skip
        f = tmp_path / f"keys{k}.jsonl"
        f.write_text(json.dumps(good[0]) + "\n" + text + "\n")
        engine.datasets.upload(f"keys{k}", f)
        monkeypatch.setattr(formats, "FAST_JSONL_MIN_BYTES", 1 << 40)
        engine.datasets.upload(f"keys{k}-careful", f)
        monkeypatch.setattr(formats, "FAST_JSONL_MIN_BYTES", 0)
        a, b = (engine.datasets.rows(n, limit=10).rows for n in (f"keys{k}", f"keys{k}-careful"))
        assert [(r.prompt, r.metadata) for r in a] == [(r.prompt, r.metadata) for r in b]
    assert engine.datasets.rows("keys0", limit=10).rows[1].metadata == {"extra": 1}
    assert len(refused) == 4


METADATA_CASES = [
    {}, {"source_trace_id": None}, {"source_trace_id": "t"}, {"source_trace_id": 7}, {"teacher_model": ["x"]},
    {"judge_score": 0.5}, {"judge_score": -3}, {"judge_score": 1e300}, {"judge_score": "0.5"},
    {"judge_score": True}, {"judge_score": None}, {"cluster_id": -12}, {"cluster_id": "a"}, {"cluster_id": 1.5},
    {"cluster_id": 1e3}, {"cluster_id": False}, {"cluster_id": {"x": 1}}, {"tags": []}, {"tags": ["a", 'b"c']},
    {"tags": ["a\\", "b"]}, {"tags": ['a\\",1,"b']}, {"tags": ["a", 1]}, {"tags": [["a"]]}, {"tags": "a"},
    {"tags": None}, {"tags": [None]}, {"other": [1, {"tags": 5}]}, {"Tags": 5},
]  # fmt: skip


@pytest.mark.parametrize("meta", METADATA_CASES, ids=[json.dumps(m) for m in METADATA_CASES])
def test_the_segment_writer_checks_metadata_as_the_careful_path_does(meta: dict) -> None:
    from opentracy.datasets.rows import check_metadata
    from opentracy.store.segments import _META_PROBLEM_SQL, _META_STRUCT_SQL

    con = duck()
    try:
        text = json.dumps(meta, indent=1)  # as it may arrive: not minified
        (problem,) = con.execute(
            f"SELECT {_META_PROBLEM_SQL} FROM (SELECT false AS deleted, ? AS metadata)"
            f" CROSS JOIN LATERAL (SELECT {_META_STRUCT_SQL} AS _m)",
            [text],
        ).fetchone()
    finally:
        con.close()
    assert problem == check_metadata(meta)
