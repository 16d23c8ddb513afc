"""Promote a cluster to a dataset: the spec's "Promote to dataset" button.

    promote_cluster(engine.trace_clusters, "cl_…", "card-arrival")                      # every trace
    promote_cluster(tc, "cl_…", "card-arrival", rows="sample", n=300, seed=1)           # a random 300
    promote_cluster(tc, "cl_…", "card-arrival", rows="closest", n=200)                  # nearest the centre
    promote_cluster(tc, "cl_…", "card-arrival", rows=["t_1", "t_2"])                    # these traces

A new dataset gets the rows in its first (active) version; an existing dataset gets them appended to its
active version (a frozen latest version is a conflict that says to start a new version). Each row is
`row_of(trace)` (traces → dataset: the request's messages, or the single user message, as prompt; the
answer's text as response) with `metadata.source_trace_id` and `metadata.cluster_id`. Traces that failed
or have no answer text are left out and counted; a trace already in the version (same `r_<trace id>`) is
not added twice. The version's provenance gets a `cluster` step naming the cluster, the clustering run (id,
config, embedder, namer, trace filter and text mode) and the selection, with every count.

All or nothing: rows are built and checked before anything is written, and a dataset created here is
removed again if writing its rows fails.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc
from pydantic import BaseModel

from opentracy.datasets.from_traces import row_of
from opentracy.errors import Conflict, InvalidInput, NotFound
from opentracy.traces.service import TraceFilter

ROW_MODES = ("all", "sample", "closest")
FETCH = 500  # trace ids per query


class PromoteResult(BaseModel):
    dataset: str
    version: str  # label, e.g. card-arrival-v1
    created: bool
    cluster_id: str
    cluster_name: str
    run_id: str
    rows: str  # all | sample | closest | ids
    selected: int  # traces chosen from the cluster
    added: int
    already_present: int
    skipped_errors: int
    skipped_no_text: int


def _selection(rows: Any, n: int | None) -> tuple[str, list[str] | None]:
    if isinstance(rows, list | tuple):
        ids = [str(x) for x in rows]
        if not ids:
            raise InvalidInput("rows: the list of trace ids is empty")
        if n is not None:
            raise InvalidInput("n goes with rows='sample' or rows='closest', not with a list of trace ids")
        return "ids", list(dict.fromkeys(ids))
    if rows not in ROW_MODES:
        raise InvalidInput(f"rows must be 'all', 'sample', 'closest' or a list of trace ids, not {rows!r}")
    if rows == "all":
        if n is not None:
            raise InvalidInput("n goes with rows='sample' or rows='closest' (rows='all' takes every trace)")
    elif n is None or n < 1:
        raise InvalidInput(f"rows={rows!r} needs n, the number of rows (at least 1)")
    return str(rows), None


def choose(
    tc: Any, cluster_id: str, run_id: str, mode: str, n: int | None, ids: list[str] | None, seed: int
) -> list[str]:
    """Trace ids of the cluster's members to promote, closest to the centre first (explicit ids: as given)."""
    t = tc.service._assignments(run_id)
    t = t.filter(pc.equal(t.column("cluster_id"), cluster_id)).select(["item_id", "similarity"])
    t = t.sort_by([("similarity", "descending"), ("item_id", "ascending")])
    members: list[str] = t.column("item_id").to_pylist()
    if mode == "ids":
        assert ids is not None
        inside = set(members)
        bad = [i for i in ids if i not in inside]
        if bad:
            raise InvalidInput(
                f"trace {bad[0]!r} is not in cluster {cluster_id} (run {run_id})"
                + (f", nor are {len(bad) - 1} more of the ids given" if len(bad) > 1 else "")
            )
        return ids
    if mode == "closest":
        return members[:n]
    if mode == "sample":
        assert n is not None
        if n >= len(members):
            return members
        keep = np.sort(np.random.default_rng(seed).choice(len(members), n, replace=False))
        return [members[i] for i in keep]
    return members


