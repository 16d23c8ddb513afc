"""Versioning semantics: one active version, writes only there, freeze, new_version, diff, integrity."""

from __future__ import annotations

import os
from typing import Any

import pytest
from conftest import in_threads, segment_files, spec_rows

from opentracy.errors import Conflict, IntegrityError, InvalidInput, NotFound


@pytest.fixture
def tickets(engine, write_jsonl):
    engine.datasets.upload("tickets", write_jsonl(spec_rows(300)))
    return engine.datasets


@pytest.fixture
def other(settings):
    """A second engine on the same store: another process, in effect."""
    from opentracy.engine import Engine

    e = Engine(settings)
    yield e
    e.close()


def test_create_empty_dataset_has_active_v1(engine):
    info = engine.datasets.create("empty", "nothing yet")
    assert info.versions == 1 and info.latest.label == "empty-v1" and info.latest.status == "active"
    assert info.latest.row_count == 0
    with pytest.raises(Conflict, match="already exists"):
        engine.datasets.create("empty")


def test_add_edit_delete_in_active_version(tickets):
    v = tickets.add_rows(
        "tickets", [{"prompt": "new one", "response": "billing", "metadata": {"tags": ["x"]}}]
    )
    assert v.row_count == 301
    new = tickets.rows("tickets", limit=1000, q="new one").rows
    assert len(new) == 1 and new[0].row_id.startswith("r_")
    row = tickets.update_row("tickets", "r_0000005", response="technical", metadata={"tags": ["reviewed"]})
    assert row.response == "technical" and row.prompt.endswith("question 5")
    got = tickets.get_row("tickets", "r_0000005")
    assert got.response == "technical" and got.metadata == {"tags": ["reviewed"]}
    # an edit keeps the row's position
    ids = [r.row_id for r in tickets.rows("tickets", limit=10).rows]
    assert ids[5] == "r_0000005"
    v = tickets.delete_rows("tickets", ["r_0000001", "r_0000002"])
    assert v.row_count == 299
    with pytest.raises(NotFound):
        tickets.get_row("tickets", "r_0000001")
    # bulk edit
    out = tickets.update_rows(
        "tickets", [{"row_id": "r_0000010", "response": "a"}, {"row_id": "r_0000011", "response": "b"}]
    )
    assert [r.response for r in out] == ["a", "b"]


def test_row_writes_refuse_fields_they_would_drop(tickets):
    # An unknown field used to vanish without a word: an add kept the row without it, and an update with a
    # misspelled field left the row as it was and reported success.
    before = tickets.version("tickets")
    with pytest.raises(InvalidInput) as e:
        tickets.add_rows(
            "tickets",
            [{"prompt": "p", "response": "r"}, {"prompt": "p", "response": "r", "source": "crm"}],
        )
    assert str(e.value) == (
        "row 2: unknown field 'source': a row has row_id, prompt, response, metadata "
        "(put your own fields under metadata)"
    )
    with pytest.raises(InvalidInput, match=r"^row 2: unknown field 'respone'"):
        tickets.update_rows(
            "tickets", [{"row_id": "r_0000001", "response": "a"}, {"row_id": "r_0000002", "respone": "b"}]
        )
    with pytest.raises(InvalidInput, match="nothing to change in row 'r_0000003'"):
        tickets.update_row("tickets", "r_0000003")
    with pytest.raises(InvalidInput, match=r"^row 1: field 'response': Input should be a valid string$"):
        tickets.add_rows("tickets", [{"prompt": "p", "response": 3}])
    with pytest.raises(InvalidInput, match=r"^row 1: missing response$"):
        tickets.add_rows("tickets", [{"prompt": "p"}])
    after = tickets.version("tickets")
    assert (after.row_count, after.content_hash) == (before.row_count, before.content_hash)
    assert tickets.get_row("tickets", "r_0000001").response == spec_rows(2)[1]["response"]


