"""The two JSONL decoders — DuckDB's (files from 8 MB; every file in tests) and the line-by-line one — store the same rows."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import free_port

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
    {"row_id": "s", "prompt": "separators inside strings", "response": "a, b: c",
     "metadata": {"note": "p, q: r", "list": ["x,y", "k:v", ","], "n": {"a:": [{}, []]}}},
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


def _record_refusals(monkeypatch) -> list[str]:  # type: ignore[no-untyped-def]
    """Every NeedsCarefulPath the DuckDB decoder raises from now on, as its message."""
    refused: list[str] = []
    real = formats.duck_jsonl

    def spy(s, **kw):  # type: ignore[no-untyped-def]
        try:
            yield from real(s, **kw)
        except formats.NeedsCarefulPath as e:
            refused.append(str(e))
            raise

    monkeypatch.setattr(formats, "duck_jsonl", spy)
    return refused


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
    # the decoder hashes every row that has its id (7 of the 9, three times); the others get theirs with
    # the generated id
    assert hashed_by_decoder == 21


def test_a_file_the_duckdb_decoder_refuses_is_read_line_by_line(engine, tmp_path: Path, monkeypatch) -> None:
    refused = _record_refusals(monkeypatch)
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
    cases = (
        '{"prompt": "x", "response": "y", "extra": 1}',
        '{"prompt": "x", "response": "y", "prompt": "z"}',
        '{"row_id": "z", "prompt": "x", "response": "y", "metadata": {"a": 1}, "metadata": {"b": 2}}',
        '{"row_id": "z", "prompt": "x", "response": "y", "metadata": {"a": "p, q: r"}, "extra": 1}',
        '{"row_id":"z","prompt":"x","response":"y","metadata":{"a":1},"extra":1}',
        '{"row_id":"z","prompt":"x","response":"y","response":"w","metadata":{}}',
        # numbers DuckDB keeps as text and Python reads as inf and 0.0
        '{"row_id":"z","prompt":"x","response":"y","metadata":{"a":1e400,"b":[-2E-0400]}}',
    )
    for k, text in enumerate(cases):
        f = tmp_path / f"keys{k}.jsonl"
        f.write_text(json.dumps(good[0]) + "\n" + text + "\n")
        engine.datasets.upload(f"keys{k}", f)
        monkeypatch.setattr(formats, "FAST_JSONL_MIN_BYTES", 1 << 40)
        engine.datasets.upload(f"keys{k}-careful", f)
        monkeypatch.setattr(formats, "FAST_JSONL_MIN_BYTES", 0)
        a, b = (engine.datasets.rows(n, limit=10).rows for n in (f"keys{k}", f"keys{k}-careful"))
        assert [(r.prompt, r.metadata) for r in a] == [(r.prompt, r.metadata) for r in b]
    assert engine.datasets.rows("keys0", limit=10).rows[1].metadata == {"extra": 1}
    assert len(refused) == 2 + len(cases)


@pytest.mark.parametrize("layout", ["compact", "spaced"])
def test_keys_of_compact_and_json_dumps_lines_are_proven_without_a_second_parse(
    engine, tmp_path: Path, monkeypatch, layout: str
) -> None:
    # Lines as json.dumps writes them by default (", " and ": ") or minified need no json_keys: with it
    # made to fail, such a file still goes through DuckDB; one line in another layout does not.
    monkeypatch.setattr(formats, "_DUCK_JSONL_SQL", formats._DUCK_JSONL_SQL.replace(
        "json_keys(line)", "error('json_keys ran')"))  # fmt: skip
    assert "json_keys(" not in formats._DUCK_JSONL_SQL
    refused = _record_refusals(monkeypatch)
    sep = (", ", ": ") if layout == "spaced" else (",", ":")
    rows = [
        # every third with escapes: written back by to_json rather than by quoting
        {"row_id": f"x{i}", "prompt": f"p {i}, with: separators" + ('\n"quoted" \\' if i % 3 == 0 else ""),
         "response": "r",
         "metadata": {"source_trace_id": f"t{i}", "cluster_id": i % 3, "judge_score": 0.5, "tags": ["a", "b"],
                      "nested": {"k": [1, {"z": None}]}}}
        for i in range(20)
    ]  # fmt: skip
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r, separators=sep) + "\n" for r in rows))
    engine.datasets.upload("proven", src)
    assert refused == []
    # a separator inside a metadata string makes the spaced text differ: that line needs json_keys
    other = tmp_path / "other.jsonl"
    odd = {**rows[0], "row_id": "odd", "metadata": {"note": "a, b"}}
    other.write_text(src.read_text() + json.dumps(odd, separators=sep) + "\n")
    engine.datasets.upload("other", other)
    if layout == "spaced":
        assert len(refused) == 1 and "json_keys ran" in refused[0]
    else:
        assert refused == []
    assert engine.datasets.rows("other", limit=30).rows[-1].metadata == {"note": "a, b"}


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


def _fuzz_lines(n: int, seed: int) -> list[str]:
    """JSONL lines built from pieces that test the DuckDB decoder's proofs: every key missing, repeated
    or unknown, every JSON type where a string belongs, escapes, separators inside strings, odd layouts."""
    import random

    rnd = random.Random(seed)
    strings = ["plain", 'a "quoted" word', "back\\slash", "new\nline", "tab\t", "é 😀", "sep, a: b", "", "/",
               '{"x": 1}', "\u2028", "\\", '"', "x\\\"y", "nul\u0000"]  # fmt: skip
    values = [*strings, 5, -1.5, True, None, ["a"], [{"role": "user", "content": "hi"}], {"a": 1}, {}]
    metas = [{}, {"a": 1}, {"tags": ["x", "y"]}, {"note": "p, q: r"}, {"cluster_id": 3, "judge_score": 0.5},
             {"n": {"k": [1, {"z": None}]}}, {"s": 'q"\\'}, None, "meta", 7, ["x"],
             # json.dumps writes NaN and Infinity, which are not JSON
             {"x": float("nan")}, {"y": [1.5, float("-inf")]}]  # fmt: skip
    layouts = [(",", ":"), (", ", ": "), (",", ": "), (" ,", " : "), (",  ", ":")]
    lines = []
    for _ in range(n):
        pairs: list[tuple[str, object]] = []
        for key in ("row_id", "prompt", "response", "metadata"):
            if rnd.random() < 0.12 and key != "prompt":
                continue  # missing
            good = rnd.random() < 0.7
            if key == "metadata":
                pairs.append((key, rnd.choice(metas[:7] if good else metas)))
            else:
                pairs.append((key, rnd.choice(strings if good else values)))
        if rnd.random() < 0.15:
            pairs.append((rnd.choice(["extra", "row_id", "prompt", "metadata"]), rnd.choice(values)))
        if rnd.random() < 0.15:
            rnd.shuffle(pairs)
        item, key_sep = rnd.choice(layouts)
        ascii_only = rnd.random() < 0.3
        body = item.join(
            json.dumps(k) + key_sep + json.dumps(v, ensure_ascii=ascii_only, separators=(item, key_sep))
            for k, v in pairs
        )  # fmt: skip
        line = "{" + body + "}"
        if rnd.random() < 0.06 and body:  # a trailing comma, which DuckDB's reader takes and JSON does not
            line = line[:-1] + ",}" if rnd.random() < 0.5 else re.sub(r"([^{])}}", r"\1,}}", line, count=1)
        lines.append(line)
    return lines


def _kept_by(template: str, select: str, lines: list[str], tmp_path: Path) -> pa.Table:
    """The rows a decode query keeps of `lines`, each with its line: one query over all of them, the query's
    refusal turned into a filter."""
    path = tmp_path / "fuzz.jsonl"
    path.write_text("".join(t + "\n" for t in lines), encoding="utf-8")
    stop = "THEN error('opentracy: needs the careful path') ELSE true END"
    assert stop in template and template.count(select) == 1
    sql = template.replace(stop, "THEN false ELSE true END").replace(select, "SELECT line, " + select[7:])
    con = formats.decode_connection()
    try:
        return con.sql(formats.duck_jsonl_sql(str(path), "none", sql)).to_arrow_table()
    finally:
        con.close()


def _careful_row(path: Path, text: str, *, chat: bool) -> dict:
    """The row the careful path makes of one line; the test fails if it refuses the line."""
    path.write_text(text + "\n", encoding="utf-8")
    try:
        (c,) = [
            b.table.to_pylist()
            for b in formats.read_jsonl(
                formats.SourceFile(path), formats.Mapping(), formats.Errors(file=path.name), chat=chat
            )
        ]
    except InvalidInput as e:
        pytest.fail(f"DuckDB keeps a line the careful path refuses ({e}): {text!r}")
    return c[0]


def test_the_duckdb_decoder_keeps_only_what_the_careful_path_reads_the_same(tmp_path: Path) -> None:
    # Soundness of the decoder's text proofs: for each line, DuckDB either refuses it (the careful path then
    # reads the file) or keeps exactly what the careful path stores, with the row hash ROW_HASH_SQL gives.
    # One query over all the lines, the decoder's refusal turned into a filter, each kept row with its line.
    lines = _fuzz_lines(1500, seed=7)
    table = _kept_by(
        formats._DUCK_JSONL_SQL, "SELECT row_id, prompt, false AS prompt_messages", lines, tmp_path
    )
    con = formats.decode_connection()
    try:
        table = table.set_column(6, "row_hash", formats._digests(table.column("row_hash")))
        kept = {r["line"]: r for r in table.to_pylist()}
        checked = 0
        for i, text in enumerate(lines):
            if text not in kept:
                continue
            c = _careful_row(tmp_path / f"{i}.jsonl", text, chat=False)
            (c_meta,) = con.execute("SELECT CAST(json(?) AS VARCHAR)", [c["metadata"]]).fetchone()
            want_hash = None
            if c["row_id"] is not None:
                (want_hash,) = con.execute(
                    f"SELECT {ROW_HASH_SQL} FROM (SELECT ? AS row_id, ? AS prompt, ? AS prompt_messages,"
                    " ? AS response, ? AS metadata)",
                    [c["row_id"], c["prompt"], c["prompt_messages"], c["response"], c_meta],
                ).fetchone()
            got = kept[text]
            assert (got["row_id"], got["prompt"], got["prompt_messages"], got["response"], got["metadata"]) == (
                c["row_id"], c["prompt"], c["prompt_messages"], c["response"], c_meta
            ), text  # fmt: skip
            assert got["row_hash"] == want_hash, text
            checked += 1
    finally:
        con.close()
    # both sides of the proofs were exercised
    assert checked > 400 and len(lines) - checked > 400, (checked, len(lines))


def test_small_duckdb_batches_are_gathered_in_order() -> None:
    import pyarrow as pa

    sizes = [3, 0, 4, 5, 2, 1]
    ends = [sum(sizes[: i + 1]) for i in range(len(sizes))]
    batches = [pa.record_batch({"x": list(range(e - n, e))}) for n, e in zip(sizes, ends, strict=True)]
    out = list(formats._gathered(((b, i / 10) for i, b in enumerate(batches)), 6))
    groups = [g for g, _ in out]
    assert [[b.num_rows for b in g] for g in groups] == [[3, 4], [5, 2], [1]]
    assert [x for g in groups for b in g for x in b.column(0).to_pylist()] == list(range(sum(sizes)))
    assert [at for _, at in out] == [0.2, 0.4, 0.5]  # the progress of each group's last batch
    # a batch of another schema (a later file of a folder) starts a group of its own
    other = pa.record_batch({"y": ["a", "b"]})
    out = list(formats._gathered([(batches[0], 0.1), (other, 0.2), (batches[2], 0.3)], 6))
    assert [[b.num_rows for b in g] for g, _ in out] == [[3], [2], [4]]


def test_the_duckdb_decoder_numbers_lines_across_batches(tmp_path: Path) -> None:
    rows = [{"row_id": f"r{i}", "prompt": f"p {i}", "response": "ok"} for i in range(5000)]
    path = _write(tmp_path / "many.jsonl", rows, ensure_ascii=True, spaced=True)
    src = formats.SourceFile(path)
    batches = list(formats.duck_jsonl(src, rows_per_batch=1000))
    assert len(batches) >= 2
    ids = [rid for b in batches for rid in b.table.column("row_id").to_pylist()]
    lines = [int(n) for b in batches for n in b.lines]
    assert ids == [r["row_id"] for r in rows]
    assert lines == list(range(1, 5001))
    assert src.sha256.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("ids", [["a", "b", "c", "d"], ["a", "b", "a", "d"], ["x"]])
def test_the_segment_writer_says_whether_row_ids_may_repeat(tmp_path: Path, ids: list[str]) -> None:
    import pyarrow as pa

    from opentracy.store.artifacts import ArtifactStore
    from opentracy.store.segments import INPUT_SCHEMA, SegmentWriter

    writer = SegmentWriter(ArtifactStore(str(tmp_path / "store")), id_salt="ds_test", find_repeats=True)
    for half in (ids[: len(ids) // 2], ids[len(ids) // 2 :]):  # repeats across batches count too
        n = len(half)
        writer.add(
            pa.table(
                {
                    "row_id": half,
                    "ord": list(range(n)),
                    "prompt": ["p"] * n,
                    "prompt_messages": [False] * n,
                    "response": ["r"] * n,
                    "metadata": ["{}"] * n,
                    "deleted": [False] * n,
                },
                schema=INPUT_SCHEMA,
            )
        )
    writer.close()
    assert writer.may_repeat_ids() == (len(set(ids)) < len(ids))


def test_row_digests_are_the_md5_digests_whichever_form_duckdb_gives_them() -> None:
    # The decoder takes md5_number's 128-bit integers as the digests' bytes (little-endian machines) and
    # unhex(md5()) elsewhere; both must give the bytes hashlib gives, nulls kept.
    texts = [f"row {i} é" for i in range(5000)] + [None]
    con = formats.decode_connection()
    try:
        con.execute("CREATE TEMP TABLE t AS SELECT unnest(?) AS s", [texts])
        got = con.sql("SELECT row_digest(s) AS n, unhex(md5(s)) AS b FROM t ORDER BY rowid").to_arrow_table()
    finally:
        con.close()
    want = [hashlib.md5(t.encode()).digest() if t is not None else None for t in texts]
    for name in ("n", "b"):
        col = formats._digests(got.column(name))
        col.validate(full=True)
        assert col.type == pa.binary() and col.to_pylist() == want
    # slices keep their offset (a batch may start inside an exported array)
    numbers = got.column("n").combine_chunks()
    sliced = pa.chunked_array([numbers.slice(4997, 4), numbers.slice(0, 2)])
    assert formats._digests(sliced).to_pylist() == want[4997:5001] + want[:2]


_NO_PANDAS_SCRIPT = r"""
import sys, threading, time
from opentracy.config import Settings
from opentracy.datasets import formats
from opentracy.engine import Engine

