"""Shared fixtures.

Every test that takes `engine`, `server` or `client` runs twice: on SQLite and on PostgreSQL. PostgreSQL
is the local server at 127.0.0.1:5432 (trust auth, database `test`; override with
OPENTRACY_TEST_PG_URL). Each test gets a schema of its own, dropped afterwards. If PostgreSQL cannot be
reached, those tests fail with a message saying so, unless OPENTRACY_TEST_SKIP_PG=1 is set, in which case
they are skipped and the run ends with a loud warning.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from opentracy.config import Settings
from opentracy.engine import Engine

T = TypeVar("T")

PG_URL = os.environ.get("OPENTRACY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SKIP_PG = os.environ.get("OPENTRACY_TEST_SKIP_PG") == "1"
_pg_skipped: list[str] = []


def _pg_reachable() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_URL.replace("+psycopg", ""), connect_timeout=3) as conn:
            conn.execute("select 1")
        return None
    except Exception as e:  # any failure means: not usable
        return f"{type(e).__name__}: {e}"


@pytest.fixture(autouse=True)
def duckdb_jsonl_for_every_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spec JSONL uploads go through the DuckDB decoder whatever their size (in use, files under 8 MB are
    decoded in Python): every upload test then runs it, and, on bad input, its fall-back to the careful
    path. tests/test_upload_paths.py checks that both decoders store the same rows."""
    from opentracy.datasets import formats

    monkeypatch.setattr(formats, "FAST_JSONL_MIN_BYTES", 0)


@pytest.fixture(scope="session")
def pg_problem() -> str | None:
    return _pg_reachable()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, pg_problem: str | None) -> Iterator[str]:
    """A fresh, empty catalog database URL: a SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    if pg_problem:
        if SKIP_PG:
            _pg_skipped.append(request.node.nodeid)
            pytest.skip("PostgreSQL unreachable and OPENTRACY_TEST_SKIP_PG=1")
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_URL} ({pg_problem}). The suite runs against PostgreSQL too: "
            "start it (`.ci/run` does), or set OPENTRACY_TEST_SKIP_PG=1 to skip those tests knowingly.",
            pytrace=False,
        )
    import psycopg

    schema = f"t_{secrets.token_hex(6)}"
    raw = PG_URL.replace("+psycopg", "")
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings.from_env(home=tmp_path / "home", database_url=db_url, ingest_chunk_bytes=64 << 10)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = Engine(settings).start()
    yield eng
    eng.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """A real uvicorn server on a random localhost port, in a thread of this process."""

    def __init__(self, engine: Engine) -> None:
        import uvicorn

        from opentracy.server import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(engine), host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def server(engine: Engine) -> Iterator[ServerThread]:
    with ServerThread(engine) as s:
        yield s


@pytest.fixture
def client(server: ServerThread):  # type: ignore[no-untyped-def]
    from opentracy.client import Distiller

    with Distiller(base_url=server.url, progress=False) as c:
        yield c


@pytest.fixture
def write_jsonl(tmp_path: Path):  # type: ignore[no-untyped-def]
    """write_jsonl(rows, name="rows.jsonl") -> Path; rows may be dicts or raw strings (written as is)."""
    import json

    def _write(rows: list, name: str = "rows.jsonl") -> Path:
        p = tmp_path / name
        with open(p, "w", encoding="utf-8") as f:
            for r in rows:
                f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
        return p

    return _write


def spec_rows(
    n: int, *, cluster_id: int | None = 34, tags: tuple[str, ...] = ("ticket_classifier",)
) -> list[dict]:
    """n rows in the spec's shape (ticket classification)."""
    labels = ["billing", "technical", "feature_request"]
    out = []
    for i in range(n):
        meta: dict = {
            "source_trace_id": f"t_{i:04x}",
            "tags": list(tags),
            "judge_score": round((i % 10) / 10, 1),
        }
        if cluster_id is not None:
            meta["cluster_id"] = cluster_id
        out.append(
            {
                "row_id": f"r_{i:07d}",
                "prompt": f"Classify this ticket into one of: billing, technical, feature_request. Ticket: question {i}",
                "response": labels[i % 3],
                "metadata": meta,
            }
        )
    return out


def in_threads(fn: Callable[[int], T], n: int) -> list[T]:
    """fn(0) .. fn(n - 1), each on its own thread, all at once; their results in order. The first error any
    of them raised is raised here, after all have ended."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(fn, range(n)))


def segment_files(engine: Engine) -> list[Path]:
    root = Path(engine.artifacts.root) / "segments"
    return sorted(root.rglob("*.parquet")) if root.exists() else []


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    if _pg_skipped:
        terminalreporter.write_sep("!", "POSTGRESQL TESTS SKIPPED", red=True, bold=True)
        terminalreporter.write_line(
            f"{len(_pg_skipped)} PostgreSQL test(s) were skipped because OPENTRACY_TEST_SKIP_PG=1 and PostgreSQL "
            f"was unreachable at {PG_URL}. This run did NOT test PostgreSQL.",
            red=True,
        )