def test_write_errors(tickets):
    with pytest.raises(Conflict, match="already in the version"):
        tickets.add_rows("tickets", [{"row_id": "r_0000003", "prompt": "p", "response": "r"}])
    with pytest.raises(InvalidInput, match="appears twice"):
        tickets.add_rows(
            "tickets",
            [
                {"row_id": "a", "prompt": "p", "response": "r"},
                {"row_id": "a", "prompt": "p", "response": "r"},
            ],
        )
    with pytest.raises(NotFound, match="nothing was deleted"):
        tickets.delete_rows("tickets", ["r_0000004", "no-such-row"])
    assert tickets.get_row("tickets", "r_0000004")
    with pytest.raises(NotFound):
        tickets.update_row("tickets", "no-such-row", response="x")
    with pytest.raises(InvalidInput, match="row 1"):
        tickets.add_rows("tickets", [{"prompt": 3, "response": "r"}])
    with pytest.raises(InvalidInput, match="judge_score"):
        tickets.add_rows("tickets", [{"prompt": "p", "response": "r", "metadata": {"judge_score": "high"}}])
    assert tickets.version("tickets").row_count == 300


def test_frozen_version_refuses_every_write(tickets):
    tickets.freeze("tickets")
    for write in (
        lambda: tickets.add_rows("tickets", [{"prompt": "p", "response": "r"}], 1),
        lambda: tickets.update_row("tickets", "r_0000001", response="x", version=1),
        lambda: tickets.delete_rows("tickets", ["r_0000001"], 1),
        lambda: tickets.add_rows("tickets", [{"prompt": "p", "response": "r"}]),  # latest is frozen
    ):
        with pytest.raises(Conflict) as e:
            write()
        assert "tickets-v1 is frozen" in e.value.message and "new-version" in e.value.message
    with pytest.raises(Conflict, match="already frozen"):
        tickets.freeze("tickets", 1)
    assert tickets.version("tickets", 1).row_count == 300


def test_new_version_shares_segments_and_one_active(engine, tickets):
    v1 = tickets.freeze("tickets")
    files_before = segment_files(engine)
    v2 = tickets.new_version("tickets")
    assert v2.label == "tickets-v2" and v2.status == "active" and v2.parent == "tickets-v1"
    assert v2.row_count == v1.row_count
    assert segment_files(engine) == files_before  # no row was copied
    with pytest.raises(Conflict, match="at most one active version"):
        tickets.new_version("tickets")
    tickets.update_row("tickets", "r_0000000", response="edited")
    assert tickets.get_row("tickets", "r_0000000", 1).response == "billing"  # the parent is untouched
    assert tickets.get_row("tickets", "r_0000000", 2).response == "edited"
    assert any(
        p["kind"] == "new_version" and p["parent"] == "tickets-v1"
        for p in tickets.version("tickets", 2).provenance
    )


def test_freeze_compacts_and_hash_is_content_identity(engine, write_jsonl):
    rows = spec_rows(220)
    engine.datasets.upload("a", write_jsonl(rows, "a.jsonl"))
    engine.datasets.upload("b", write_jsonl(rows[:100], "b1.jsonl"))
    engine.datasets.upload("b", write_jsonl(rows[100:], "b2.jsonl"))
    engine.datasets.update_row("b", "r_0000007", response="tmp")
    engine.datasets.update_row("b", "r_0000007", response=rows[7]["response"])
    assert engine.datasets.version("b").segments == 4
    va = engine.datasets.freeze("a")
    vb = engine.datasets.freeze("b")
    assert vb.segments == 1  # compacted
    assert va.content_hash == vb.content_hash  # same rows, same order -> same hash
    assert va.ref.startswith("a-v1@") and va.ref.split("@")[1] == va.content_hash.split(":")[1][:12]
    engine.datasets.new_version("b")
    engine.datasets.update_row("b", "r_0000008", response="different")
    assert engine.datasets.freeze("b").content_hash != va.content_hash


def test_diff_counts_and_ids(tickets):
    tickets.freeze("tickets")
    tickets.new_version("tickets")
    tickets.update_rows("tickets", [{"row_id": f"r_{i:07d}", "response": "changed"} for i in range(10, 20)])
    tickets.delete_rows("tickets", ["r_0000001", "r_0000002", "r_0000003"])
    tickets.add_rows("tickets", [{"row_id": f"new-{i}", "prompt": "p", "response": "r"} for i in range(5)])
    d = tickets.diff("tickets", 1, 2)
    assert (d.added, d.removed, d.changed, d.unchanged) == (5, 3, 10, 287)
    assert d.added_ids == [f"new-{i}" for i in range(5)]
    assert d.removed_ids == ["r_0000001", "r_0000002", "r_0000003"]
    assert d.changed_ids == [f"r_{i:07d}" for i in range(10, 20)]
    assert tickets.diff("tickets", None, 2).changed == 10  # default base: the parent
    small = tickets.diff("tickets", 1, 2, limit=2)
    assert small.truncated and len(small.changed_ids) == 2 and small.changed == 10
    same = tickets.diff("tickets", 1, 1)
    assert (same.added, same.removed, same.changed) == (0, 0, 0)


