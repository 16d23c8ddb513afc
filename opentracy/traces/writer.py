"""The trace writer: traces recorded on a hot path (the proxy, the gateway) are queued and written in
batches by one background thread, so the caller never waits for the database. `close()` (called when the
engine closes, i.e. on a clean shutdown) writes everything still queued before it returns.

Items are callables that build the row (parsing a response body, pricing it) or ready rows: the work of
turning a recorded call into a row happens here too, off the response path.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("opentracy.traces")

Item = dict[str, Any] | Callable[[], dict[str, Any] | None]


class TraceWriter:
    def __init__(
        self,
        write: Callable[[list[dict[str, Any]]], Any],
        *,
        max_batch: int = 1000,
        max_delay_s: float = 0.05,
        retries: int = 5,
    ) -> None:
        self._write = write
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.retries = retries
        self._q: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self._pending = 0  # queued or being written
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.written = 0
        self.lost = 0

    def _ensure(self) -> None:
        if self._thread is None:
            with self._cv:
                if self._thread is None:
                    t = threading.Thread(target=self._run, name="trace-writer", daemon=True)
                    t.start()
                    self._thread = t

    def put(self, item: Item) -> None:
        """Queue one trace (a row, or a function returning one). Never blocks on the database."""
        if self._closed:
            raise RuntimeError("the trace writer is closed")
        with self._cv:
            self._pending += 1
        self._ensure()
        self._q.put(item)

    def _run(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                self._done_marker()
                return
            batch = [first]
            deadline = time.monotonic() + self.max_delay_s
            stop = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._flush(batch)
            if stop:
                self._done_marker()
                return

    def _done_marker(self) -> None:
        # Anything queued after the stop marker (should not happen: put() refuses once closed).
        rest = []
        while True:
            try:
                x = self._q.get_nowait()
            except queue.Empty:
                break
            if x is not None:
                rest.append(x)
        if rest:
            self._flush(rest)

    def _flush(self, batch: list[Item]) -> None:
        rows = []
        for item in batch:
            try:
                row = item() if callable(item) else item
            except Exception:  # a recording bug must not take the writer down
                log.exception("could not build a trace; it is not recorded")
                self.lost += 1
                continue
            if row is not None:
                rows.append(row)
        delay = 0.05
        for attempt in range(self.retries + 1):
            try:
                if rows:
                    self._write(rows)
                self.written += len(rows)
                break
            except Exception:
                if attempt == self.retries:
                    log.exception(
                        "could not write %d traces after %d attempts; they are lost", len(rows), attempt + 1
                    )
                    self.lost += len(rows)
                    break
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        with self._cv:
            self._pending -= len(batch)
            self._cv.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is written. True if it was."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def close(self, timeout: float = 60.0) -> None:
        """Write what is queued, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout)
