"""Bad input: a clear InvalidInput naming the file and the line (or row), and the store left exactly as it was.

With on_error="skip" bad records are left out and listed, and the good ones are committed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import segment_files, spec_rows
from sqlalchemy import select

from opentracy.errors import InvalidInput
from opentracy.store.tables import DatasetRecord, VersionRecord

GOOD = {"prompt": "Where is my card?", "response": "card_arrival"}
CHAT = {
    "messages": [
        {"role": "user", "content": "Where is my card?"},
        {"role": "assistant", "content": "card_arrival"},
    ]
}


def J(obj) -> str:
    return json.dumps(obj)


def snapshot(engine) -> dict:
    """Everything an upload could change: catalog rows (except the write counter), stored files."""
    with engine.catalog.session() as s:
        datasets = [
            (d.id, d.name, d.description, d.created_at, d.updated_at)
            for d in s.scalars(select(DatasetRecord).order_by(DatasetRecord.name))
        ]
        versions = [
            (v.id, v.dataset_id, v.number, v.status, v.parent_id, v.row_count, v.content_hash, v.manifest,
             v.provenance, v.stats, v.revision, v.created_at, v.updated_at, v.frozen_at)
            for v in s.scalars(select(VersionRecord).order_by(VersionRecord.id))
        ]  # fmt: skip
    root = Path(engine.artifacts.root)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return {"datasets": datasets, "versions": versions, "files": files, "segments": segment_files(engine)}


def dataset_names(engine) -> list[str]:
    return [d.name for d in engine.datasets.list()[0]]


@pytest.fixture
def tickets(engine, write_jsonl):
    """An existing dataset with 5 rows (r_0000000 .. r_0000004) in its active version."""
    engine.datasets.upload("tickets", write_jsonl(spec_rows(5), "existing.jsonl"))
    return engine


def write_bytes(tmp_path: Path, name: str, data: bytes | str) -> Path:
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def jsonl(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


def csv_text(rows: list[list[str]]) -> str:
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


# (id, file name, content, where ("line"/"row", n) or None, words the reason must contain)
G = J(GOOD)
TEXT_CASES = [
    ("malformed-json", "a.jsonl", jsonl(G, G, '{"prompt": "p", "response": '), ("line", 3), "malformed JSON"),
    ("not-an-object", "a.jsonl", jsonl(G, "[1, 2]"), ("line", 2), "expected a JSON object"),
    # two records on one line, comma-separated: the whole-chunk decoder once read them as two rows
    ("two-objects-one-line", "a.jsonl", jsonl(G, f"{G},{G}", G), ("line", 2), "malformed JSON"),
    (
        "two-chat-objects-one-line",
        "a.jsonl",
        jsonl(*[J(CHAT)] * 2, f"{J(CHAT)}, {J(CHAT)}"),
        ("line", 3),
        "malformed JSON",
    ),
    ("missing-prompt", "a.jsonl", jsonl(G, G, G, J({"response": "r"})), ("line", 4), "missing prompt"),
    ("missing-response", "a.jsonl", jsonl(G, J({"prompt": "p"}), G), ("line", 2), "missing response"),
    (
        "response-number",
        "a.jsonl",
        jsonl(G, G, J({"prompt": "p", "response": 3})),
        ("line", 3),
        "'response' must be a string",
    ),
    (
        "prompt-number",
        "a.jsonl",
        jsonl(J({"prompt": 5, "response": "r"}), G),
        ("line", 1),
        "'prompt' must be a string",
    ),
    ("response-null", "a.jsonl", jsonl(G, G, J({"prompt": "p", "response": None})), ("line", 3), "response"),
    ("prompt-null", "a.jsonl", jsonl(G, J({"prompt": None, "response": "r"})), ("line", 2), "prompt"),
    (
        "response-list",
        "a.jsonl",
        jsonl(G, J({"prompt": "p", "response": ["r"]})),
        ("line", 2),
        "'response' must be a string",
    ),
    (
        "response-bool",
        "a.jsonl",
        jsonl(G, J({"prompt": "p", "response": True})),
        ("line", 2),
        "'response' must be a string",
    ),
    ("row-id-number", "a.jsonl", jsonl(G, J({**GOOD, "row_id": 5})), ("line", 2), "row_id"),
    ("row-id-empty", "a.jsonl", jsonl(G, J({**GOOD, "row_id": ""})), ("line", 2), "row_id"),
    (
        "metadata-string",
        "a.jsonl",
        jsonl(G, G, J({**GOOD, "metadata": "x"})),
        ("line", 3),
        "metadata must be an object",
    ),
    (
        "metadata-list",
        "a.jsonl",
        jsonl(G, J({**GOOD, "metadata": [1]})),
        ("line", 2),
        "metadata must be an object",
    ),
    (
        "judge-score-string",
        "a.jsonl",
        jsonl(G, G, J({**GOOD, "metadata": {"judge_score": "high"}})),
        ("line", 3),
        "judge_score",
    ),
    (
        "judge-score-bool",
        "a.jsonl",
        jsonl(G, J({**GOOD, "metadata": {"judge_score": True}})),
        ("line", 2),
        "judge_score",
    ),
    ("tags-string", "a.jsonl", jsonl(G, J({**GOOD, "metadata": {"tags": "x"}})), ("line", 2), "tags"),
    ("tags-numbers", "a.jsonl", jsonl(G, G, G, J({**GOOD, "metadata": {"tags": [1]}})), ("line", 4), "tags"),
    (
        "cluster-id-float",
        "a.jsonl",
        jsonl(G, J({**GOOD, "metadata": {"cluster_id": 1.5}})),
        ("line", 2),
        "cluster_id",
    ),
    (
        "source-trace-id-number",
        "a.jsonl",
        jsonl(G, J({**GOOD, "metadata": {"source_trace_id": 7}})),
        ("line", 2),
        "source_trace_id",
    ),
    (
        "teacher-model-number",
        "a.jsonl",
        jsonl(G, J({**GOOD, "metadata": {"teacher_model": 4}})),
        ("line", 2),
        "teacher_model",
    ),
    # JSON that DuckDB's reader takes but the JSON standard (and the line-by-line reader) does not
    (
        "trailing-comma-in-line",
        "a.jsonl",
        jsonl(G, '{"row_id": "lenient-0", "prompt": "p", "response": "r",}'),
        ("line", 2),
        "malformed JSON",
    ),
    (
        "trailing-comma-in-metadata",
        "a.jsonl",
        jsonl(G, G, '{"row_id": "lenient-1", "prompt": "p", "response": "r", "metadata": {"a": [1, 2,]}}'),
        ("line", 3),
        "malformed JSON",
    ),
    (
        "trailing-comma-compact",
        "a.jsonl",
        jsonl(G, '{"row_id":"lenient-2","prompt":"p","response":"r","metadata":{"a":1,}}'),
        ("line", 2),
        "malformed JSON",
    ),
    (
        "nan-in-metadata",
        "a.jsonl",
        jsonl(G, '{"prompt": "p", "response": "r", "metadata": {"x": NaN}}'),
        ("line", 2),
        "malformed JSON",
    ),
    (
        "infinity-compact",
        "a.jsonl",
        jsonl(G, '{"row_id":"lenient-3","prompt":"p","response":"r","metadata":{"x":[-Infinity]}}'),
        ("line", 2),
        "malformed JSON",
    ),
    (
        "csv-metadata-trailing-comma",
        "a.csv",
        csv_text([["prompt", "response", "metadata"], ["p", "r", "{}"], ["p", "r", '{"a": 1,}']]),
        ("line", 3),
        "JSON object",
    ),
    # CSV cells are text, which metadata.judge_score and metadata.tags never are: refused at the header
    (
        "csv-judge-score-column",
        "a.csv",
        csv_text([["prompt", "response", "judge_score"], ["p", "r", "0.9"]]),
        ("line", 1),
        "CSV cells are text",
    ),
    (
        "csv-tags-column",
        "a.csv",
        csv_text([["prompt", "response", "tags"], ["p", "r", "a"]]),
        ("line", 1),
        "metadata.tags, which must be a list of strings",
    ),
    # the slow path (an unknown top-level key sends a chunk there) checks metadata types too
    (
        "judge-score-slow-path",
        "a.jsonl",
        jsonl(J({**GOOD, "src": "x"}), J({**GOOD, "metadata": {"judge_score": "hi"}})),
        ("line", 2),
        "judge_score",
    ),
    (
        "chat-bad-role",
        "a.jsonl",
        jsonl(G, J({"prompt": [{"role": "robot", "content": "hi"}], "response": "r"})),
        ("line", 2),
        "'robot'",
    ),
    (
        "chat-empty-list",
        "a.jsonl",
        jsonl(G, J({"prompt": [], "response": "r"})),
        ("line", 2),
        "non-empty list",
    ),
    (
        "chat-no-content",
        "a.jsonl",
        jsonl(G, J({"prompt": [{"role": "user"}], "response": "r"})),
        ("line", 2),
        "no content",
    ),
    (
        "chat-message-not-object",
        "a.jsonl",
        jsonl(G, J({"prompt": ["hi"], "response": "r"})),
        ("line", 2),
        "message 0",
    ),
    (
        "non-utf8-jsonl",
        "a.jsonl",
        jsonl(G).encode() + b'{"prompt": "caf\xe9", "response": "r"}\n',
        ("line", 2),
        "UTF-8",
    ),
    # OpenAI chat fine-tuning lines
    (
        "openai-last-not-assistant",
        "chat.jsonl",
        jsonl(
            J({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
            J({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}),
        ),
        ("line", 2),
        "last message must be the assistant",
    ),
    (
        "openai-only-assistant",
        "chat.jsonl",
        jsonl(
            J({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
            J({"messages": [{"role": "assistant", "content": "b"}]}),
        ),
        ("line", 2),
        "at least one message before",
    ),
    (
        "openai-messages-not-list",
        "chat.jsonl",
        jsonl(
            J({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
            J({"messages": "hello"}),
        ),
        ("line", 2),
        "messages",
    ),
    (
        "openai-row-id-empty",
        "chat.jsonl",
        jsonl(
            J({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
            J(
                {
                    "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                    "row_id": "",
                }
            ),
        ),
        ("line", 2),
        "row_id",
    ),
    (
        "openai-metadata-not-object",
        "chat.jsonl",
        jsonl(
            J({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
            J(
                {
                    "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                    "metadata": "x",
                }
            ),
        ),
        ("line", 2),
        "metadata must be an object",
    ),
    (
        "openai-metadata-wrong-type",
        "chat.jsonl",
        jsonl(
            J(
                {
                    "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                    "metadata": {"judge_score": "high"},
                }
            )
        ),
        ("line", 1),
        "judge_score",
    ),
    (
        "openai-bad-role",
        "chat.jsonl",
        jsonl(
            J({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
            J({"messages": [{"role": "human", "content": "a"}, {"role": "assistant", "content": "b"}]}),
        ),
        ("line", 2),
        "'human'",
    ),
    # CSV
    (
        "csv-missing-column",
        "a.csv",
        csv_text([["prompt", "answer"], ["p", "r"]]),
        ("line", 1),
        "no column 'response'",
    ),
    (
        "csv-too-few-fields",
        "a.csv",
        csv_text([["prompt", "response", "source"], ["p", "r", "s"], ["p", "r"]]),
        ("line", 3),
        "expected 3 fields, found 2",
    ),
    (
        "csv-too-many-fields",
        "a.csv",
        "prompt,response\np,r\np,r,extra\n",
        ("line", 3),
        "expected 2 fields, found 3",
    ),
    ("csv-empty-prompt", "a.csv", "prompt,response\np,r\n,r\n", ("line", 3), "missing prompt"),
    (
        "csv-bad-metadata-json",
        "a.csv",
        "prompt,response,metadata\np,r,{}\np,r,not json\n",
        ("line", 3),
        "metadata",
    ),
    (
        "csv-metadata-not-object",
        "a.csv",
        'prompt,response,metadata\np,r,{}\np,r,"[1]"\n',
        ("line", 3),
        "metadata must be an object",
    ),
    (
        "csv-metadata-wrong-type",
        "a.csv",
        'prompt,response,metadata\np,r,{}\np,r,"{""tags"": ""x""}"\n',
        ("line", 3),
        "tags",
    ),
    ("non-utf8-csv", "a.csv", b"prompt,response\np,r\nna\xefve,r\n", ("line", 3), "UTF-8"),
    # a quoted field spanning lines: the error names the line the record starts on, lines after it stay right
    (
        "csv-after-multiline",
        "a.csv",
        'prompt,response\n"two\nlines",r\np\n',
        ("line", 4),
        "expected 2 fields, found 1",
    ),
    ("csv-duplicate-header", "a.csv", "prompt,response,x,x\np,r,1,2\n", ("line", 1), "repeated column"),
]


def refusal_problems(engine, path: Path, prefix: str, words: str, details: dict | None = None) -> list[str]:
    """Upload `path` into a new dataset and into `tickets`; what differs from a clean, atomic refusal.

    Each must raise InvalidInput whose message starts with `prefix` (file, line or row) and whose reason
    contains `words`, leave no new dataset, and leave the catalog and the stored files exactly as they were.
    """
    out: list[str] = []
    before = snapshot(engine)
    messages = []
    for target in ("brand-new", "tickets"):
        try:
            engine.datasets.upload(target, path)
        except InvalidInput as e:
            messages.append(str(e))
            if not str(e).startswith(prefix):
                out.append(f"{path.name} -> {target}: {str(e)!r} does not start with {prefix!r}")
            if words not in e.reason:
                out.append(f"{path.name} -> {target}: {e.reason!r} does not say {words!r}")
            if details is not None and e.details != details:
                out.append(f"{path.name} -> {target}: details {e.details} != {details}")
        except Exception as e:  # anything else is a bug too
            out.append(f"{path.name} -> {target}: {type(e).__name__}: {e}")
        else:
            out.append(f"{path.name} -> {target}: accepted")
        if snapshot(engine) != before:
            out.append(f"{path.name} -> {target}: the store changed")
    if len(set(messages)) > 1:
        out.append(f"{path.name}: different messages for a new and an existing dataset: {messages}")
    if dataset_names(engine) != ["tickets"]:
        out.append(f"{path.name}: datasets are now {dataset_names(engine)}")
    if (
        len(list(engine.datasets.iter_rows("tickets"))) != 5
        or engine.datasets.version("tickets").row_count != 5
    ):
        out.append(f"{path.name}: the rows of 'tickets' changed")
    return out


def test_bad_text_input_names_file_and_line_and_changes_nothing(tickets, tmp_path):
    problems: list[str] = []
    for case, name, content, (unit, n), words in TEXT_CASES:
        folder = tmp_path / case
        folder.mkdir()
        path = write_bytes(folder, name, content)
        found = refusal_problems(tickets, path, f"{name}, {unit} {n}: ", words, {"file": name, unit: n})
        problems += [f"[{case}] {p}" for p in found]
    assert not problems, "\n".join(problems)


def test_duplicate_row_id_in_file_names_both_lines(tickets, write_jsonl):
    rows = [{**GOOD, "row_id": f"d{i}"} for i in range(6)]
    rows[4]["row_id"] = "d1"
    path = write_jsonl(rows, "dups.jsonl")
    problems = refusal_problems(
        tickets, path, "dups.jsonl, line 5: duplicate row_id 'd1'", "(first seen at line 2)"
    )
    assert not problems, "\n".join(problems)


def test_row_id_already_in_dataset(tickets, write_jsonl):
    engine = tickets
    rows = [{**GOOD, "row_id": "new-1"}, {**GOOD, "row_id": "new-2"}, {**GOOD, "row_id": "r_0000003"}]
    path = write_jsonl(rows, "clash.jsonl")
    before = snapshot(engine)
    with pytest.raises(InvalidInput) as e:
        engine.datasets.upload("tickets", path)
    assert str(e.value).startswith("clash.jsonl, line 3: ") and "'r_0000003'" in e.value.reason
    assert "already in the dataset" in e.value.reason
    assert snapshot(engine) == before and engine.datasets.version("tickets").row_count == 5
    # the same ids are fine in another dataset
    assert engine.datasets.upload("other", path).rows_added == 3


def test_row_id_in_frozen_latest_version_clashes_too(tickets, write_jsonl):
    engine = tickets
    engine.datasets.freeze("tickets")
    path = write_jsonl([{**GOOD, "row_id": "fine"}, {**GOOD, "row_id": "r_0000001"}], "clash.jsonl")
    before = snapshot(engine)
    with pytest.raises(InvalidInput, match=r"clash\.jsonl, line 2: .*already in the dataset"):
        engine.datasets.upload("tickets", path)
    assert snapshot(engine) == before and len(engine.datasets.versions("tickets")) == 1


# ---------------------------------------------------------------------------------------------------
# columnar sources name the row


def _pq(tmp_path: Path, name: str, table: pa.Table) -> Path:
    p = tmp_path / name
    pq.write_table(table, p)
    return p


def test_parquet_response_column_of_int64(tickets, tmp_path):
    path = _pq(
        tmp_path, "ints.parquet", pa.table({"prompt": ["a", "b"], "response": pa.array([1, 2], pa.int64())})
    )
    # a column's type is wrong for every row: the message names the file and the column, and is not coerced
    problems = refusal_problems(
        tickets, path, "ints.parquet: column 'response' has type int64", "string column"
    )
    assert not problems, "\n".join(problems)


PARQUET_ROW_CASES = [
    (
        "null-response",
        pa.table({"prompt": ["a", "b", "c"], "response": ["x", "y", None]}),
        3,
        "missing response",
    ),
    ("null-prompt", pa.table({"prompt": ["a", None, "c"], "response": ["x", "y", "z"]}), 2, "missing prompt"),
    (
        "metadata-type",
        pa.table(
            {
                "prompt": ["a", "b"],
                "response": ["x", "y"],
                "metadata": ['{"judge_score": 0.5}', '{"judge_score": "high"}'],
            }
        ),
        2,
        "judge_score",
    ),
    (
        "metadata-not-json",
        pa.table({"prompt": ["a", "b"], "response": ["x", "y"], "metadata": ["{}", "oops"]}),
        2,
        "metadata",
    ),
    (
        "cluster-column",
        pa.table({"prompt": ["a", "b"], "response": ["x", "y"], "cluster_id": [None, 1.5]}),
        2,
        "cluster_id",
    ),
    (
        "bad-messages-flag",
        pa.table({"prompt": ["a", "not json"], "prompt_messages": [False, True], "response": ["x", "y"]}),
        2,
        "prompt",
    ),
]


def test_parquet_bad_row_names_the_row(tickets, tmp_path):
    problems: list[str] = []
    for case, table, row, words in PARQUET_ROW_CASES:
        folder = tmp_path / case
        folder.mkdir()
        path = _pq(folder, "rows.parquet", table)
        found = refusal_problems(
            tickets, path, f"rows.parquet, row {row}: ", words, {"file": "rows.parquet", "row": row}
        )
        problems += [f"[{case}] {p}" for p in found]
    assert not problems, "\n".join(problems)


def test_hf_folder_bad_row_names_the_row(tickets, tmp_path):
    import datasets

    datasets.disable_progress_bars()
    engine = tickets
    datasets.Dataset.from_dict(
        {"prompt": ["a", "b", "c", "d"], "response": ["x", "y", None, "z"]}
    ).save_to_disk(str(tmp_path / "hfbad"))
    before = snapshot(engine)
    with pytest.raises(InvalidInput) as e:
        engine.datasets.upload("tickets", tmp_path / "hfbad")
    assert "hfbad" in str(e.value) and e.value.details.get("row") == 3 and "row 3" in str(e.value)
    assert snapshot(engine) == before
    with pytest.raises(InvalidInput, match="no split 'validation'"):
        engine.datasets.upload("tickets", tmp_path / "hfbad", split="validation")
    assert snapshot(engine) == before


# ---------------------------------------------------------------------------------------------------
# files that are not there, empty, or of an unknown kind


EMPTY_FILES = [
    ("empty.jsonl", b""),
    ("blank.jsonl", b"\n\n   \n\t\n"),
    ("crlf-blank.jsonl", b"\r\n\r\n"),
    ("empty.csv", b""),
    ("header-only.csv", b"prompt,response\n"),
]


def test_empty_file_is_an_error(tickets, tmp_path):
    problems: list[str] = []
    for name, content in EMPTY_FILES:
        path = write_bytes(tmp_path, name, content)
        words = "empty" if not content else "no rows"
        problems += refusal_problems(tickets, path, f"{name}: ", words, {"file": name})
    assert not problems, "\n".join(problems)


def test_empty_parquet_is_an_error(tickets, tmp_path):
    empty = pa.table({"prompt": pa.array([], pa.string()), "response": pa.array([], pa.string())})
    path = _pq(tmp_path, "none.parquet", empty)
    problems = refusal_problems(tickets, path, "none.parquet: ", "no rows", {"file": "none.parquet"})
    assert not problems, "\n".join(problems)


def test_nonexistent_path(tickets, tmp_path):
    engine = tickets
    before = snapshot(engine)
    missing = tmp_path / "nope.jsonl"
    for target in ("brand-new", "tickets"):
        with pytest.raises(InvalidInput) as e:
            engine.datasets.upload(target, missing)
        assert str(missing) in str(e.value) and "no such file" in e.value.reason
    assert snapshot(engine) == before


def test_unknown_format(tickets, write_jsonl, tmp_path):
    engine = tickets
    path = write_jsonl([GOOD])
    before = snapshot(engine)
    with pytest.raises(InvalidInput, match="unknown format 'xml'"):
        engine.datasets.upload("brand-new", path, format="xml")
    txt = write_bytes(tmp_path, "rows.txt", J(GOOD) + "\n")
    with pytest.raises(InvalidInput) as e:
        engine.datasets.upload("brand-new", txt)
    assert str(e.value).startswith("rows.txt: ") and "format=" in e.value.reason
    not_parquet = write_bytes(tmp_path, "broken.parquet", b"this is not parquet")
    with pytest.raises(InvalidInput) as e:
        engine.datasets.upload("brand-new", not_parquet)
    assert str(e.value).startswith("broken.parquet: ")
    with pytest.raises(InvalidInput, match="on_error"):
        engine.datasets.upload("brand-new", path, on_error="ignore")
    assert snapshot(engine) == before


def test_bad_dataset_name(tickets, write_jsonl):
    engine = tickets
    before = snapshot(engine)
    with pytest.raises(InvalidInput, match="bad dataset name"):
        engine.datasets.upload("no spaces allowed", write_jsonl([GOOD]))
    assert snapshot(engine) == before


# ---------------------------------------------------------------------------------------------------
# what is fine: blank lines, CRLF, very long lines, a UTF-8 byte order mark


def test_blank_lines_in_the_middle_are_fine_and_line_numbers_stay_right(engine, tmp_path):
    lines = [
        J({**GOOD, "row_id": "a"}),
        "",
        "   ",
        J({**GOOD, "row_id": "b"}),
        "",
        J({**GOOD, "row_id": "c"}),
        "",
    ]
    path = write_bytes(tmp_path, "blanks.jsonl", "\n".join(lines) + "\n")
    res = engine.datasets.upload("blanks", path)
    assert res.rows_added == 3 and [r.row_id for r in engine.datasets.iter_rows("blanks")] == ["a", "b", "c"]
    bad = [*lines, "", J({"prompt": "p", "response": 3})]  # line 9
    path = write_bytes(tmp_path, "blanks2.jsonl", "\n".join(bad) + "\n")
    with pytest.raises(InvalidInput, match=r"^blanks2\.jsonl, line 9: "):
        engine.datasets.upload("blanks2", path)
    # metadata problems found later (after decoding) map back to the right line too
    bad[-1] = J({**GOOD, "metadata": {"tags": "x"}})
    path = write_bytes(tmp_path, "blanks3.jsonl", "\n".join(bad) + "\n")
    with pytest.raises(InvalidInput, match=r"^blanks3\.jsonl, line 9: .*tags"):
        engine.datasets.upload("blanks3", path)


def test_windows_crlf_line_endings(engine, tmp_path):
    rows = spec_rows(300)
    text = "\r\n".join(J(r) for r in rows) + "\r\n"
    path = write_bytes(tmp_path, "crlf.jsonl", text)
    res = engine.datasets.upload("crlf", path)
    assert res.rows_added == 300
    assert [r.model_dump() for r in engine.datasets.iter_rows("crlf")] == rows
    bad = [J(r) for r in rows[:3]] + ["", J({"prompt": "p", "response": 3})]
    path = write_bytes(tmp_path, "crlf-bad.jsonl", "\r\n".join(bad) + "\r\n")
    with pytest.raises(InvalidInput, match=r"^crlf-bad\.jsonl, line 5: "):
        engine.datasets.upload("crlf-bad", path)
    csv_path = write_bytes(
        tmp_path, "crlf.csv", 'prompt,response\r\nfirst,a\r\n"multi\r\nline",b\r\nlast,c\r\n'
    )
    engine.datasets.upload("crlfcsv", csv_path)
    got = [(r.prompt, r.response) for r in engine.datasets.iter_rows("crlfcsv")]
    assert got == [("first", "a"), ("multi\r\nline", "b"), ("last", "c")]


def test_very_long_line(engine, tmp_path):
    long_prompt = "Ticket: " + "my card was charged twice. " * 80_000  # ~2 MB, far over one 64 KiB chunk
    lines = [
        J(GOOD),
        J({"row_id": "long", "prompt": long_prompt, "response": "transaction_charged_twice"}),
        J(GOOD),
    ]
    path = write_bytes(tmp_path, "long.jsonl", jsonl(*lines))
    res = engine.datasets.upload("long", path)
    assert res.rows_added == 3 and engine.datasets.get_row("long", "long").prompt == long_prompt
    path = write_bytes(tmp_path, "long-bad.jsonl", jsonl(*lines, J({"prompt": "p"})))
    with pytest.raises(InvalidInput, match=r"^long-bad\.jsonl, line 4: missing response"):
        engine.datasets.upload("long2", path)


def test_utf8_byte_order_mark(engine, tmp_path):
    # Windows tools often write a BOM; it is not part of the first record.
    path = write_bytes(
        tmp_path, "bom.jsonl", b"\xef\xbb\xbf" + jsonl(J({**GOOD, "row_id": "x"}), J(GOOD)).encode()
    )
    res = engine.datasets.upload("bom", path)
    assert res.rows_added == 2 and engine.datasets.get_row("bom", "x").prompt == GOOD["prompt"]
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = write_bytes(tmp_path, "bomchat.jsonl", b"\xef\xbb\xbf" + jsonl(J(chat)).encode())
    res = engine.datasets.upload("bomchat", path)
    assert res.format == "openai" and res.rows_added == 1
    path = write_bytes(tmp_path, "bom.csv", b"\xef\xbb\xbfprompt,response\np,r\n")
    assert engine.datasets.upload("bomcsv", path).rows_added == 1


# ---------------------------------------------------------------------------------------------------
# on_error="skip"


def test_skip_mode_lists_bad_lines_and_commits_the_rest(tickets, tmp_path):
    engine = tickets
    lines = [
        J({**GOOD, "row_id": "ok-1"}),  # 1
        '{"prompt": "broken',  # 2
        J({"prompt": "p"}),  # 3
        "",  # 4
        J({**GOOD, "row_id": "ok-2"}),  # 5
        J({"prompt": "p", "response": 3}),  # 6
        J({**GOOD, "row_id": "ok-3", "metadata": {"judge_score": "high"}}),  # 7
        J({**GOOD, "row_id": "ok-1"}),  # 8: duplicate of line 1
        J({**GOOD, "row_id": "r_0000002"}),  # 9: already in the dataset
        J({**GOOD, "row_id": "ok-4", "metadata": {"tags": [1]}}),  # 10
        J({**GOOD, "row_id": "ok-5"}),  # 11
    ]
    data = jsonl(*lines).encode() + b'{"prompt": "\xff", "response": "r"}\n'  # 12: not UTF-8
    path = write_bytes(tmp_path, "mixed.jsonl", data)
    res = engine.datasets.upload("tickets", path, on_error="skip")
    assert res.rows_added == 3 and res.skipped == 8 and len(res.skipped_items) == 8
    by_line = {item["line"]: item["error"] for item in res.skipped_items}
    assert sorted(by_line) == [2, 3, 6, 7, 8, 9, 10, 12]
    assert "malformed JSON" in by_line[2]
    assert "missing response" in by_line[3]
    assert "'response' must be a string" in by_line[6]
    assert "judge_score" in by_line[7]
    assert "duplicate row_id 'ok-1'" in by_line[8] and "line 1" in by_line[8]
    assert "already in the dataset" in by_line[9]
    assert "tags" in by_line[10]
    assert "UTF-8" in by_line[12]
    assert all(set(item) == {"line", "error"} for item in res.skipped_items)
    ids = [r.row_id for r in engine.datasets.iter_rows("tickets")]
    assert ids == [f"r_{i:07d}" for i in range(5)] + ["ok-1", "ok-2", "ok-5"]
    assert res.version.row_count == 8
    step = [p for p in res.version.provenance if p.get("kind") == "upload"][-1]
    assert step["rows"] == 3 and step["skipped"] == 8 and step["options"] == {"on_error": "skip"}


def test_skip_mode_csv_and_parquet(engine, tmp_path):
    path = write_bytes(tmp_path, "s.csv", "prompt,response,source\na,x,s\nb,y\n,z,s\nc,w,s\n")
    res = engine.datasets.upload("scsv", path, on_error="skip")
    assert res.rows_added == 2 and res.skipped == 2
    assert sorted((i["line"], i["error"].split(" (")[0]) for i in res.skipped_items) == [
        (3, "expected 3 fields, found 2"),
        (4, "missing prompt"),
    ]
    assert [r.prompt for r in engine.datasets.iter_rows("scsv")] == ["a", "c"]

    table = pa.table({"prompt": ["a", "b", None, "d"], "response": ["x", None, "z", "w"]})
    res = engine.datasets.upload("spq", _pq(tmp_path, "s.parquet", table), on_error="skip")
    assert res.rows_added == 2 and sorted(i["row"] for i in res.skipped_items) == [2, 3]
    assert [r.prompt for r in engine.datasets.iter_rows("spq")] == ["a", "d"]


def test_skip_mode_csv_with_bytes_that_are_not_utf8(engine, tmp_path):
    data = b'prompt,response\na,x\n\xff,y\n"multi\nline caf\xe9",z\nb,w\n'
    res = engine.datasets.upload("latin", write_bytes(tmp_path, "latin.csv", data), on_error="skip")
    assert res.rows_added == 2 and [r.prompt for r in engine.datasets.iter_rows("latin")] == ["a", "b"]
    assert [(i["line"], "UTF-8" in i["error"]) for i in res.skipped_items] == [(3, True), (5, True)]


def test_skip_mode_still_refuses_what_is_not_a_row_problem(engine, tmp_path):
    before = snapshot(engine)
    path = write_bytes(tmp_path, "nocol.csv", "question,answer\na,b\n")
    with pytest.raises(InvalidInput, match=r"^nocol\.csv, line 1: "):
        engine.datasets.upload("x", path, on_error="skip")
    path = write_bytes(tmp_path, "badheader.csv", b"prompt,resp\xf6nse\na,b\n")
    with pytest.raises(InvalidInput, match=r"^badheader\.csv, line 1: not valid UTF-8"):
        engine.datasets.upload("x", path, on_error="skip")
    path = write_bytes(tmp_path, "ints.parquet", b"")
    pq.write_table(pa.table({"prompt": ["a"], "response": [1]}), path)
    with pytest.raises(InvalidInput, match=r"^ints\.parquet: "):
        engine.datasets.upload("x", path, on_error="skip")
    assert snapshot(engine) == before


def test_skip_mode_lists_at_most_1000_items_but_counts_all(engine, tmp_path):
    lines = [J({"prompt": "p", "response": i}) if i % 2 else J(GOOD) for i in range(2400)]
    res = engine.datasets.upload("many", write_bytes(tmp_path, "many.jsonl", jsonl(*lines)), on_error="skip")
    assert res.rows_added == 1200 and res.skipped == 1200 and len(res.skipped_items) == 1000
    assert [i["line"] for i in res.skipped_items] == list(range(2, 2001, 2))


# ---------------------------------------------------------------------------------------------------
# deep in a big file: many 64 KiB chunks, and the line is still exact


@pytest.fixture
def big_lines() -> list[str]:
    """6,000 spec rows as JSONL lines, with a blank line after every 1,000th row (so line != row number)."""
    out: list[str] = []
    for i, r in enumerate(spec_rows(6000)):
        out.append(J(r))
        if i % 1000 == 999:
            out.append("")
    return out


def _line_of(lines: list[str], row_id: str) -> int:
    return next(n for n, line in enumerate(lines, 1) if row_id in line)


@pytest.mark.parametrize("kind", ["malformed", "wrong-type", "metadata-type", "duplicate"])
def test_error_deep_in_a_big_file_names_the_exact_line(engine, tmp_path, big_lines, kind):
    lines = list(big_lines)
    n = _line_of(lines, "r_0004995")
    assert n == 5000 and n - 1 != 4995  # line 5000 holds row 4995: blank lines come before it
    row = json.loads(lines[n - 1])
    if kind == "malformed":
        lines[n - 1] = lines[n - 1][:-5]
    elif kind == "wrong-type":
        lines[n - 1] = J({**row, "response": 3})
    elif kind == "metadata-type":
        lines[n - 1] = J({**row, "metadata": {**row["metadata"], "judge_score": "high"}})
    else:
        lines[n - 1] = J({**row, "row_id": "r_0000016"})
    path = write_bytes(tmp_path, "big.jsonl", "\n".join(lines) + "\n")
    assert path.stat().st_size > 15 * (64 << 10)
    before = snapshot(engine)
    with pytest.raises(InvalidInput) as e:
        engine.datasets.upload("big", path)
    assert str(e.value).startswith("big.jsonl, line 5000: "), str(e.value)
    if kind == "duplicate":
        assert "first seen at line 17" in e.value.reason
    assert snapshot(engine) == before


def test_skip_mode_in_a_big_file_lists_exact_lines(engine, tmp_path, big_lines):
    lines = list(big_lines)
    bad: dict[int, str] = {}
    for rid, how in [
        ("r_0000500", "malformed"),
        ("r_0002500", "meta"),
        ("r_0004000", "dup"),
        ("r_0005999", "resp"),
    ]:
        n = _line_of(lines, rid)
        row = json.loads(lines[n - 1])
        if how == "malformed":
            lines[n - 1] = lines[n - 1][:-1]
        elif how == "meta":
            lines[n - 1] = J({**row, "metadata": {"cluster_id": 1.5}})
        elif how == "dup":
            lines[n - 1] = J({**row, "row_id": "r_0000001"})
        else:
            lines[n - 1] = J({**row, "response": None})
        bad[n] = how
    path = write_bytes(tmp_path, "big.jsonl", "\n".join(lines) + "\n")
    res = engine.datasets.upload("big", path, on_error="skip")
    assert res.rows_added == 5996 and res.skipped == 4
    assert sorted(i["line"] for i in res.skipped_items) == sorted(bad) == [501, 2503, 4005, 6005]
    assert res.version.row_count == 5996


def test_skip_mode_with_every_record_bad_uploads_nothing(engine, tmp_path):
    before = snapshot(engine)
    path = write_bytes(
        tmp_path, "all-bad.jsonl", jsonl('{"prompt": 1, "response": "x"}', "not json", '{"prompt": "p"}')
    )
    with pytest.raises(InvalidInput) as e:
        engine.datasets.upload("nothing", path, on_error="skip")
    assert e.value.message.startswith("all-bad.jsonl: no valid rows: all 3 record(s) were bad (first: line 1")
    assert snapshot(engine) == before and dataset_names(engine) == []


def test_metadata_type_errors_read_the_same_on_both_paths(engine, tmp_path):
    """The fast path (DuckDB check) and the careful path (Python check) word a problem identically."""
    bad = {"prompt": "p", "response": "r", "metadata": {"judge_score": "high"}}
    fast = write_bytes(tmp_path, "fast.jsonl", jsonl(J(bad)))
    # an unknown top-level key sends the chunk down the careful path
    slow = write_bytes(tmp_path, "slow.jsonl", jsonl(J({**bad, "extra": 1})))
    # with a row id the decoder hashes the row, and the segment writer only runs the checks on it
    hashed = write_bytes(
        tmp_path, "hashed.jsonl", jsonl(J({"row_id": "a", **bad}), J({"row_id": "b", **bad}))
    )
    messages = []
    for path in (fast, slow, hashed):
        with pytest.raises(InvalidInput) as e:
            engine.datasets.upload("m", path)
        messages.append(e.value.reason)
    assert messages == ["metadata.judge_score must be a number"] * 3
    assert dataset_names(engine) == []