def test_setting_a_row_back_is_not_a_change(tickets):
    tickets.freeze("tickets")
    tickets.new_version("tickets")
    original = tickets.get_row("tickets", "r_0000009")
    tickets.update_row("tickets", "r_0000009", response="other")
    tickets.update_row("tickets", "r_0000009", response=original.response, metadata=original.metadata)
    assert tickets.diff("tickets", 1, 2).changed == 0


def test_tampered_segment_is_refused(engine, tickets):
    tickets.freeze("tickets")
    (seg,) = segment_files(engine)
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    os.utime(seg, ns=(seg.stat().st_atime_ns, seg.stat().st_mtime_ns + 1_000_000))
    for read in (
        lambda: tickets.rows("tickets", 1),
        lambda: list(tickets.iter_rows("tickets", 1)),
        lambda: tickets.diff("tickets", 1, 1),
        lambda: tickets.new_version("tickets") and tickets.freeze("tickets"),
    ):
        with pytest.raises(IntegrityError, match="altered or corrupted"):
            read()


def test_tamper_detected_even_with_same_size_and_mtime(engine, tickets):
    """A file replaced with different bytes but the same size and mtime is still caught by a fresh process."""
    tickets.freeze("tickets")
    (seg,) = segment_files(engine)
    st = seg.stat()
    data = bytearray(seg.read_bytes())
    data[100] ^= 0x01
    seg.write_bytes(bytes(data))
    os.utime(seg, ns=(st.st_atime_ns, st.st_mtime_ns))
    from opentracy.store.artifacts import ArtifactStore

    fresh = ArtifactStore(engine.artifacts.url)  # a new process has no verification cache
    key = str(seg.relative_to(engine.artifacts.root))
    with pytest.raises(IntegrityError):
        fresh.verify(key)


def test_missing_segment_is_a_clear_error(engine, tickets):
    (seg,) = segment_files(engine)
    seg.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        tickets.rows("tickets")


def test_delete_dataset_needs_its_name(engine, tickets):
    with pytest.raises(InvalidInput, match="confirm"):
        tickets.delete("tickets", None)
    with pytest.raises(InvalidInput):
        tickets.delete("tickets", "other")
    assert tickets.get("tickets")
    tickets.freeze("tickets")
    tickets.new_version("tickets")
    tickets.delete("tickets", "tickets")
    with pytest.raises(NotFound):
        tickets.get("tickets")
    assert segment_files(engine) == []


def test_delete_keeps_segments_other_datasets_use(engine, write_jsonl):
    path = write_jsonl(spec_rows(10))
    engine.datasets.upload("one", path)
    engine.datasets.upload("two", path)  # same bytes, same generated ids? no: ids are salted per dataset
    before = segment_files(engine)
    engine.datasets.delete("one", "one")
    assert len(engine.datasets.rows("two").rows) == 10
    assert len(segment_files(engine)) == len(before) - 1 or len(before) == 1


def test_version_refs(tickets):
    tickets.freeze("tickets")
    tickets.new_version("tickets")
    assert tickets.version("tickets", "tickets-v1").number == 1
    assert tickets.version("tickets", "v2").number == 2
    assert tickets.version("tickets", 2).number == 2
    assert tickets.version("tickets", "active").number == 2
    assert tickets.version("tickets").number == 2  # latest
    with pytest.raises(InvalidInput):
        tickets.version("tickets", "two")
    with pytest.raises(NotFound, match="tickets-v9"):
        tickets.version("tickets", 9)


