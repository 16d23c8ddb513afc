"""Embedding traces as they arrive, off the request path, and (optionally) assigning them to the latest
run's clusters as they come.

Every trace the catalog stores (the recording proxy's and the gateway's through the trace writer, the batch
API, imports) is offered here once its row is inserted (`TraceService.on_insert`); `offer` only queues the
trace's id and request, so it costs the writer next to nothing. One background thread takes the queue in
batches of up to `batch` traces (2,048 by default: at ingest, calls of 256, 1,024 and 2,048 texts ran at
800, 896 and 916 traces/s, the model alone at 1,030; bench/cluster_traces.py), waiting at most
`max_delay_s` for a batch to fill (under light load, batches are small and prompt), and embeds the texts (the latest trace run's text mode and embedder; by default the last user message and
int8 MiniLM) through the embedding cache: a later clustering run finds them there and embeds nothing.

With `auto_assign`, traces embedded here are also put into the clusters of the latest run over traces
(those that match its filter), every `assign_every_s` seconds, so cluster sizes and members stay current
without a re-run. Traces whose rows were not yet visible (a long import still in its transaction) are tried
again for a minute; `assign_new` (API, CLI) catches up on anything missed.

The queue is bounded (`max_queue`): past it, traces are not queued but counted as `dropped`; they are
embedded by the next clustering run instead. On close, what is queued is embedded for up to `drain_s`
seconds; the rest is counted the same way. Nothing is lost silently: `stats()` reports every count.

Settings: OPENTRACY_EMBED_AT_INGEST = auto (default: on once the local embedding model is built, so a fresh
install never builds a model in the background; never with a provider's paid embeddings), on (builds the
model on the first batch if needed; any embedder) or off;
OPENTRACY_CLUSTER_AUTO_ASSIGN = 1 (default) or 0.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from typing import Any

from opentracy.clustering.traces import TraceClusters, trace_text

log = logging.getLogger("opentracy.clustering")


class IngestEmbedder:
    def __init__(
        self,
        tc: TraceClusters,
        *,
        mode: str | None = None,
        batch: int = 2048,
        max_delay_s: float = 0.5,
        max_queue: int = 200_000,
        auto_assign: bool | None = None,
        assign_every_s: float = 5.0,
        drain_s: float = 10.0,
    ) -> None:
        self.tc = tc
        self.mode = (mode or os.environ.get("OPENTRACY_EMBED_AT_INGEST") or "auto").strip().lower()
        if self.mode not in ("auto", "on", "off"):
            log.warning("OPENTRACY_EMBED_AT_INGEST=%r: expected auto, on or off; using auto", self.mode)
            self.mode = "auto"
        self.batch = batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        env_assign = os.environ.get("OPENTRACY_CLUSTER_AUTO_ASSIGN", "1").strip().lower()
        self.auto_assign = (
            env_assign not in ("0", "false", "no", "off") if auto_assign is None else auto_assign
        )
        self.assign_every_s = assign_every_s
        self.drain_s = drain_s
        self._q: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._queued = 0
        self._busy = 0
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._enabled_at: tuple[float, bool] = (0.0, False)
        self._run_at: tuple[float, Any] = (0.0, None)
        self._pending_assign: deque[tuple[float, str]] = deque()
        self._last_assign = time.monotonic()
        self._assign_mutex = threading.Lock()
        self._recent: deque[tuple[float, int, float]] = deque(maxlen=20)  # (end time, texts, seconds)
        self.counts = {
            "offered": 0,
            "embedded": 0,
            "computed": 0,
            "cached": 0,
            "no_text": 0,
            "dropped": 0,
            "batches": 0,
            "assigned": 0,
            "outliers": 0,
            "errors": 0,
        }
        self.last_error: str | None = None

    # -- switched on? -------------------------------------------------------------------------------
    def enabled(self) -> bool:
        if self.mode == "off" or self._closed:
            return False
        if self.mode == "on":
            return True
        at, ok = self._enabled_at
        if time.monotonic() - at < 30.0:
            return ok
        ok = self._model_ready()
        self._enabled_at = (time.monotonic(), ok)
        return ok

    def _model_ready(self) -> bool:
        """auto: only when the embedder of the latest trace run (default: int8 MiniLM) runs without a build.
        Reads files only (this runs on the inserting thread): the run is the one the worker last saw."""
        run = self._run_at[1]
        spec = str(run.config.get("embedder") or "minilm") if run is not None else "minilm"
        if spec.startswith("st:") or spec == "minilm-torch":
            return True
        if spec == "static":
            return _built(self.tc.service.home, "static")
        if spec not in ("minilm", "default"):
            return False  # a provider's embeddings cost per call: only with OPENTRACY_EMBED_AT_INGEST=on
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        return _built(self.tc.service.home, "onnx")

    def _spec(self) -> tuple[str, str]:
        """(embedder, text mode) of the latest run over traces (re-read every 10 s), else the defaults."""
        at, run = self._run_at
        if time.monotonic() - at > 10.0:
            try:
                run = self.tc.latest_run()
            except Exception:  # the catalog may be going away at shutdown
                run = None
            self._run_at = (time.monotonic(), run)
        if run is None:
            return "minilm", "last_user"
        return str(run.config.get("embedder") or "minilm"), str(run.source.get("text") or "last_user")

    # -- the writer's side --------------------------------------------------------------------------
    def offer(self, rows: list[dict[str, Any]]) -> None:
        """Called with the trace rows just inserted: queue them (never blocks, never raises)."""
        if not rows or not self.enabled():
            return
        with self._cv:
            room = self.max_queue - self._queued
            take = rows if room >= len(rows) else rows[: max(room, 0)]
            self.counts["offered"] += len(rows)
            self.counts["dropped"] += len(rows) - len(take)
            self._queued += len(take)
        for r in take:
            self._q.put((r["id"], r["request"]))
        if take:
            self._ensure()

    def _ensure(self) -> None:
        if self._thread is None:
            with self._cv:
                if self._thread is None and not self._closed:
                    t = threading.Thread(target=self._loop, name="ingest-embedder", daemon=True)
                    t.start()
                    self._thread = t

    # -- the background thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            try:
                first = self._q.get(timeout=self.assign_every_s)
            except queue.Empty:
                self._maybe_assign(force=True)
                continue
            if first is None:
                return
            got = [first]
            stop = False
            deadline = time.monotonic() + self.max_delay_s
            while len(got) < self.batch:
                try:
                    nxt = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                got.append(nxt)
            with self._cv:
                self._queued -= len(got)
                self._busy += len(got)
            try:
                self._embed(got)
                self._maybe_assign()
            except Exception as e:  # a failure here must not stop ingest, nor this thread
                self.counts["errors"] += 1
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception(
                    "embedding %d traces at ingest failed; the next clustering run embeds them", len(got)
                )
            finally:
                with self._cv:
                    self._busy -= len(got)
                    self._cv.notify_all()
            if stop:
                return

    def _embed(self, got: list[tuple[str, Any]]) -> None:
        spec, text_mode = self._spec()
        ids: list[str] = []
        texts: list[str] = []
        for tid, req in got:
            t = trace_text(req, text_mode)
            if t:
                ids.append(tid)
                texts.append(t)
        self.counts["no_text"] += len(got) - len(ids)
        if not texts:
            return
        from opentracy.embeddings.cache import EmbedStats

        stats = EmbedStats()
        t0 = time.perf_counter()
        self.tc.service.embed(texts, spec, stats=stats)
        dt = time.perf_counter() - t0
        self._recent.append((time.monotonic(), len(texts), dt))
        self.counts["embedded"] += len(texts)
        self.counts["computed"] += stats.computed
        self.counts["cached"] += stats.cached
        self.counts["batches"] += 1
        if self.auto_assign:
            now = time.monotonic()
            with self._assign_mutex:
                self._pending_assign.extend((now, i) for i in ids)

    def _maybe_assign(self, force: bool = False) -> None:
        if not self.auto_assign or not self._pending_assign:
            return
        with self._assign_mutex:
            self._assign_pending(force)

    def _assign_pending(self, force: bool) -> None:
        if not self._pending_assign:
            return
        now = time.monotonic()
        if not force and now - self._last_assign < self.assign_every_s and len(self._pending_assign) < 50_000:
            return
        self._last_assign = now
        todo = list(self._pending_assign)
        self._pending_assign.clear()
        try:
            res = self.tc.assign_ids([i for _, i in todo])
        except Exception as e:
            self.counts["errors"] += 1
            self.last_error = f"assigning at ingest: {type(e).__name__}: {e}"
            log.exception("assigning %d new traces to clusters failed; `assign_new` catches up", len(todo))
            return
        if res is None:
            return
        self.counts["assigned"] += res.assigned
        self.counts["outliers"] += res.outliers
        # ids not seen yet (their transaction had not committed) are tried again for a minute
        known = self.tc.service.assigned_ids(res.run_id)
        self._pending_assign.extend((t, i) for t, i in todo if i not in known and now - t < 60.0)

    # -- waiting, stats, shutdown ------------------------------------------------------------------------
    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until everything queued so far is embedded (and, with auto_assign, assigned). True if it was."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._queued > 0 or self._busy > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.1))
        if self.auto_assign and self._pending_assign and self._thread is not None:
            # assign what is pending now, on this thread (the worker may be asleep until its next round)
            self._maybe_assign(force=True)
        return True

    def stats(self) -> dict[str, Any]:
        recent = list(self._recent)
        n = sum(r[1] for r in recent)
        s = sum(r[2] for r in recent)
        return {
            "mode": self.mode,
            "enabled": self.enabled(),
            "auto_assign": self.auto_assign,
            "batch": self.batch,
            "queued": self._queued,
            **self.counts,
            "recent_texts_per_s": round(n / s, 1) if s else None,
            "last_error": self.last_error,
        }

    def close(self) -> None:
        """Embed what is queued (for up to drain_s seconds), then stop; the rest is counted as dropped."""
        if self._closed:
            return
        if self._thread is not None:
            self.flush(self.drain_s)
        self._closed = True
        if self._thread is not None:
            left = 0
            while True:
                try:
                    x = self._q.get_nowait()
                except queue.Empty:
                    break
                if x is not None:
                    left += 1
            with self._cv:
                self._queued -= left
                self.counts["dropped"] += left
            if left:
                log.warning(
                    "%d traces were not embedded at ingest before shutdown; the next run embeds them", left
                )
            self._q.put(None)
            self._thread.join(self.drain_s)


def _built(home: Any, which: str) -> bool:
    from opentracy.embeddings.build import ONNX_NAME, STATIC_NAME, built

    return built(home, ONNX_NAME if which == "onnx" else STATIC_NAME) is not None