formats.FAST_JSONL_MIN_BYTES = 0  # the large-file decoder, whatever the size
path, home = sys.argv[1], sys.argv[2]
engine = Engine(Settings.from_env(home=home))
engine.datasets.upload("library", path)
engine.datasets.freeze("library")
engine.datasets.new_version("library")
engine.datasets.freeze("library")
engine.datasets.diff("library", 1, 2)
print("library", "pandas" in sys.modules)
assert engine.datasets.upload("csv", sys.argv[4]).rows_added == 3000  # through pyarrow's CSV reader
print("csv", "pandas" in sys.modules)

import uvicorn
from opentracy import Distiller
from opentracy.server import create_app

server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=int(sys.argv[3]), log_level="warning"))
threading.Thread(target=server.run, daemon=True).start()
deadline = time.monotonic() + 30
while not server.started:
    if time.monotonic() > deadline:
        sys.exit("the server did not start")
    time.sleep(0.02)
Distiller(base_url=f"http://127.0.0.1:{sys.argv[3]}", progress=False).upload_dataset("http", path)
print("http", "pandas" in sys.modules)
server.should_exit = True
"""


def test_an_upload_leaves_pandas_unimported(tmp_path: Path) -> None:
    """pyarrow imports pandas (~45 MB resident) the first time it converts a Python or numpy object; the
    upload, freeze and diff of spec JSONL, in the library and through the server, and a CSV upload must not
    need it."""
    import importlib.util
    import subprocess
    import sys

    assert importlib.util.find_spec("pandas") is not None, (
        "pandas must be installed for this test to mean anything"
    )
    rows = [
        {"row_id": f"r{i}", "prompt": f"p {i}", "response": "ok", "metadata": {"tags": ["t"]}}
        for i in range(3000)
    ]
    path = _write(tmp_path / "rows.jsonl", rows, ensure_ascii=True, spaced=True)
    csv_path = tmp_path / "rows.csv"
    csv_path.write_text(
        "row_id,prompt,response,metadata\n"
        + "".join(f'{"" if i % 2 else i},"p {i}",ok,"{{""tags"": [""t""]}}"\n' for i in range(3000))
    )
    out = subprocess.run(
        [sys.executable, "-c", _NO_PANDAS_SCRIPT, str(path), str(tmp_path / "home"), str(free_port()), str(csv_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["library", "False", "csv", "False", "http", "False"], (
        out.stdout + out.stderr
    )


def test_arrow_helpers_match_pyarrow_and_refuse_what_they_cannot_convert() -> None:
    import numpy as np

    from opentracy._arrow import from_numpy, to_numpy

    bools = np.array([True, False, True, True, False, False, False, False, True, True])
    assert from_numpy(bools).equals(pa.array(bools))
    assert from_numpy(bools[1:]).to_pylist() == bools[1:].tolist()
    ints = np.arange(-5, 20, dtype=np.int64)
    assert from_numpy(ints).equals(pa.array(ints))
    assert from_numpy(ints[::3]).to_pylist() == ints[::3].tolist()  # not contiguous: copied
    chunked = pa.chunked_array([pa.array([1, 2, 3], pa.uint64()).slice(1), pa.array([9], pa.uint64())])
    got = to_numpy(chunked)
    assert got.dtype == np.uint64 and got.tolist() == [2, 3, 9]
    assert to_numpy(pa.array([0.5, 1.5], pa.float32())).tolist() == [0.5, 1.5]
    empty = pa.chunked_array([pa.array([], pa.int32()), pa.array([7], pa.int32()).slice(1)], pa.int32())
    assert to_numpy(empty).tolist() == []
    assert from_numpy(np.arange(3, dtype=">i4")).to_pylist() == [0, 1, 2]  # big-endian input
    with pytest.raises(ValueError, match="nulls"):
        to_numpy(pa.array([1, None], pa.int64()))
    with pytest.raises(TypeError, match="integers or floats"):
        to_numpy(pa.array(["a"]))
    with pytest.raises(ValueError, match="1-D"):
        from_numpy(np.zeros((2, 2)))


def test_text_that_only_looks_like_lenient_json_stays_on_the_duckdb_decoder(
    tmp_path: Path, monkeypatch
) -> None:
    """Hex ids ("t_5e839": an e and three digits), words such as ",info", and — in lines the decoder checks
    with their strings blanked out — code with trailing commas or NaN in a prompt, are no lenient JSON: such
    a file must not be sent to the line-by-line path."""
    refused = _record_refusals(monkeypatch)
    rows = [
        {"row_id": f"h{i}", "prompt": "info: nanny, 5e400 [e839] x = [1, 2,]; y = {'a': NaN, }; café",
         "response": "r: inf, done", "metadata": {"source_trace_id": f"t_{i:04d}e839ab", "note": "a,info:infinite",
                                                   "n": [1e300, -2.5e-307]}}
        for i in range(50)
    ]  # fmt: skip
    for ensure_ascii in (True, False):  # é escaped: lines the decoder cannot prove canonical
        src = _write(tmp_path / "hex.jsonl", rows, ensure_ascii=ensure_ascii, spaced=True)
        batches = list(formats.duck_jsonl(formats.SourceFile(src)))
        assert sum(b.table.num_rows for b in batches) == 50 and refused == []
        assert batches[0].table.column("prompt")[0].as_py() == rows[0]["prompt"]


def _chat_fuzz_lines(n: int, seed: int) -> list[str]:
    """OpenAI chat JSONL lines built from pieces that test the chat query's proofs: extra and missing keys,
    keys out of order, every JSON type where text belongs, escapes and separators inside text, layouts."""
    import random

    rnd = random.Random(seed)
    texts = ["hi", 'a "quoted" word', "back\\slash", "new\nline", "tab\t", "é 😀", '", "content": "x', "",
             "}, {", "\u2028", "\x7f", "esc\x1b", "vt\x0b", "nul\u0000", '{"role": "user"}', "/"]  # fmt: skip
    values = [*texts, 5, True, None, ["a"], {"a": 1}]
    roles = ["system", "user", "assistant", "tool", "developer", "robot", "", None, 3]
    layouts = [(",", ":"), (", ", ": "), (",", ": "), (" ,", " : ")]
    lines = []
    for _ in range(n):
        msgs: list[list[tuple[str, object]]] = []
        for i in range(rnd.choice([1, 2, 2, 3, 4])):
            good = rnd.random() < 0.8
            role = rnd.choice(roles[:5] if good else roles)
            if i == 0 and rnd.random() < 0.5:
                role = "user"
            pairs: list[tuple[str, object]] = [
                ("role", role),
                ("content", rnd.choice(texts if good else values)),
            ]
            if rnd.random() < 0.05:
                pairs.append(("name", "x"))
            if rnd.random() < 0.05:
                pairs.reverse()
            if rnd.random() < 0.03:
                pairs.pop()
            msgs.append(pairs)
        if msgs and rnd.random() < 0.85:
            msgs[-1][0] = ("role", "assistant") if msgs[-1][0][0] == "role" else msgs[-1][0]
        item, key_sep = rnd.choice(layouts)
        ascii_only = rnd.random() < 0.3

        def dump(v: object, sep: tuple[str, str] = (item, key_sep), ascii_only: bool = ascii_only) -> str:
            return json.dumps(v, ensure_ascii=ascii_only, separators=sep)

        body = "[" + item.join(
            "{" + item.join(dump(k) + key_sep + dump(v) for k, v in m) + "}" for m in msgs
        ) + "]"  # fmt: skip
        top = [("messages", body)]
        if rnd.random() < 0.05:
            top.append((rnd.choice(["row_id", "metadata", "extra"]), '"x"'))
        line = "{" + item.join(dump(k) + key_sep + v for k, v in top) + "}"
        if rnd.random() < 0.3:  # \u001B where json.dumps writes \u001b (as DuckDB's to_json writes it)
            line = re.sub(r"\\u00([01][a-f])", lambda g: "\\u00" + g.group(1).upper(), line)
        lines.append(line)
    return lines


def test_the_chat_query_keeps_only_what_the_careful_path_reads_the_same(tmp_path: Path) -> None:
    """For each generated chat line, the DuckDB chat query either refuses it (the careful path then reads the
    file) or keeps exactly what the careful path stores."""
    lines = _chat_fuzz_lines(1500, seed=11)
    kept = {
        r["line"]: r
        for r in _kept_by(
            formats._DUCK_CHAT_SQL, "SELECT NULL::VARCHAR AS row_id", lines, tmp_path
        ).to_pylist()
    }
    checked = 0
    for i, text in enumerate(lines):
        if text not in kept:
            continue
        c = _careful_row(tmp_path / f"{i}.jsonl", text, chat=True)
        got, want = kept[text], c
        assert (got["row_id"], got["prompt"], got["prompt_messages"], got["response"], got["metadata"]) == (
            want["row_id"], want["prompt"], want["prompt_messages"], want["response"], want["metadata"]
        ), text  # fmt: skip
        checked += 1
    assert checked > 150 and len(lines) - checked > 600, (checked, len(lines))


def test_chat_jsonl_files_store_alike_on_both_paths(engine, tmp_path: Path, monkeypatch) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f'q {i} é \n "x"'},
                {"role": "assistant", "content": f"a {i}"},
            ]
        }
        for i in range(50)
    ]
    for spaced in (False, True):
        path = tmp_path / f"chat-{spaced}.jsonl"
        sep = (", ", ": ") if spaced else (",", ":")
        path.write_text("".join(json.dumps(r, ensure_ascii=False, separators=sep) + "\n" for r in rows))
        refused = _record_refusals(monkeypatch)
        engine.datasets.upload(f"duck-{spaced}", path, format="openai")
        assert refused == []  # the DuckDB chat query took every line
        with monkeypatch.context() as m:
            m.setattr(formats, "FAST_JSONL_MIN_BYTES", 1 << 40)
            engine.datasets.upload(f"careful-{spaced}", path, format="openai")
        assert _stored(engine, f"duck-{spaced}") == _stored(engine, f"careful-{spaced}")