def test_warnings(engine, write_jsonl):
    engine.datasets.upload("few", write_jsonl(spec_rows(50), "few.jsonl"))
    codes = {w.code for w in engine.datasets.version("few").warnings}
    assert codes == {"too_few_rows", "not_curated"}
    mixed = spec_rows(250, cluster_id=12) + [
        dict(r, row_id=f"x{i}", metadata={"cluster_id": 34}) for i, r in enumerate(spec_rows(5))
    ]
    engine.datasets.upload("mixed", write_jsonl(mixed, "mixed.jsonl"))
    w = {w.code: w.message for w in engine.datasets.version("mixed").warnings}
    assert set(w) == {"mixed_clusters", "not_curated"}
    assert "2 clusters" in w["mixed_clusters"] and "one coherent task" in w["mixed_clusters"]
    # deleting the odd cluster's rows clears the warning
    engine.datasets.delete_rows("mixed", [f"x{i}" for i in range(5)])
    assert "mixed_clusters" not in {w.code for w in engine.datasets.version("mixed").warnings}
    # a curation step in the provenance clears "not curated"
    v = engine.datasets.add_provenance("mixed", {"kind": "curation", "config": {"threshold": 0.7}})
    assert {w.code for w in v.warnings} == set()
    v = engine.datasets.add_provenance("mixed", {"kind": "curation", "judge_skipped": True})
    assert {w.code for w in v.warnings} == {"curated_without_judge"}


def test_many_small_writes_are_compacted(engine, tickets, monkeypatch):
    import opentracy.datasets._core as svc

    monkeypatch.setattr(svc, "MAX_SEGMENTS_BEFORE_COMPACTION", 5)
    for i in range(7):
        tickets.update_row("tickets", f"r_{i:07d}", response=f"v{i}")
    v = tickets.version("tickets")
    assert v.segments <= 5
    assert [tickets.get_row("tickets", f"r_{i:07d}").response for i in range(7)] == [
        f"v{i}" for i in range(7)
    ]
    assert v.row_count == 300


def test_listing_pagination_and_filters(engine, tickets):
    for name in ("b-set", "a-set", "c-set"):
        engine.datasets.create(name)
    items, total = engine.datasets.list(limit=2, offset=0)
    assert total == 4 and [d.name for d in items] == ["a-set", "b-set"]
    items, _ = engine.datasets.list(limit=2, offset=2)
    assert [d.name for d in items] == ["c-set", "tickets"]
    seen, cursor = [], None
    while True:
        page = tickets.rows("tickets", limit=64, cursor=cursor)
        seen += [r.row_id for r in page.rows]
        cursor = page.next_cursor
        if not cursor:
            break
    assert seen == [f"r_{i:07d}" for i in range(300)]
    tickets.update_row("tickets", "r_0000004", metadata={"tags": ["reviewed", "x"], "cluster_id": 7})
    assert [r.row_id for r in tickets.rows("tickets", tags=["reviewed"]).rows] == ["r_0000004"]
    assert [r.row_id for r in tickets.rows("tickets", where={"cluster_id": "7"}).rows] == ["r_0000004"]
    assert tickets.rows("tickets", q="QUESTION 29").total == 11  # 29, 290..299
    assert tickets.rows("tickets", q="100%").total == 0  # % is literal, not a wildcard
    with pytest.raises(InvalidInput):
        tickets.rows("tickets", where={"bad key;": "1"})


def test_concurrent_row_writes_all_land(engine, tickets):
    # 40 threads each editing a row used to see ~2 in 3 fail with "changed while this write was in progress"
    ids = [f"r_{i:07d}" for i in range(40)]
    in_threads(lambda i: tickets.update_row("tickets", ids[i], response=f"edit {i}"), 40)
    assert [tickets.get_row("tickets", r).response for r in ids] == [f"edit {i}" for i in range(40)]


def _race_once(monkeypatch, race) -> list[int]:
    """Run `race()` (a write through another engine: another process, in effect) the first time a row write
    has written its segment and before it commits; returns how many times the write wrote a segment."""
    import opentracy.datasets.rowops as rowops

    real = rowops.write_segment
    calls: list[int] = []
    racing: list[bool] = []

    def hooked(*args: Any, **kwargs: Any) -> Any:
        seg = real(*args, **kwargs)
        if racing:  # the other engine's own write
            return seg
        calls.append(1)
        if len(calls) == 1:
            racing.append(True)
            try:
                race()
            finally:
                racing.clear()
        return seg

    monkeypatch.setattr(rowops, "write_segment", hooked)
    return calls


