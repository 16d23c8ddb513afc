"""CSV files parsed by pyarrow (`formats.arrow_csv`) give the same records, line numbers and file hash as the
careful path's `csv` module, or are left to the careful path; and the careful path reads fields of any size."""

from __future__ import annotations

import bz2
import gzip
import random
from pathlib import Path

import pyarrow as pa
import pytest
from test_upload_columnar import _both
from test_upload_paths import _stored

from opentracy.datasets import formats
from opentracy.errors import InvalidInput


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "TABLE_BATCH_ROWS", 4)  # several batches in every file here


def _careful(path: Path, mapping: formats.Mapping) -> tuple[pa.Table | None, list[int], int, str]:
    """What the careful path reads: (rows, their lines, problems counted when skipping, file sha256)."""
    src = formats.SourceFile(path)
    errs = formats.Errors(path.name, "skip", "line")
    batches = list(formats.read_csv(src, mapping, errs))
    table = pa.concat_tables([b.table for b in batches]) if batches else None
    lines = [int(x) for b in batches for x in b.lines]
    return table, lines, errs.count, src.sha256.hexdigest()


def _arrow(path: Path, mapping: formats.Mapping) -> tuple[pa.Table | None, list[int], str] | None:
    """What `arrow_csv` reads, or None where it leaves the file to the careful path."""
    src = formats.SourceFile(path)
    try:
        batches = list(formats.arrow_csv(src, mapping))
    except formats.NeedsCarefulPath:
        return None
    table = pa.concat_tables([b.table for b in batches]) if batches else None
    return table, [int(x) for b in batches for x in b.lines], src.sha256.hexdigest()


# Pieces of cells: separators, quotes and line ends of every kind (inside quotes, all read alike).
PIECES = ["a", "b c", ",", '"', '""', "\n", "\r\n", "\r", " ", "é✓", "\t", "'", ";"]
# What pyarrow and Python's csv read differently, or only one of them refuses: text after a closing quote, a
# quote inside an unquoted field, a quoted field never closed, raw line ends, NUL, a field too few or many, a
# line of spaces, an empty prompt.
DEFECTS = ['"x" ', ' "x"', '"ab"c', 'ab"c', '"open', '"a""', '"""', "p\rq", "p\nq", "x\x00y", '"x\x00y"', ""]


def _cell(rng: random.Random, empty: bool) -> str:
    text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0 if empty else 1, 3)))
    if rng.random() < 0.6:  # quoted as csv.writer quotes
        return '"' + text.replace('"', '""') + '"'
    plain = text.replace('"', "").replace("\n", "").replace("\r", "").replace(",", "")
    return plain or "p"


def _fuzz_file(rng: random.Random) -> bytes:
    """A CSV file, clean about half the time, else with a defect or two somewhere."""
    header = rng.choice(
        ["row_id,prompt,response", '"row_id","prompt",response', "\ufeffrow_id,prompt,response"]
    )
    ends = ["\n", "\r\n", "\n\n", "\r\n\r\n", "\n\r\n"]
    records = [
        [rng.choice(["", f"id{i}", f'"id{i}"']), _cell(rng, False), _cell(rng, True)]
        for i in range(rng.randint(1, 9))
    ]
    seps = [rng.choice(ends) for _ in records]
    if rng.random() < 0.5:
        for _ in range(rng.randint(1, 2)):
            i, kind = rng.randrange(len(records)), rng.random()
            if kind < 0.7:
                records[i][rng.randint(1, len(records[i]) - 1)] = rng.choice(DEFECTS)
            elif kind < 0.8:
                records[i].pop()
            elif kind < 0.85:
                records[i].append("z")
            elif kind < 0.95:
                seps[i] = rng.choice(["\r", "\n \n", "\n\r\r\n"])
            else:
                records[i][1] = '""'
    text = (
        header
        + rng.choice(["\n", "\r\n"])
        + "".join(",".join(r) + e for r, e in zip(records, seps, strict=True))
    )
    if rng.random() < 0.3:
        text = text.rstrip("\r\n")
    return text.encode("utf-8")


