"""Clustering traces: which traces (a `TraceFilter`), the text of each (its prompt), runs as jobs, and traces
that arrived after a run assigned to its clusters without re-running it.

    tc = engine.trace_clusters
    job = tc.submit(TraceFilter(tags=["support"]), {"min_cluster_size": 10})   # a job, with progress
    run = tc.run(TraceFilter(since=...))                                      # the same, in this thread
    tc.assign_new()               # traces stored since the latest trace run: into its clusters
    tc.promote("cl_…", "card-arrival", rows="closest", n=200)               # see promote.py

**The text of a trace** is what its user asked in that call (docs/decisions/0024): by default the last user
message of the request (`text="last_user"`). System and developer prompts are left out: an application sends
the same instructions with every call, and in the embedding they would pull all its calls together whatever
the user asked. `text="user"` takes every user turn of the conversation (in order), `text="all"` every
message, system prompt included (the trace's `prompt_text`). A request with no user message falls back to
its last non-assistant message (e.g. a tool result); a trace with no text at all is left out and counted.
Texts are cut to 2,000 characters (the embedder reads the first 256 tokens, about 1,000 characters).

The run records its filter, text mode and the time it started reading (`read_at`) in its `source`, so
`assign_new` finds exactly the traces that match the same filter and were stored since.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import msgspec
from pydantic import BaseModel, Field
from sqlalchemy import and_, or_, select

from opentracy.clustering.service import AssignResult, ClusteringService, RunInfo, make_config
from opentracy.errors import InvalidInput, NotFound
from opentracy.jobs import JobContext, JobInfo, JobRunner
from opentracy.store.tables import ClusteringRunRecord, TraceRecord
from opentracy.traces.schema import content_text
from opentracy.traces.service import TraceFilter, TraceService

TextMode = Literal["last_user", "user", "all"]
TEXT_MODES: tuple[str, ...] = ("last_user", "user", "all")
MAX_TEXT_CHARS = 2000
RUN = "clustering.traces"
T = TraceRecord.__table__
_dec = msgspec.json.Decoder().decode
Progress = Callable[[float, str], None]


def trace_text(request: dict[str, Any] | str | bytes, mode: str = "last_user") -> str:
    """The text a trace is clustered by (see the module docstring); "" when it has none."""
    if isinstance(request, str | bytes):
        request = _dec(request)
    msgs = request.get("messages") if isinstance(request, dict) else None
    if not isinstance(msgs, list):
        return ""
    if mode == "last_user":
        text = ""
        for m in reversed(msgs):
            if isinstance(m, dict) and m.get("role") == "user":
                text = content_text(m.get("content")).strip()
                if text:
                    break
        if not text:
            for m in reversed(msgs):
                if isinstance(m, dict) and m.get("role") not in ("system", "developer", "assistant"):
                    text = content_text(m.get("content")).strip()
                    if text:
                        break
    elif mode == "user":
        text = "\n".join(
            t
            for m in msgs
            if isinstance(m, dict) and m.get("role") == "user"
            for t in [content_text(m.get("content")).strip()]
            if t
        )
    elif mode == "all":
        text = "\n".join(
            t for m in msgs if isinstance(m, dict) for t in [content_text(m.get("content")).strip()] if t
        )
    else:
        raise InvalidInput(f"text must be one of {', '.join(TEXT_MODES)}, not {mode!r}")
    return text[:MAX_TEXT_CHARS]


class TraceRunRequest(BaseModel):
    """What POST /v1/clusters/runs takes."""

    filter: TraceFilter = Field(default_factory=TraceFilter)
    config: dict[str, Any] = Field(default_factory=dict, description="a ClusteringConfig")
    text: TextMode = "last_user"
    limit: int | None = Field(None, ge=1, description="cluster at most this many traces (the oldest first)")


class TraceAssignResult(BaseModel):
    run_id: str
    new_traces: int  # traces matching the run's filter, stored since it read its traces, not yet in it
    assigned: int
    outliers: int
    skipped_no_text: int
    remaining: int  # left for the next call (over `limit`)
    embed: dict[str, Any] = {}


class TraceClusters:
    def __init__(
        self,
        service: ClusteringService,
        traces: TraceService,
        datasets: Any,
        jobs: JobRunner,
        staging_dir: Path,
    ) -> None:
        self.service = service
        self.traces = traces
        self.datasets = datasets
        self.jobs = jobs
        self.staging_dir = staging_dir
        self._assign_lock = threading.Lock()

    # -- reading traces ------------------------------------------------------------------------------
    def read(
        self,
        f: TraceFilter,
        *,
        conds: Sequence[Any] = (),
        limit: int | None = None,
        batch: int = 5000,
        ids_only: bool = False,
    ) -> Iterator[list[tuple[str, bytes | str]]]:
        """(trace_id, request JSON) of the matching traces, oldest first, a batch at a time: two columns, not
        whole traces (decoding every trace's response and metadata cost more than embedding-free work
        should). `ids_only`: the request is not read ("" in its place)."""
        base = [*self.traces._conds(f), *conds]
        last: tuple[Any, str] | None = None
        n = 0
        while limit is None or n < limit:
            where = list(base)
            if last is not None:
                where.append(or_(T.c.started_at > last[0], and_(T.c.started_at == last[0], T.c.id > last[1])))
            size = batch if limit is None else min(batch, limit - n)
            q = (
                select(T.c.id, T.c.started_at if ids_only else T.c.request, T.c.started_at)
                .where(*where)
                .order_by(T.c.started_at, T.c.id)
                .limit(size)
            )
            with self.traces.catalog.engine.connect() as c:
                rows = c.execute(q).all()
            if not rows:
                return
            n += len(rows)
            last = (rows[-1][2], rows[-1][0])
            yield [(r[0], "" if ids_only else r[1]) for r in rows]
            if len(rows) < size:
                return

    def items(
        self,
        f: TraceFilter,
        text: str = "last_user",
        *,
        conds: Sequence[Any] = (),
        limit: int | None = None,
        progress: Callable[[int], None] | None = None,
        skip: set[str] | None = None,
        max_items: int | None = None,
    ) -> tuple[list[tuple[str, str]], list[str]]:
        """((trace_id, text) pairs, ids of traces without text) for the matching traces (`skip`: ids to
        leave out; `max_items`: stop once that many pairs are collected)."""
        if text not in TEXT_MODES:
            raise InvalidInput(f"text must be one of {', '.join(TEXT_MODES)}, not {text!r}")
        out: list[tuple[str, str]] = []
        empty: list[str] = []
        for rows in self.read(f, conds=conds, limit=limit):
            for tid, req in rows:
                if skip is not None and tid in skip:
                    continue
                t = trace_text(req, text)
                if t:
                    out.append((tid, t))
                    if max_items is not None and len(out) >= max_items:
                        return out, empty
                else:
                    empty.append(tid)
            if progress is not None:
                progress(len(out) + len(empty))
        return out, empty

    # -- runs ----------------------------------------------------------------------------------------
    def run(
        self,
        filter: TraceFilter | dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        *,
        text: str = "last_user",
        limit: int | None = None,
        progress: Progress | None = None,
        job_id: str | None = None,
    ) -> RunInfo:
        """Cluster the traces matching `filter` (all traces by default) by their text; stored like any run,
        with the filter, text mode and reading time in its `source`."""
        f = _filter(filter)
        cfg = make_config(config)
        if text not in TEXT_MODES:
            raise InvalidInput(f"text must be one of {', '.join(TEXT_MODES)}, not {text!r}")
        say = progress or (lambda _f, _m: None)
        read_at = datetime.now(UTC)
        total = self.traces.count(f)
        if limit is not None:
            total = min(total, limit)
        if total == 0:
            raise InvalidInput("no trace matches the filter: nothing to cluster")
        say(0.0, f"reading {total:,} traces")
        items, empty = self.items(
            f,
            text,
            limit=limit,
            progress=lambda n: say(0.1 * n / max(total, 1), f"reading traces: {n:,}/{total:,}"),
        )
        if not items:
            raise InvalidInput(
                f"none of the {len(empty):,} matching traces has prompt text (text={text!r}): nothing to cluster"
            )
        source = {
            "kind": "traces",
            "filter": f.model_dump(mode="json", exclude_defaults=True),
            "text": text,
            "limit": limit,
            "read_at": read_at.isoformat(),
            "matched": len(items) + len(empty),
            "skipped_no_text": len(empty),
            **({"skipped_ids": empty[:20]} if empty else {}),
        }
        return self.service.run(
            items,
            cfg,
            source=source,
            progress=lambda fr, m: say(0.1 + 0.9 * fr, m),
            job_id=job_id,
        )

    def submit(
        self,
        filter: TraceFilter | dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        *,
        text: str = "last_user",
        limit: int | None = None,
    ) -> JobInfo:
        """The same run as a job (`clustering.traces`). Bad config, filter or text mode, and a filter that
        matches nothing, are refused here, before a job exists."""
        f = _filter(filter)
        cfg = make_config(config)
        self.service.namer(cfg)  # an LLM namer without a model is refused now, not in the job
        if text not in TEXT_MODES:
            raise InvalidInput(f"text must be one of {', '.join(TEXT_MODES)}, not {text!r}")
        if self.traces.count(f) == 0:
            raise InvalidInput("no trace matches the filter: nothing to cluster")
        params = {
            "filter": f.model_dump(mode="json", exclude_defaults=True),
            "config": cfg.model_dump(mode="json"),
            "text": text,
            "limit": limit,
        }
        return self.jobs.submit(RUN, params)

    def register(self) -> None:
        def handler(ctx: JobContext) -> dict[str, Any]:
            done = self.service.find_job_run(ctx.job_id)
            if done is not None:
                ctx.log("this run was already stored before the restart; not repeating it")
                return done.model_dump(mode="json")
            p = ctx.params
            info = self.run(
                p.get("filter") or {},
                p.get("config") or {},
                text=p.get("text") or "last_user",
                limit=p.get("limit"),
                progress=ctx.progress,
                job_id=ctx.job_id,
            )
            skipped = info.source.get("skipped_no_text") or 0
            ctx.log(
                f"{info.n_clusters} clusters over {info.n_items:,} traces, {info.outlier_share:.1%} unclustered; "
                f"named by {info.namer}"
                + (f"; {skipped:,} traces without prompt text left out" if skipped else "")
            )
            return info.model_dump(mode="json")

        # Resumable: nothing is stored until the run succeeds, so a restarted run reads its traces again.
        self.jobs.register(RUN, handler, resumable=True)

    def latest_run(self) -> RunInfo | None:
        """The latest succeeded run over traces, or None."""
        with self.service.catalog.session() as s:
            for r in s.scalars(
                select(ClusteringRunRecord)
                .where(ClusteringRunRecord.status == "succeeded")
                .order_by(ClusteringRunRecord.created_at.desc(), ClusteringRunRecord.id.desc())
                .limit(50)
            ):
                if (r.source or {}).get("kind") == "traces":
                    return self.service.get_run(r.id)
        return None

    def trace_run(self, run_id: str | None = None) -> RunInfo:
        """A run over traces: `run_id`, or the latest one."""
        if run_id in (None, "latest"):
            run = self.latest_run()
            if run is None:
                raise NotFound(
                    "no clustering run over traces yet: POST /v1/clusters/runs (opentracy clusters run)"
                )
            return run
        run = self.service.get_run(run_id)
        if run.source.get("kind") != "traces":
            raise InvalidInput(
                f"run {run.id} clustered items given to it, not traces; use a run over traces "
                "(POST /v1/clusters/runs, opentracy clusters run)"
            )
        return run

    # -- new traces into an existing run -----------------------------------------------------------
    def assign_new(self, run_id: str | None = None, *, limit: int | None = 10_000) -> TraceAssignResult:
        """Traces that match the run's filter and were stored since it read its traces (and are not in it
        yet), each put into its nearest cluster or left an outlier (service.assign); at most `limit` per
        call, the oldest first, and `remaining` says how many wait."""
        run = self.trace_run(run_id)
        src = run.source
        f = _filter(src.get("filter") or {})
        since = datetime.fromisoformat(src["read_at"]) - timedelta(seconds=1)  # clocks of two writers
        conds = [T.c.created_at >= since]
        with self._assign_lock:
            known = self.service.assigned_ids(run.id)
            take, empty = self.items(
                f, src.get("text") or "last_user", conds=conds, skip=known, max_items=limit
            )
            res: AssignResult | None = self.service.assign(take, run.id) if take else None
            # how many wait: ids only, the texts of the rest are not read now
            waiting = 0
            if limit is not None and len(take) >= limit:
                known = self.service.assigned_ids(run.id)
                empty_ids = set(empty)
                for rows in self.read(f, conds=conds, ids_only=True):
                    waiting += sum(1 for tid, _ in rows if tid not in known and tid not in empty_ids)
        return TraceAssignResult(
            run_id=run.id,
            new_traces=len(take) + len(empty) + waiting,
            assigned=res.assigned if res else 0,
            outliers=res.outliers if res else 0,
            skipped_no_text=len(empty),
            remaining=waiting,
            embed=res.embed if res else {},
        )

    def assign_ids(self, trace_ids: Sequence[str], run_id: str | None = None) -> TraceAssignResult | None:
        """Assign these traces (e.g. just embedded at ingest) to the latest trace run, those of them that
        match its filter and are not in it yet. None when there is no trace run."""
        run = self.latest_run() if run_id is None else self.trace_run(run_id)
        if run is None or not trace_ids:
            return None
        src = run.source
        f = _filter(src.get("filter") or {})
        with self._assign_lock:
            known = self.service.assigned_ids(run.id)
            todo = [i for i in dict.fromkeys(trace_ids) if i not in known]
            items: list[tuple[str, str]] = []
            empty: list[str] = []
            for k in range(0, len(todo), 500):
                got, none = self.items(
                    f, src.get("text") or "last_user", conds=[T.c.id.in_(todo[k : k + 500])]
                )
                items += got
                empty += none
            res = self.service.assign(items, run.id) if items else None
        return TraceAssignResult(
            run_id=run.id,
            new_traces=len(items) + len(empty),
            assigned=res.assigned if res else 0,
            outliers=res.outliers if res else 0,
            skipped_no_text=len(empty),
            remaining=0,
            embed=res.embed if res else {},
        )

    # -- promote ---------------------------------------------------------------------------------------
    def promote(self, cluster_id: str, name: str, **kw: Any) -> Any:
        """A cluster's traces → a dataset (see promote.py)."""
        from opentracy.clustering.promote import promote_cluster

        return promote_cluster(self, cluster_id, name, **kw)


def _filter(f: TraceFilter | dict[str, Any] | None) -> TraceFilter:
    if isinstance(f, TraceFilter):
        return f
    from pydantic import ValidationError

    try:
        return TraceFilter(**(f or {}))
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "filter"
        raise InvalidInput(f"trace filter: {where}: {err.get('msg')}") from None
    except TypeError as e:
        raise InvalidInput(f"trace filter: {e}") from None