def test_a_row_write_overtaken_by_another_process_is_done_again(engine, tickets, monkeypatch, other):
    calls = _race_once(
        monkeypatch,
        lambda: other.datasets.add_rows("tickets", [{"row_id": "theirs", "prompt": "p", "response": "r"}]),
    )
    before = set(segment_files(engine))
    tickets.add_rows("tickets", [{"row_id": "mine", "prompt": "p", "response": "r"}])
    assert len(calls) == 2  # written, found stale, written again
    assert tickets.get_row("tickets", "mine") and tickets.get_row("tickets", "theirs")
    assert tickets.version("tickets").row_count == 302
    assert len(set(segment_files(engine)) - before) == 2  # theirs and mine: the stale one is gone

    # an edit overtaken by the deletion of its row is checked again, and refused: no row comes back
    calls = _race_once(monkeypatch, lambda: other.datasets.delete_rows("tickets", ["r_0000007"]))
    with pytest.raises(NotFound, match="r_0000007"):
        tickets.update_row("tickets", "r_0000007", response="late")
    with pytest.raises(NotFound):
        tickets.get_row("tickets", "r_0000007")
    assert tickets.version("tickets").row_count == 301


def _during_upload(monkeypatch, engine, write) -> None:
    """Run `write()` (through another engine: another process, in effect) once an upload has written and
    checked its rows, just before it commits."""
    real = type(engine.datasets)._check_ids

    def hooked(self: Any, *args: Any, **kwargs: Any) -> Any:
        drop = real(self, *args, **kwargs)
        write()
        return drop

    monkeypatch.setattr(type(engine.datasets), "_check_ids", hooked)


def test_an_upload_lands_when_other_rows_change_while_it_runs(
    engine, tickets, monkeypatch, write_jsonl, other
):
    # It used to fail with "changed while this upload ran; upload again" after doing all its work.
    _during_upload(
        monkeypatch,
        engine,
        lambda: (
            other.datasets.update_row("tickets", "r_0000001", response="edited meanwhile"),
            other.datasets.delete_rows("tickets", ["r_0000002"]),
            other.datasets.add_rows("tickets", [{"row_id": "meanwhile", "prompt": "p", "response": "r"}]),
        ),
    )
    rows = [{"row_id": f"up_{i}", "prompt": f"p{i}", "response": "r"} for i in range(50)]
    res = tickets.upload("tickets", write_jsonl(rows, "more.jsonl"))
    assert res.rows_added == 50
    v = tickets.version("tickets")
    assert v.row_count == 300 - 1 + 1 + 50
    assert tickets.get_row("tickets", "r_0000001").response == "edited meanwhile"
    assert tickets.get_row("tickets", "up_49") and tickets.get_row("tickets", "meanwhile")
    with pytest.raises(NotFound):
        tickets.get_row("tickets", "r_0000002")


def test_an_upload_clashing_with_a_row_added_while_it_runs_changes_nothing(
    engine, tickets, monkeypatch, write_jsonl, other
):
    _during_upload(
        monkeypatch,
        engine,
        lambda: other.datasets.add_rows("tickets", [{"row_id": "up_7", "prompt": "theirs", "response": "r"}]),
    )
    before = set(segment_files(engine))
    rows = [{"row_id": f"up_{i}", "prompt": f"p{i}", "response": "r"} for i in range(50)]
    with pytest.raises(Conflict, match=r"row ids 'up_7' were added to tickets-v1 while this upload ran"):
        tickets.upload("tickets", write_jsonl(rows, "more.jsonl"))
    assert tickets.version("tickets").row_count == 301
    assert tickets.get_row("tickets", "up_7").prompt == "theirs"
    assert len(set(segment_files(engine)) - before) == 1  # theirs; the upload's segment is gone


def test_an_upload_into_a_version_frozen_while_it_runs_starts_the_next_one(
    engine, tickets, monkeypatch, write_jsonl, other
):
    _during_upload(monkeypatch, engine, lambda: other.datasets.freeze("tickets"))
    rows = [{"row_id": f"up_{i}", "prompt": f"p{i}", "response": "r"} for i in range(10)]
    res = tickets.upload("tickets", write_jsonl(rows, "more.jsonl"))
    assert (res.version.label, res.version.status, res.version.parent) == (
        "tickets-v2",
        "active",
        "tickets-v1",
    )
    v1 = tickets.version("tickets", 1)
    assert v1.status == "frozen" and v1.row_count == 300
    assert tickets.version("tickets", 2).row_count == 310