def test_pyarrow_reads_what_the_csv_module_reads_or_leaves_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Generated files with quoting of every kind, good and bad: where `arrow_csv` takes a file, the careful
    path reads it without a problem and gives the same rows, the same line for each, and the same hash. The
    check reads a few bytes at a time, so that its blocks end at every kind of byte."""
    rng = random.Random(7)
    mapping = formats.Mapping()
    # The records as parsed, compared as they are (both paths normalise them with the same code after).
    monkeypatch.setattr(formats.ColumnarRows, "batch", lambda self, b: pa.Table.from_batches(b.to_batches()))
    taken = left = 0
    for n in range(1000):
        path = tmp_path / f"f{n}.csv"
        path.write_bytes(_fuzz_file(rng))
        monkeypatch.setattr(formats._CsvScan, "block_bytes", rng.choice([1, 2, 3, 5, 8, 13, 64, 8 << 20]))
        got = _arrow(path, mapping)
        if got is None:
            left += 1
            continue
        taken += 1
        table, lines, problems, sha = _careful(path, mapping)
        where = f"{path.name}: {path.read_bytes()!r}"
        assert problems == 0, where
        assert got[0] is not None and table is not None and got[0].equals(table), where
        assert got[1] == lines and got[2] == sha, where
    # both branches ran often
    assert taken > 300 and left > 300, (taken, left)


def test_files_the_scan_does_not_prove_alike_are_left_to_the_careful_path(tmp_path: Path) -> None:
    """Each of these is read differently by pyarrow and Python's csv, refused by one of them, or not proven
    alike by the scan (a quote inside an unquoted field, NUL, a carriage return at the very end)."""
    bad = [
        'prompt,response\n"ab"c,r\n',  # text after a closing quote
        'prompt,response\n"x" ,r\n',
        'prompt,response\n "x",r\n',  # a quote inside an unquoted field
        'prompt,response\nab"c,r\n',
        "prompt,response\np\rq,r\n",  # a carriage return outside quotes that ends no line
        "prompt,response\np,r\r",
        'prompt,response\n"open,r\n',  # a quoted field never closed
        "prompt,response\np\x00,r\n",
        "prompt,response\np,r,extra\n",  # a record with a field too many
        '"prompt\n",response\np,r\n',  # a header over two lines
    ]
    for n, text in enumerate(bad):
        path = tmp_path / f"b{n}.csv"
        path.write_bytes(text.encode())
        assert _arrow(path, formats.Mapping()) is None, text


def test_clean_files_take_pyarrow(engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain, gzip and bz2 files of multi-line, CRLF and BOM records never reach the careful path, and store
    what it stores."""
    from test_upload_columnar import _csv, _csv_rows

    careful: list[str] = []
    real = formats.read_csv

    def spy(src: formats.SourceFile, *a: object, **k: object):  # type: ignore[no-untyped-def]
        careful.append(src.name)
        return real(src, *a, **k)

    plain = _csv(tmp_path / "rows.csv", _csv_rows(), crlf=True, bom=True)
    packed = {
        "rows.csv.gz": gzip.compress(plain.read_bytes()),
        "rows.csv.bz2": bz2.compress(plain.read_bytes()),
    }
    for name, data in packed.items():
        (tmp_path / name).write_bytes(data)
    stored = []
    with monkeypatch.context() as m:
        m.setattr(formats, "read_csv", spy)
        for i, name in enumerate(["rows.csv", *packed]):
            res = engine.datasets.upload(f"fast{i}", tmp_path / name)
            assert res.rows_added == 18
            stored.append(_stored(engine, f"fast{i}"))
        # the careful path's reader is opened with each source, and only iterated after a fall back
        assert all(careful)
    with monkeypatch.context() as m:
        m.setattr(formats, "arrow_csv", _no_arrow)
        engine.datasets.upload("careful", plain)
    assert stored[0] == stored[1] == stored[2] == _stored(engine, "careful")