def promote_cluster(
    tc: Any,
    cluster_id: str,
    name: str,
    *,
    rows: str | list[str] = "all",
    n: int | None = None,
    run_id: str | None = None,
    seed: int = 0,
    description: str = "",
) -> PromoteResult:
    """Create (or append to) dataset `name` with the chosen traces of a cluster, with lineage."""
    mode, ids = _selection(rows, n)
    svc, datasets = tc.service, tc.datasets
    cluster = svc.cluster(cluster_id, run_id)  # NotFound for an unknown cluster or one not in that run
    run = tc.trace_run(cluster.run_id)  # refuses a run over items that were not traces
    chosen = choose(tc, cluster_id, run.id, mode, n, ids, seed)
    if not chosen:
        raise InvalidInput(f"cluster {cluster_id} has no member in run {run.id}: nothing to promote")

    # build every row first: nothing is written before all are known to be good
    built: dict[str, dict[str, Any]] = {}
    errors = no_text = 0
    found: set[str] = set()
    for k in range(0, len(chosen), FETCH):
        for t in tc.traces.iter(TraceFilter(ids=chosen[k : k + FETCH]), batch=FETCH):
            found.add(t.trace_id)
            if t.error:
                errors += 1
                continue
            row = row_of(t)
            if row is None:
                no_text += 1
                continue
            row["metadata"]["cluster_id"] = cluster_id
            built[t.trace_id] = row
    missing = [i for i in chosen if i not in found]
    if missing:
        raise NotFound(
            f"trace {missing[0]!r} of cluster {cluster_id} is no longer stored"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    new_rows = [built[i] for i in chosen if i in built]
    if not new_rows:
        raise InvalidInput(
            f"none of the {len(chosen):,} chosen traces of cluster {cluster_id} can be a row: "
            f"{errors:,} failed calls, {no_text:,} answers without text"
        )

    created = False
    try:
        datasets.get(name)
    except NotFound:
        datasets.create(name, description or f"{cluster.name}: promoted from cluster {cluster_id}")
        created = True
    try:
        try:
            active = datasets.version(name, "active")
        except NotFound as e:  # the dataset exists, its latest version is frozen
            raise Conflict(f"{e.message}; then promote the cluster into it") from None
        present: set[str] = set()
        row_ids = [r["row_id"] for r in new_rows]
        for k in range(0, len(row_ids), 1000):
            got = datasets.rows(name, "active", limit=1000, row_ids=row_ids[k : k + 1000]).rows
            present.update(r.row_id for r in got)
        todo = [r for r in new_rows if r["row_id"] not in present]
        if todo:
            datasets.add_rows(name, todo, "active")
        step = {
            "kind": "cluster",
            "cluster_id": cluster_id,
            "cluster_name": cluster.name,
            "run": {
                "id": run.id,
                "config": run.config,
                "embedder": run.embedder,
                "namer": run.namer,
                "filter": run.source.get("filter") or {},
                "text": run.source.get("text"),
            },
            "rows": mode,
            **({"n": n} if n is not None else {}),
            **({"seed": seed} if mode == "sample" else {}),
            "selected": len(chosen),
            "added": len(todo),
            "already_present": len(new_rows) - len(todo),
            "skipped_errors": errors,
            "skipped_no_text": no_text,
        }
        datasets.add_provenance(name, step, "active")
    except BaseException:
        if created:  # all or nothing: the dataset made here goes again
            datasets.delete(name, confirm=name)
        raise
    return PromoteResult(
        dataset=name,
        version=active.label,
        created=created,
        cluster_id=cluster_id,
        cluster_name=cluster.name,
        run_id=run.id,
        rows=mode,
        selected=len(chosen),
        added=len(todo),
        already_present=len(new_rows) - len(todo),
        skipped_errors=errors,
        skipped_no_text=no_text,
    )