def _once(write):
    """`write` for `_during_upload` when it uploads too: run it for the first upload's check only."""
    done: list[bool] = []

    def run() -> None:
        if not done:
            done.append(True)
            write()

    return run


def test_parallel_uploads_into_a_new_dataset_all_land(engine, monkeypatch, write_jsonl, other):
    # Shards uploaded at once into a name that does not exist yet: the upload that commits second used to
    # fail with "a dataset named 'shards' was created while this upload ran; upload again".
    theirs = write_jsonl([{"prompt": f"theirs {i}", "response": "r"} for i in range(40)], "a.jsonl")
    _during_upload(monkeypatch, engine, _once(lambda: other.datasets.upload("shards", theirs)))
    mine = write_jsonl([{"prompt": f"mine {i}", "response": "r"} for i in range(60)], "b.jsonl")
    res = engine.datasets.upload("shards", mine)
    assert res.rows_added == 60 and res.version.label == "shards-v1" and res.version.row_count == 100
    rows = list(engine.datasets.iter_rows("shards"))
    # theirs first (committed first), then mine, each in file order; every generated id distinct
    assert [r.prompt for r in rows] == [f"theirs {i}" for i in range(40)] + [f"mine {i}" for i in range(60)]
    assert len({r.row_id for r in rows}) == 100
    v = engine.datasets.version("shards")
    assert [p["file"] for p in v.provenance] == ["a.jsonl", "b.jsonl"]
    assert len(segment_files(engine)) == 2  # theirs and our renumbered one: the first of ours is gone
    frozen = engine.datasets.freeze("shards")
    assert frozen.row_count == 100
    assert [r.prompt for r in engine.datasets.iter_rows("shards")][38:42] == [
        "theirs 38", "theirs 39", "mine 0", "mine 1",
    ]  # fmt: skip


def test_shards_uploaded_from_threads_into_a_new_dataset_all_land(engine, write_jsonl):
    files = [
        write_jsonl([{"prompt": f"shard {k} row {i}", "response": "r"} for i in range(50)], f"shard{k}.jsonl")
        for k in range(4)
    ]
    results = in_threads(lambda k: engine.datasets.upload("shards", files[k]), 4)
    assert sorted(r.rows_added for r in results) == [50] * 4
    v = engine.datasets.version("shards")
    assert (v.label, v.row_count, len(v.provenance)) == ("shards-v1", 200, 4)
    rows = list(engine.datasets.iter_rows("shards"))
    assert len(rows) == 200 and len({r.row_id for r in rows}) == 200
    for k in range(4):  # each shard's rows together, in file order
        mine = [r.prompt for r in rows if r.prompt.startswith(f"shard {k} ")]
        assert mine == [f"shard {k} row {i}" for i in range(50)]


def test_parallel_uploads_into_a_new_dataset_with_one_row_id_refuse_the_second(
    engine, monkeypatch, write_jsonl, other
):
    theirs = write_jsonl(
        [{"row_id": f"t{i}", "prompt": "theirs", "response": "r"} for i in range(5)], "a.jsonl"
    )
    _during_upload(monkeypatch, engine, _once(lambda: other.datasets.upload("shards", theirs)))
    mine = write_jsonl([{"row_id": f"m{i}", "prompt": "mine", "response": "r"} for i in range(5)]
                       + [{"row_id": "t3", "prompt": "mine", "response": "r"}], "b.jsonl")  # fmt: skip
    with pytest.raises(Conflict, match=r"row ids 't3' were added to shards-v1 while this upload ran"):
        engine.datasets.upload("shards", mine)
    assert engine.datasets.version("shards").row_count == 5
    assert engine.datasets.get_row("shards", "t3").prompt == "theirs"
    assert len(segment_files(engine)) == 1  # theirs; ours is gone