def _no_arrow(*a: object, **k: object):  # type: ignore[no-untyped-def]
    raise formats.NeedsCarefulPath("turned off in this test")
    yield


def test_the_careful_path_is_not_read_when_pyarrow_reads_the_file(
    engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_upload_columnar import _csv, _csv_rows

    path = _csv(tmp_path / "rows.csv", _csv_rows())
    monkeypatch.setattr(formats, "_csv_record", _fail)
    monkeypatch.setattr(
        formats.csv, "reader", _fail
    )  # the header is read by the csv module: not in this test
    with pytest.raises(AssertionError, match="careful path"):
        engine.datasets.upload("x", path)


def _fail(*a: object, **k: object) -> None:
    raise AssertionError("the careful path was used")


def test_a_field_over_128_kb_is_read_by_both_paths(
    engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python's csv module refuses fields over 131,072 characters unless told otherwise; a long prompt is
    not malformed CSV."""
    long = "word " * 60_000  # 300 KB
    path = tmp_path / "long.csv"
    path.write_text(f'prompt,response\n"{long}",short\nsecond,"{long}"\n', encoding="utf-8")
    fast, per_row = _both(engine, monkeypatch, path, "long")
    assert fast == per_row and len(fast) == 2
    with monkeypatch.context() as m:
        m.setattr(formats, "arrow_csv", _no_arrow)
        res = engine.datasets.upload("careful", path)
    assert res.rows_added == 2
    assert engine.datasets.rows("careful").rows[0].prompt == long


def test_a_repeated_id_after_a_multi_line_record_is_named_by_its_line(
    engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "dup.csv"
    path.write_bytes(b'row_id,prompt,response\na,"one\r\ntwo\nthree",r\n\nb,p,"x\ny"\r\na,p,r\n')
    messages = []
    for off in (False, True):
        with monkeypatch.context() as m:
            if off:
                m.setattr(formats, "arrow_csv", _no_arrow)
            with pytest.raises(InvalidInput) as e:
                engine.datasets.upload("dup", path)
        messages.append(str(e.value))
    assert messages[0] == messages[1]
    assert "dup.csv, line 8" in messages[0] and "line 2" in messages[0], messages[0]


def test_a_typed_key_column_is_refused_at_the_header_unless_left_out(engine, tmp_path: Path) -> None:
    """CSV cells are text: a `judge_score` or `tags` column could never become that metadata key, so the
    header is refused (naming line 1) before a record is read, unless metadata_fields leaves it out."""
    path = tmp_path / "typed.csv"
    path.write_text("prompt,response,tags,topic\np,r,urgent,cards\nq,s,,cards\n", encoding="utf-8")
    for on_error in ("raise", "skip"):
        with pytest.raises(
            InvalidInput, match=r"typed\.csv, line 1: column 'tags' would become metadata\.tags"
        ):
            engine.datasets.upload("typed", path, on_error=on_error)
    res = engine.datasets.upload("typed", path, metadata_fields=["topic"])
    assert res.rows_added == 2
    assert [r.metadata for r in engine.datasets.rows("typed").rows] == [{"topic": "cards"}] * 2


def test_a_quoted_header_after_a_byte_order_mark(
    engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What pandas writes with encoding="utf-8-sig" and quoting=csv.QUOTE_ALL: the mark is not part of the
    first field, so the quotes after it open that field (both paths)."""
    path = tmp_path / "bom.csv"
    path.write_bytes(b'\xef\xbb\xbf"row_id","prompt","response"\r\n"a","p","r"\r\n"b","q, and more","s"\r\n')
    fast, per_row = _both(engine, monkeypatch, path, "bom")
    with monkeypatch.context() as m:
        m.setattr(formats, "arrow_csv", _no_arrow)
        engine.datasets.upload("careful", path)
    assert fast == per_row == _stored(engine, "careful")
    assert [(r.row_id, r.prompt) for r in engine.datasets.rows("bom-fast").rows] == [
        ("a", "p"),
        ("b", "q, and more"),
    ]
