from conftest import segment_files, spec_rows


def test_upload_freeze_read(engine, write_jsonl):
    path = write_jsonl(spec_rows(250))
    res = engine.datasets.upload("tickets", path)
    assert res.rows_added == 250
    assert res.version.label == "tickets-v1" and res.version.status == "active"
    v = engine.datasets.freeze("tickets")
    assert v.status == "frozen" and v.content_hash.startswith("sha256:") and v.row_count == 250
    page = engine.datasets.rows("tickets", 1, limit=10)
    assert [r.row_id for r in page.rows] == [f"r_{i:07d}" for i in range(10)]
    assert page.total == 250 and page.next_cursor
    assert len(segment_files(engine)) == 1