@pytest.mark.parametrize("their_row", ["v2 row", "up_3"])
def test_an_upload_into_a_version_started_while_it_runs(
    engine, tickets, monkeypatch, write_jsonl, their_row, other
):
    # It used to fail with "dataset 'tickets' changed while this upload ran; upload again". Now it lands in
    # the new version, unless that version gained a row with one of its ids meanwhile.
    _during_upload(
        monkeypatch,
        engine,
        lambda: (
            other.datasets.freeze("tickets"),
            other.datasets.new_version("tickets"),
            other.datasets.add_rows("tickets", [{"row_id": their_row, "prompt": "theirs", "response": "r"}]),
        ),
    )
    more = write_jsonl(
        [{"row_id": f"up_{i}", "prompt": f"p{i}", "response": "r"} for i in range(10)], "m.jsonl"
    )
    if their_row == "up_3":
        with pytest.raises(Conflict, match=r"row ids 'up_3' were added to tickets-v2 while this upload ran"):
            tickets.upload("tickets", more)
        assert tickets.version("tickets").row_count == 301
    else:
        res = tickets.upload("tickets", more)
        assert (res.version.label, res.version.row_count) == ("tickets-v2", 311)
        assert tickets.get_row("tickets", "up_9")
    assert tickets.get_row("tickets", their_row).prompt == "theirs"
    assert tickets.version("tickets", 1).row_count == 300
    assert [v.label for v in tickets.versions("tickets")] == ["tickets-v1", "tickets-v2"]


def test_a_filtered_total_is_kept_for_later_pages_and_follows_every_write(tickets):
    first = tickets.rows("tickets", limit=10, q="question 1")
    assert first.total == 111  # question 1, 10-19, 100-199
    again = tickets.rows("tickets", limit=10, q="question 1", cursor=first.next_cursor)
    assert again.total == 111
    tickets.add_rows("tickets", [{"prompt": "question 1 again", "response": "billing"}])
    assert tickets.rows("tickets", limit=10, q="question 1", cursor=first.next_cursor).total == 112
    tickets.delete_rows("tickets", ["r_0000001", "r_0000010"])
    assert tickets.rows("tickets", limit=10, q="question 1").total == 110
    tickets.update_row("tickets", "r_0000011", prompt="no longer matches")
    assert tickets.rows("tickets", limit=10, q="question 1").total == 109
    assert tickets.rows("tickets", limit=10, q="question 2").total == 111  # another filter, its own count


def test_an_edit_undone_and_a_row_deleted_twice_read_as_the_last_write_says(engine, tickets):
    # Editing a row to X, then Y, then X again wrote the third delta with the first one's bytes: one file
    # under one content address, listed twice in the manifest, where it counted at its first place. The row
    # then read Y, and froze as Y. A row deleted, added back and deleted again came back the same way.
    for response in ("x", "y", "x"):
        tickets.update_row("tickets", "r_0000001", response=response)
    tickets.delete_rows("tickets", ["r_0000002"])
    tickets.add_rows("tickets", [{"row_id": "r_0000002", "prompt": "back", "response": "r"}])
    tickets.delete_rows("tickets", ["r_0000002"])
    assert tickets.get_row("tickets", "r_0000001").response == "x"
    with pytest.raises(NotFound):
        tickets.get_row("tickets", "r_0000002")
    assert len(list(tickets.iter_rows("tickets"))) == tickets.version("tickets").row_count == 299
    frozen = tickets.freeze("tickets")
    assert frozen.row_count == 299 and tickets.get_row("tickets", "r_0000001").response == "x"


def test_a_manifest_that_lists_a_file_twice_reads_it_at_its_last_place(engine, tickets):
    # Stores written before deltas got a token of their own can hold such manifests.
    from opentracy.store.segments import Manifest, duck, version_sql
    from opentracy.store.tables import VersionRecord

    for response in ("x", "y"):
        tickets.update_row("tickets", "r_0000001", response=response)
    with engine.catalog.session() as s:
        v = s.query(VersionRecord).one()
        base, dx, dy = v.manifest
    con = duck()
    try:
        sql = version_sql(engine.artifacts, Manifest.of([base, dx, dy, dx]), verify=True)
        got = con.sql(f"SELECT response, count(*) OVER () FROM ({sql}) WHERE row_id = 'r_0000001'").fetchall()
        assert got == [("x", 1)]
        assert con.sql(f"SELECT count(*) FROM ({sql})").fetchall() == [(300,)]
    finally:
        con.close()
