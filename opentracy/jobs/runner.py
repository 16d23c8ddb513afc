"""A small job framework that every long operation uses.

A job is a row in the catalog (kind, status, progress 0-1 with a message, logs, result, error,
timestamps). Jobs run on a thread pool in this process; heavy kinds can hand work to a subprocess from
their handler. On start, jobs left `queued` or `running` by a previous process are resumed when their kind
is resumable, and otherwise marked failed with the reason, so no job stays "running" forever.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select, update

from opentracy.errors import Cancelled, InvalidInput, NotFound, OpentracyError
from opentracy.store.catalog import Catalog
from opentracy.store.tables import JobLogRecord, JobRecord, utcnow

log = logging.getLogger("opentracy.jobs")
TERMINAL = ("succeeded", "failed", "cancelled")
STATUSES = ("queued", "running", *TERMINAL)


class JobInfo(BaseModel):
    id: str
    kind: str
    status: str
    progress: float
    message: str
    params: dict[str, Any]
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    attempts: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


def _info(r: JobRecord) -> JobInfo:
    return JobInfo(
        id=r.id,
        kind=r.kind,
        status=r.status,
        progress=r.progress,
        message=r.message,
        params=r.params or {},
        result=r.result,
        error=r.error,
        attempts=r.attempts,
        created_at=r.created_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
        updated_at=r.updated_at,
    )


class JobContext:
    """What a handler gets: its params, and ways to report progress, log, and notice a cancel."""

    PROGRESS_INTERVAL = 0.25

    def __init__(self, runner: JobRunner, job_id: str, params: dict[str, Any], attempt: int) -> None:
        self.runner = runner
        self.job_id = job_id
        self.params = params
        self.attempt = attempt
        self._last = 0.0
        self._cancelled = False

    def progress(self, fraction: float, message: str = "") -> None:
        """Record progress (throttled); raises Cancelled once a cancel was requested."""
        now = time.monotonic()
        if now - self._last < self.PROGRESS_INTERVAL and fraction < 1.0:
            return
        self._last = now
        with self.runner.catalog.session() as s:
            s.execute(
                update(JobRecord)
                .where(JobRecord.id == self.job_id)
                .values(
                    progress=max(0.0, min(1.0, float(fraction))), message=message[:500], updated_at=utcnow()
                )
            )
            self._cancelled = bool(
                s.scalar(select(JobRecord.cancel_requested).where(JobRecord.id == self.job_id))
            )
        if self._cancelled:
            raise Cancelled("cancelled by request")

    def is_cancelled(self) -> bool:
        if not self._cancelled:
            with self.runner.catalog.session() as s:
                self._cancelled = bool(
                    s.scalar(select(JobRecord.cancel_requested).where(JobRecord.id == self.job_id))
                )
        return self._cancelled

    def log(self, message: str, level: str = "info") -> None:
        self.runner.log(self.job_id, message, level)


Handler = Callable[[JobContext], dict[str, Any] | None]


@dataclass
class JobKind:
    handler: Handler
    resumable: bool = False
    # Called when a job of this kind ends for good (success, failure, cancel): release its inputs.
    cleanup: Callable[[dict[str, Any]], None] | None = None


class JobRunner:
    def __init__(self, catalog: Catalog, *, workers: int = 2) -> None:
        self.catalog = catalog
        self.kinds: dict[str, JobKind] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="job")
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._closed = False

    def register(
        self,
        kind: str,
        handler: Handler,
        *,
        resumable: bool = False,
        cleanup: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.kinds[kind] = JobKind(handler, resumable, cleanup)

    # -- queries ---------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobInfo:
        with self.catalog.session() as s:
            r = s.get(JobRecord, job_id)
            if r is None:
                raise NotFound(f"no job {job_id!r}")
            return _info(r)

    def list(
        self, *, status: str | None = None, kind: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[JobInfo]:
        if status and status not in STATUSES:
            raise InvalidInput(f"no job status {status!r}: use one of {', '.join(STATUSES)}")
        with self.catalog.session() as s:
            q = select(JobRecord)
            if status:
                q = q.where(JobRecord.status == status)
            if kind:
                q = q.where(JobRecord.kind == kind)
            q = (
                q.order_by(JobRecord.created_at.desc(), JobRecord.id)
                .offset(max(0, offset))
                .limit(max(1, min(limit, 500)))
            )
            return [_info(r) for r in s.scalars(q).all()]

    def logs(self, job_id: str, *, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        with self.catalog.session() as s:
            if s.get(JobRecord, job_id) is None:
                raise NotFound(f"no job {job_id!r}")
            rows = s.scalars(
                select(JobLogRecord)
                .where(JobLogRecord.job_id == job_id, JobLogRecord.id > after)
                .order_by(JobLogRecord.id)
                .limit(limit)
            ).all()
            return [
                {"id": r.id, "ts": r.ts.isoformat(), "level": r.level, "message": r.message} for r in rows
            ]

    def log(self, job_id: str, message: str, level: str = "info") -> None:
        with self.catalog.session() as s:
            s.add(JobLogRecord(job_id=job_id, level=level, message=message[:4000]))

    # -- lifecycle -------------------------------------------------------------------------------
    def submit(self, kind: str, params: dict[str, Any]) -> JobInfo:
        if kind not in self.kinds:
            raise NotFound(f"no job kind {kind!r}")
        job_id = f"job_{secrets.token_hex(8)}"
        with self.catalog.session() as s:
            s.add(
                JobRecord(
                    id=job_id,
                    kind=kind,
                    status="queued",
                    progress=0.0,
                    message="queued",
                    params=params,
                    attempts=0,
                    cancel_requested=False,
                )
            )
            s.flush()
            s.add(JobLogRecord(job_id=job_id, level="info", message=f"queued {kind}"))
        self._schedule(job_id)
        return self.get(job_id)

    def _schedule(self, job_id: str) -> None:
        with self._lock:
            self._events.setdefault(job_id, threading.Event())
        self._pool.submit(self._run, job_id)

    def cancel(self, job_id: str) -> JobInfo:
        """Cancel a job: a queued one ends at once; a running one stops at its next progress report."""
        with self.catalog.session() as s:
            r = s.get(JobRecord, job_id)
            if r is None:
                raise NotFound(f"no job {job_id!r}")
            if r.status in TERMINAL:
                return _info(r)
            kind_name, params = r.kind, dict(r.params or {})
            now = utcnow()
            s.execute(
                update(JobRecord).where(JobRecord.id == job_id).values(cancel_requested=True, updated_at=now)
            )
            was_queued = (
                s.execute(
                    update(JobRecord)
                    .where(JobRecord.id == job_id, JobRecord.status == "queued")
                    .values(status="cancelled", finished_at=now, message="cancelled before it started")
                ).rowcount
                == 1
            )
            s.add(JobLogRecord(job_id=job_id, level="info", message="cancel requested"))
        if was_queued:
            self._cleanup(kind_name, params, job_id)
        return self.get(job_id)

    def wait(self, job_id: str, timeout: float | None = None) -> JobInfo:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.get(job_id)
            if info.done:
                return info
            ev = self._events.get(job_id)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return info
            if ev is not None:
                ev.wait(0.2 if remaining is None else min(0.2, remaining))
            else:
                time.sleep(0.2)

    def recover(self) -> list[str]:
        """Deal with jobs a previous process left unfinished: resume them, or fail them with the reason."""
        resumed: list[str] = []
        ended: list[tuple[str, str, dict[str, Any]]] = []
        with self.catalog.session() as s:
            stale = s.scalars(select(JobRecord).where(JobRecord.status.in_(("queued", "running")))).all()
            for r in stale:
                kind = self.kinds.get(r.kind)
                if r.cancel_requested:
                    r.status, r.finished_at, r.message = (
                        "cancelled",
                        utcnow(),
                        "cancelled (the server restarted)",
                    )
                    ended.append((r.id, r.kind, dict(r.params or {})))
                elif kind is not None and kind.resumable:
                    r.status, r.message = "queued", "resuming after a restart"
                    resumed.append(r.id)
                else:
                    r.status, r.finished_at = "failed", utcnow()
                    r.error = {
                        "code": "interrupted",
                        "message": "the server stopped while this job was running, and this kind of job "
                        "cannot resume; run it again",
                    }
                    r.message = "interrupted by a restart"
                    ended.append((r.id, r.kind, dict(r.params or {})))
                r.updated_at = utcnow()
        for job_id, kind_name, params in ended:
            self._cleanup(kind_name, params, job_id)
        for job_id in resumed:
            self.log(job_id, "the server restarted while this job was running; resuming")
            self._schedule(job_id)
        return resumed

    def _run(self, job_id: str) -> None:
        # Claim the job atomically: only a job still queued starts (a cancel may have won the race).
        with self.catalog.session() as s:
            now = utcnow()
            claimed = s.execute(
                update(JobRecord)
                .where(JobRecord.id == job_id, JobRecord.status == "queued")
                .values(status="running", started_at=now, updated_at=now, attempts=JobRecord.attempts + 1)
            ).rowcount
            r = s.get(JobRecord, job_id)
            kind_name, params, attempt = (
                (r.kind, dict(r.params or {}), r.attempts) if r is not None else ("", {}, 0)
            )
        if claimed != 1:
            self._finish_event(job_id)
            return
        kind = self.kinds[kind_name]
        ctx = JobContext(self, job_id, params, attempt)
        status, result, error = "succeeded", None, None
        try:
            result = kind.handler(ctx) or {}
        except Cancelled as e:
            status, error = "cancelled", e.to_dict()
        except OpentracyError as e:
            status, error = "failed", e.to_dict()
        except Exception as e:  # an unexpected failure is still recorded, with its traceback in the log
            status, error = "failed", {"code": "internal_error", "message": f"{type(e).__name__}: {e}"}
            self.log(job_id, traceback.format_exc(), "error")
            log.exception("job %s failed", job_id)
        if (
            self._closed
            and status != "succeeded"
            and kind.resumable
            and error
            and error.get("code") == "internal_error"
        ):
            return  # shutting down mid-run: leave it for recover() on the next start
        # Release the job's inputs before recording the end, so whoever sees the end sees them gone.
        # (A resumed job whose inputs are gone fails with a clear message or finds its committed result.)
        self._cleanup(kind_name, params, job_id)
        with self.catalog.session() as s:
            r = s.get(JobRecord, job_id)
            r.status = status
            r.result = result if status == "succeeded" else None
            r.error = error
            r.finished_at = r.updated_at = utcnow()
            if status == "succeeded":
                r.progress, r.message = 1.0, "done"
            else:
                r.message = (error or {}).get("message", status)[:500]
            # The last log line commits with the status: whoever sees the end sees the whole log.
            s.add(
                JobLogRecord(
                    job_id=job_id,
                    level="info" if status == "succeeded" else "error",
                    message=(f"{status}" + (f": {error['message']}" if error else ""))[:4000],
                )
            )
        self._finish_event(job_id)

    def _cleanup(self, kind_name: str, params: dict[str, Any], job_id: str) -> None:
        kind = self.kinds.get(kind_name)
        if kind is not None and kind.cleanup is not None:
            try:
                kind.cleanup(params)
            except Exception:
                log.exception("cleanup of job %s failed", job_id)

    def _finish_event(self, job_id: str) -> None:
        with self._lock:
            ev = self._events.pop(job_id, None)
        if ev is not None:
            ev.set()

    def shutdown(self, wait: bool = True) -> None:
        self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=True)
