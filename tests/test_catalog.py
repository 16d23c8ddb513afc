"""The SQLite catalog's WAL is checkpointed by a background thread, not inside writers' commits."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from conftest import in_threads
from sqlalchemy import text

from opentracy.store.catalog import CHECKPOINTER, WAL_SAFETY_PAGES, Catalog


def _rows_in_main_file(path: Path) -> int:
    """Rows of the test table found in the database file itself, ignoring the WAL."""
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM probe").fetchone()[0]
    except sqlite3.OperationalError:  # the table itself is still only in the WAL
        return -1
    except sqlite3.DatabaseError:
        # "malformed": an immutable reader takes no lock, so it can see the file half-way through a checkpoint
        # that is copying pages into it. Read again.
        return -1
    finally:
        conn.close()


def _write_probe_rows(cat: Catalog, n: int) -> None:
    with cat.engine.begin() as c:
        c.execute(text("CREATE TABLE probe (x INTEGER)"))
        c.execute(text("INSERT INTO probe (x) VALUES " + ", ".join(f"({i})" for i in range(n))))


def _wait_for_rows_in_main_file(path: Path, n: int) -> None:
    # Far below the writer's own threshold: only the background thread can copy these pages.
    deadline = time.monotonic() + 10
    while _rows_in_main_file(path) != n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _rows_in_main_file(path) == n


def _write_through_a_new_catalog_and_wait(path: Path, n: int) -> None:
    cat = Catalog(f"sqlite:///{path}", migrate=False)
    try:
        _write_probe_rows(cat, n)
        _wait_for_rows_in_main_file(path, n)
    finally:
        cat.dispose()


def test_background_checkpoint_moves_committed_pages_into_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    cat = Catalog(f"sqlite:///{path}", migrate=False)
    try:
        with cat.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == WAL_SAFETY_PAGES
        _write_probe_rows(cat, 3)
        _wait_for_rows_in_main_file(path, 3)
    finally:
        cat.dispose()
    assert str(path.resolve()) not in CHECKPOINTER._paths and str(path.resolve()) not in CHECKPOINTER._conns


def test_a_replaced_database_file_is_checkpointed_too(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    keep = Catalog(f"sqlite:///{path}", migrate=False)  # holds the registration across the replacement
    try:
        with keep.engine.begin() as c:
            c.execute(text("CREATE TABLE old (x INTEGER)"))
        keep.engine.dispose()
        for p in tmp_path.glob("catalog.db*"):
            p.unlink()
        _write_through_a_new_catalog_and_wait(path, 1)
    finally:
        keep.dispose()


def test_a_checkpoint_connection_opened_before_the_switch_to_wal_is_replaced(tmp_path: Path) -> None:
    # sqlite3.connect creates the file empty; the catalog switches it to WAL a moment later. A checkpoint
    # connection opened in between never re-reads the header, so it must not be kept.
    path = tmp_path / "catalog.db"
    path.touch()
    key = str(path.resolve())
    CHECKPOINTER.register(key)
    try:
        CHECKPOINTER.checkpoint(key)  # connects to the database while it is not in WAL mode
        _write_through_a_new_catalog_and_wait(path, 3)
    finally:
        CHECKPOINTER.unregister(key)


def test_default_duckdb_connections_share_one_database_and_nothing_else() -> None:
    # Opening a DuckDB database costs ~12 ms (most of a page of rows); reads take cursors of one shared database.
    from opentracy.store.segments import duck

    a, b = duck(), duck()
    try:
        a.execute("CREATE TEMP TABLE t AS SELECT 1 AS x")
        assert a.execute("SELECT x FROM t").fetchall() == [(1,)]
        # temporary objects stay with their connection
        assert b.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 't'").fetchall() == [(0,)]
        # ...while the database is one: a (non-temporary) table made through one is seen through the other
        a.execute("CREATE TABLE shared_probe AS SELECT 7 AS y")
        try:
            assert b.execute("SELECT y FROM shared_probe").fetchall() == [(7,)]
        finally:
            a.execute("DROP TABLE shared_probe")
        assert (
            b.execute("SELECT current_setting('memory_limit')").fetchall()
            == a.execute("SELECT current_setting('memory_limit')").fetchall()
        )
    finally:
        a.close()
    assert b.execute("SELECT 41 + 1").fetchall() == [(42,)]  # closing one leaves the others working
    b.close()
    c = duck()
    assert c.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 't'").fetchall() == [(0,)]
    c.close()

    def work(i: int) -> None:
        con = duck()
        try:
            con.execute(f"CREATE TEMP TABLE w AS SELECT range AS v FROM range({1000 + i})")
            assert con.execute("SELECT count(*) FROM w").fetchall() == [(1000 + i,)]
        finally:
            con.close()

    in_threads(work, 8)
    # other settings still get a database of their own
    own = duck(memory_limit="256MB")
    try:
        assert own.execute("SELECT current_setting('memory_limit')").fetchall()[0][0].startswith("2")
    finally:
        own.close()
