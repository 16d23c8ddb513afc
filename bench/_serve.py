"""`opentracy serve` in a process of its own, for the benchmarks that go through HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(home: Path, log_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A server on a free port with its data under `home` (no API key), ready to answer; yields the process
    and its URL, and stops it afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OPENTRACY_HOME": str(home)}
    env.pop("OPENTRACY_API_KEY", None)
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "opentracy.cli", "serve", "--port", str(port), "--log-level", "warning"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"{url}/health", timeout=1).read()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"the server did not start; see {log_path}") from None
                    time.sleep(0.1)
            yield server, url
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
