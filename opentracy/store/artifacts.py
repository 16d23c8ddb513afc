"""Content-addressed artifact store over fsspec: a local folder by default, any fsspec URL when configured.

An artifact's key ends in the sha256 of its bytes, so a stored file can always be checked against its
name. `verify()` re-hashes a file (cached by size and mtime) and refuses one that was altered.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import fsspec

from opentracy.errors import IntegrityError, NotFound

_BUF = 8 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_BUF):
            h.update(chunk)
    return h.hexdigest()


class HashingFile:
    """A binary file open for writing that sha256-hashes every byte written: a sink for pyarrow's Parquet
    writer, which only calls write() (whole column chunks: few calls, and hashlib lets go of the GIL on large
    ones) and reads `closed`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._f = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._h = hashlib.sha256()
        self.closed = False

    def write(self, data: bytes | memoryview) -> int:
        self._h.update(data)
        return self._f.write(data)

    def close(self) -> None:
        if not self.closed:
            self._f.close()
            self.closed = True

    def hexdigest(self) -> str:
        return self._h.hexdigest()


class ArtifactStore:
    def __init__(self, url: str, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.is_local = self.fs.protocol in ("file", "local") or (
            isinstance(self.fs.protocol, tuple) and "file" in self.fs.protocol
        )
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        self._cache_dir = (
            Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "opentracy-artifacts"
        )
        self._verified: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    # -- writing ---------------------------------------------------------------------------------
    def scratch_dir(self) -> Path:
        """A local folder for files being written before they are stored (same filesystem when local)."""
        d = Path(self.root) / "tmp" if self.is_local else self._cache_dir / "tmp"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def scratch_file(self, prefix: str, suffix: str = "") -> Path:
        """A fresh scratch path; its name carries this process's pid so a later start can tell orphans."""
        return self.scratch_dir() / f"{prefix}-{os.getpid()}-{uuid.uuid4().hex}{suffix}"

    def clean_scratch(self, *, older_than_s: float = 24 * 3600) -> int:
        """Remove scratch files left by processes that died mid-write (or, when unknown, old ones)."""
        removed = 0
        now = time.time()
        for p in self.scratch_dir().iterdir():
            parts = p.name.split("-")
            pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
            dead = pid is not None and pid != os.getpid() and not _alive(pid)
            try:
                if dead or now - p.stat().st_mtime > older_than_s:
                    p.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def put_file(
        self, local_path: str | os.PathLike[str], *, prefix: str, suffix: str = "", sha256: str | None = None
    ) -> tuple[str, str, int]:
        """Move a finished local file into the store. Returns (key, sha256, size). `sha256`: the file's
        digest when the writer computed it on the way (HashingFile), so the file is not read again."""
        digest = sha256 or sha256_file(local_path)
        size = os.path.getsize(local_path)
        key = f"{prefix}/{digest[:2]}/{digest}{suffix}"
        dest = self._full(key)
        if self.is_local:
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            if Path(dest).exists():
                os.unlink(local_path)
            else:
                os.replace(local_path, dest)
        else:
            if not self.fs.exists(dest):
                self.fs.put_file(str(local_path), dest)
            os.unlink(local_path)
        return key, digest, size

    # -- reading ---------------------------------------------------------------------------------
    def _full(self, key: str) -> str:
        return f"{self.root}/{key}"

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._full(key))

    def local_path(self, key: str) -> str:
        """A local path for the artifact (remote artifacts are downloaded into a cache once)."""
        full = self._full(key)
        if self.is_local:
            if not os.path.exists(full):
                raise IntegrityError(f"artifact {key} is missing from the store at {self.url}")
            return full
        cached = self._cache_dir / key
        if not cached.exists():
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(cached.suffix + ".part")
            try:
                self.fs.get_file(full, str(tmp))
            except FileNotFoundError as e:
                raise NotFound(f"artifact {key} is missing from the store at {self.url}") from e
            os.replace(tmp, cached)
        return str(cached)

    def verify(self, key: str, expected_sha256: str | None = None) -> str:
        """Check the artifact's bytes against its content address; return its local path."""
        path = self.local_path(key)
        expected = expected_sha256 or Path(key).name.split(".", 1)[0]
        st = os.stat(path)
        stamp = (st.st_size, st.st_mtime_ns)
        with self._lock:
            if self._verified.get(path) == stamp:
                return path
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(
                f"stored file {key} was altered or corrupted: its sha256 is {actual[:16]}…, expected "
                f"{expected[:16]}…. Restore it from a backup; opentracy will not read it.",
                key=key,
            )
        with self._lock:
            self._verified[path] = stamp
        return path

    def delete(self, key: str) -> None:
        full = self._full(key)
        if self.fs.exists(full):
            self.fs.rm(full)

    def copy_local(self, src: str, dest: str) -> None:
        shutil.copyfile(src, dest)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
