"""Settings, read from OPENTRACY_* environment variables.

OPENTRACY_HOME           data directory (default ./.opentracy)
OPENTRACY_DATABASE_URL   catalog database (default: SQLite file in the data directory)
OPENTRACY_ARTIFACTS_URL  artifact store, any fsspec URL (default: a folder in the data directory)
OPENTRACY_API_KEY        when set, every HTTP request needs it as a bearer token
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    artifacts_url: str
    api_key: str | None = None
    # Rows per decoded chunk while ingesting files; smaller means less memory and finer progress.
    ingest_chunk_bytes: int = 4 << 20
    job_workers: int = 2
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        home = Path(
            str(overrides.pop("home", None) or os.environ.get("OPENTRACY_HOME") or ".opentracy")
        ).resolve()
        db = overrides.pop("database_url", None) or os.environ.get("OPENTRACY_DATABASE_URL")
        if not db:
            db = f"sqlite:///{home / 'catalog.db'}"
        art = overrides.pop("artifacts_url", None) or os.environ.get("OPENTRACY_ARTIFACTS_URL")
        if not art:
            art = str(home / "artifacts")
        key = overrides.pop("api_key", None) or os.environ.get("OPENTRACY_API_KEY") or None
        return cls(
            home=home,
            database_url=str(db),
            artifacts_url=str(art),
            api_key=str(key) if key else None,
            ingest_chunk_bytes=int(
                overrides.pop("ingest_chunk_bytes", 0) or _int_env("OPENTRACY_INGEST_CHUNK_BYTES", 4 << 20)
            ),
            job_workers=int(overrides.pop("job_workers", 0) or _int_env("OPENTRACY_JOB_WORKERS", 2)),
        )

    @property
    def staging_dir(self) -> Path:
        return self.home / "staging"
