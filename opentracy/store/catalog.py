"""The catalog database: engine, sessions and migrations (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
_migrate_lock = threading.Lock()


def _normalise_url(url: str) -> str:
    # "postgresql://" means psycopg 3 here (psycopg2 is not a dependency).
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class Catalog:
    """Owns the SQLAlchemy engine. `session()` is a unit of work that commits or rolls back as a whole."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = _normalise_url(url)
        kwargs: dict = {"future": True}
        if self.url.startswith("sqlite"):
            path = self.url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=20)
        self.engine: Engine = create_engine(self.url, **kwargs)
        self._checkpoint_path: str | None = None
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
            path = self.url.split("///", 1)[-1]
            if path and path != ":memory:" and "mode=memory" not in path:
                self._checkpoint_path = str(Path(path).resolve())
                CHECKPOINTER.register(self._checkpoint_path)
                weakref.finalize(self, CHECKPOINTER.unregister, self._checkpoint_path)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            self.migrate()

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def migrate(self) -> None:
        """Bring the schema to the newest revision (Alembic `upgrade head`)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with _migrate_lock, self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def table_names(self) -> list[str]:
        return inspect(self.engine).get_table_names()

    @contextmanager
    def session(self) -> Iterator[Session]:
        s = self._sessions()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def dispose(self) -> None:
        self.engine.dispose()
        if self._checkpoint_path is not None:
            CHECKPOINTER.unregister(self._checkpoint_path)
            self._checkpoint_path = None


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    # The WAL is checkpointed by a background thread (`_Checkpointer`), off the committing thread's path;
    # a writer checkpoints itself only if the WAL reaches ~400 MB (the background thread is not keeping
    # up). Reads go through a memory map of up to 256 MB.
    cur.execute(f"PRAGMA wal_autocheckpoint={WAL_SAFETY_PAGES}")
    cur.execute("PRAGMA mmap_size=268435456")
    cur.close()


WAL_SAFETY_PAGES = 100_000


class _Checkpointer:
    """One daemon thread that checkpoints the WAL of every SQLite catalog open in this process.

    With SQLite's automatic checkpoints the writer that crosses the threshold copies the WAL into the
    database (and fsyncs) inside its own commit: under sustained trace ingest one batch in ~10 took 2-4x
    the median. Here a PASSIVE checkpoint (it never blocks readers or writers) runs on its own connection,
    every 0.2 s while there is work and every second otherwise; the sqlite3 module releases the GIL for it,
    so on a second core it overlaps the writes instead of stalling them (bench/traces.py)."""

    BUSY_S = 0.2
    IDLE_S = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: dict[str, int] = {}
        self._conns: dict[str, tuple[sqlite3.Connection, int]] = {}  # path → (connection, inode)
        self._thread: threading.Thread | None = None

    def register(self, path: str) -> None:
        with self._lock:
            self._paths[path] = self._paths.get(path, 0) + 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
                self._thread.start()

    def unregister(self, path: str) -> None:
        with self._lock:
            n = self._paths.get(path, 0) - 1
            if n > 0:
                self._paths[path] = n
                return
            self._paths.pop(path, None)
            held = self._conns.pop(path, None)
        if held is not None:
            self._close(held[0])

    def checkpoint(self, path: str) -> int:
        """Checkpoint `path` now (PASSIVE); the number of WAL frames copied into the database."""
        with self._lock:
            if path not in self._paths:
                return 0
            try:
                ino = os.stat(path).st_ino
            except OSError:
                return 0
            held = self._conns.get(path)
            if held is not None and held[1] != ino:  # the file was replaced (a new store at this path)
                self._close(held[0])
                held = None
            if held is None:
                held = (sqlite3.connect(path, timeout=0, check_same_thread=False, isolation_level=None), ino)
                self._conns[path] = held
            try:
                busy, log, done = held[0].execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error:
                return 0
            if log == -1:
                # Not in WAL mode as this connection sees it: it was opened while the file was still empty,
                # before the catalog switched it to WAL, and it never reads the header again. Connect afresh
                # next time, or this database would never be checkpointed.
                self._conns.pop(path, None)
                self._close(held[0])
                return 0
        return 0 if busy else int(done or 0)

    def _run(self) -> None:
        last: dict[str, int] = {}
        while True:
            with self._lock:
                paths = list(self._paths)
            last = {p: last[p] for p in paths if p in last}  # forget closed catalogs
            worked = False
            for p in paths:
                try:
                    done = self.checkpoint(p)
                except Exception:  # a catalog's file removed under us, etc.: never kill the thread
                    logging.getLogger("opentracy.store").debug("checkpoint of %s failed", p, exc_info=True)
                    continue
                worked |= done != last.get(p, 0)
                last[p] = done
            time.sleep(self.BUSY_S if worked else self.IDLE_S)

    @staticmethod
    def _close(conn: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            conn.close()


CHECKPOINTER = _Checkpointer()
