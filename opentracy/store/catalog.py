"""The catalog database: engine, sessions and migrations (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

import threading
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
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
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


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    # Checkpoint the WAL every ~40 MB instead of every 4 MB: fewer fsyncs under sustained writes (trace
    # ingest measured ~25% faster); read through a memory map of up to 256 MB.
    cur.execute("PRAGMA wal_autocheckpoint=10000")
    cur.execute("PRAGMA mmap_size=268435456")
    cur.close()
