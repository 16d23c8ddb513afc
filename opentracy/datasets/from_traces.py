"""Traces → dataset rows, with lineage: every row carries `metadata.source_trace_id`.

    add_traces(engine.datasets, engine.traces, "tickets", filter=TraceFilter(tags=["support"]))

A trace becomes a row whose prompt is its request's messages (a plain string when the request was a single
user message) and whose response is the assistant's text. Error traces and answers without text (tool
calls only) are left out and counted. Row ids are derived from trace ids (`r_<trace id>`), so adding the
same trace twice adds it once.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from opentracy.datasets.rows import KNOWN_METADATA_KEYS
from opentracy.errors import InvalidInput, NotFound
from opentracy.traces.schema import TraceOut
from opentracy.traces.service import TraceFilter

BATCH = 5000


class TracesToDatasetResult(BaseModel):
    dataset: str
    version: str
    matched: int
    added: int
    already_present: int = 0
    skipped_errors: int = 0
    skipped_no_text: int = 0


def row_of(t: TraceOut) -> dict[str, Any] | None:
    msg = (t.response or {}).get("message") or {}
    content = msg.get("content")
    if isinstance(content, list):
        content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str) or not content.strip():
        return None
    msgs = t.request.get("messages") or []
    if len(msgs) == 1 and msgs[0].get("role") == "user" and isinstance(msgs[0].get("content"), str):
        prompt: Any = msgs[0]["content"]
    else:
        prompt = [
            {k: v for k, v in m.items() if k in ("role", "content", "name", "tool_calls", "tool_call_id")}
            for m in msgs
        ]
    meta: dict[str, Any] = {k: v for k, v in t.metadata.items() if k not in KNOWN_METADATA_KEYS}
    meta.update({"source_trace_id": t.trace_id, "model": t.model})
    if t.tags:
        meta["tags"] = list(t.tags)
    for k in ("cluster_id",):
        if k in t.metadata:
            meta[k] = t.metadata[k]
    return {"row_id": f"r_{t.trace_id}", "prompt": prompt, "response": content, "metadata": meta}


def add_traces(
    datasets: Any,
    traces: Any,
    dataset: str,
    *,
    trace_ids: list[str] | None = None,
    filter: TraceFilter | None = None,
    create: bool = True,
    description: str = "",
    limit: int | None = None,
) -> TracesToDatasetResult:
    """Append the chosen traces to the dataset's active version (creating the dataset if asked)."""
    if trace_ids is None and filter is None:
        raise InvalidInput("say which traces: trace_ids or a filter")
    f = filter.model_copy() if filter is not None else TraceFilter()
    if trace_ids is not None:
        if not trace_ids:
            raise InvalidInput("trace_ids is empty")
        f.ids = list(dict.fromkeys(trace_ids))
        missing = set(f.ids) - {t.trace_id for t in traces.iter(TraceFilter(ids=f.ids))}
        if missing:
            raise NotFound(
                f"no trace {sorted(missing)[0]!r}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
    try:
        datasets.get(dataset)
    except NotFound:
        if not create:
            raise
        datasets.create(dataset, description)
    active = datasets.version(dataset, "active")  # fails clearly when the latest version is frozen
    res = TracesToDatasetResult(dataset=dataset, version=active.label, matched=0, added=0)
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal batch
        ids = [r["row_id"] for r in batch]
        present = (
            {r.row_id for r in datasets.rows(dataset, "active", limit=1000, row_ids=ids).rows}
            if ids
            else set()
        )
        new = [r for r in batch if r["row_id"] not in present]
        res.already_present += len(batch) - len(new)
        if new:
            datasets.add_rows(dataset, new, "active")
            res.added += len(new)
        batch = []

    for t in traces.iter(f):
        if limit is not None and res.matched >= limit:
            break
        res.matched += 1
        if t.error:
            res.skipped_errors += 1
            continue
        row = row_of(t)
        if row is None:
            res.skipped_no_text += 1
            continue
        batch.append(row)
        if len(batch) >= min(BATCH, 1000):
            flush()
    if batch:
        flush()
    step = {
        "kind": "traces",
        "filter": f.model_dump(mode="json", exclude_defaults=True),
        "matched": res.matched,
        "added": res.added,
        "skipped": res.skipped_errors + res.skipped_no_text + res.already_present,
    }
    if trace_ids is not None:
        step["filter"] = {"ids": len(f.ids or [])}
    datasets.add_provenance(dataset, step, "active")
    return res
