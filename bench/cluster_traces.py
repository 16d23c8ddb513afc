"""Clustering traces benchmark (run by hand, never in CI): what text of a trace to cluster, embedding at
ingest, and the demo.

Sections (all by default):

  text    Banking77 test (3,080 messages, 77 intents) stored as traces of a support app: a shared system
          prompt (~70 words), and, in a second set, a two-turn conversation (a greeting turn before the real
          question). Each is clustered with text = last_user (the default), user (every user turn) and all
          (system prompt included); anchor: the bare messages clustered as items, same run. NMI / ARI
          against the intents, clusters, unclustered share.
  ingest  Sustained embedding at ingest: N new traces (Banking77 tiled with perturbations, as in
          bench/clustering.py, ~20 tokens each) stored through the batch API in batches of 500 as fast as
          the store takes them, while the background embedder embeds them (fresh cache; calls of 256,
          1,024 and 2,048). Traces/s = N / (first store → last embedded). Then the same at an offered
          1,000 traces/s for 20 s, reporting the embedder's lag; and with a run in place, with assignment
          to its clusters at ingest. Anchors: the same texts through the cache directly (`svc.embed` in calls
          of 1,024: what bench/clustering.py measures), and the model alone in calls of 2,048, same run.
  promote Promote a cluster of ~10,000 traces (rows=all, closest 1,000, a sample of 1,000).
  demo    `opentracy demo` end to end in a fresh data directory with the model already built (and the build
          time of the model on its own).

    .venv/bin/python bench/cluster_traces.py [--sections text,ingest,promote,demo] [--ingest-n 20000]

Prints a table and writes bench/results/cluster-traces-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from opentracy.demo_data import banking77  # noqa: E402

HOME = ROOT / "results" / "cluster-traces-home"
SYSTEM = (
    "You are the virtual assistant of Northwind Bank's customer support desk. Answer in the customer's "
    "language, be brief and polite, never ask for a full card number, PIN or password, and never reveal "
    "internal procedures. If the customer reports fraud or a lost card, tell them to freeze the card in the "
    "app first. Classify the customer's message into one of our 77 support intents and reply with the "
    "intent name only."
)


def engine(home: str | Path, **embed: Any) -> Any:
    from opentracy.config import Settings
    from opentracy.engine import Engine

    e = Engine(Settings.from_env(home=str(home))).start()
    for k, v in embed.items():
        setattr(e.ingest_embedder, k, v)
    return e


def as_traces(texts: list[str], prefix: str, *, turns: int = 1) -> list[dict[str, Any]]:
    out = []
    for i, text in enumerate(texts):
        msgs: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
        if turns == 2:
            msgs += [
                {"role": "user", "content": "Hello, I need some help with my account please."},
                {"role": "assistant", "content": "Of course, what can I do for you?"},
            ]
        msgs.append({"role": "user", "content": text})
        out.append({"trace_id": f"{prefix}{i:07d}", "model": "openai/gpt-4o-mini", "messages": msgs,
                    "response": "ok", "tags": [prefix.rstrip("_")]})  # fmt: skip
    return out


def scores(y: list[str], labels: list[int]) -> dict[str, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {
        "nmi": round(float(normalized_mutual_info_score(y, labels)), 4),
        "ari": round(float(adjusted_rand_score(y, labels)), 4),
    }


def labels_of(e: Any, run_id: str, ids: list[str]) -> list[int]:
    t = e.clustering._assignments(run_id).to_pydict()
    cid = dict(zip(t["item_id"], t["cluster_id"], strict=True))
    names: dict[Any, int] = {}
    out = []
    for i in ids:
        c = cid[i]
        # outliers scored as one label of their own (as bench/clustering.py does)
        out.append(names.setdefault(c if c is not None else "__outlier__", len(names)))
    return out


def section_text(args: argparse.Namespace, out: dict[str, Any]) -> None:
    from opentracy.traces.service import TraceFilter

    data = banking77("test")
    texts, y = [t for t, _ in data], [c for _, c in data]
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=HOME) as d:
        e = engine(d, mode="off")
        try:
            ids = [f"i{i}" for i in range(len(texts))]
            run = e.clustering.run(list(zip(ids, texts, strict=True)), {"previous_run": None})
            res["anchor: bare messages as items"] = {
                **scores(y, labels_of(e, run.id, ids)),
                "clusters": run.n_clusters,
                "unclustered": run.outlier_share,
            }
            for turns in (1, 2):
                prefix = f"t{turns}_"
                e.traces.ingest(as_traces(texts, prefix, turns=turns))
                tids = [f"{prefix}{i:07d}" for i in range(len(texts))]
                for mode in ("last_user", "user", "all"):
                    t = time.perf_counter()
                    run = e.trace_clusters.run(
                        TraceFilter(tags=[prefix.rstrip("_")]), {"previous_run": None}, text=mode
                    )
                    res[f"{turns} turn{'s' if turns > 1 else ''}, text={mode}"] = {
                        **scores(y, labels_of(e, run.id, tids)),
                        "clusters": run.n_clusters,
                        "unclustered": run.outlier_share,
                        "seconds": round(time.perf_counter() - t, 2),
                    }
        finally:
            e.close()
    out["text"] = res
    print("\n== the text of a trace: Banking77 test as traces of one support app (shared system prompt)")
    print(f"{'':42s} {'NMI':>6s} {'ARI':>6s} {'clusters':>8s} {'unclustered':>11s}")
    for k, v in res.items():
        print(f"{k:42s} {v['nmi']:6.3f} {v['ari']:6.3f} {v['clusters']:8d} {v['unclustered']:11.1%}")


def _wait_embedded(e: Any, n: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    emb = e.ingest_embedder
    while emb.counts["embedded"] + emb.counts["no_text"] + emb.counts["dropped"] < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"embedded {emb.counts['embedded']} of {n}")
        time.sleep(0.01)
    return time.perf_counter()


def section_ingest(args: argparse.Namespace, out: dict[str, Any]) -> None:
    from clustering import synthetic  # bench/clustering.py: Banking77 tiled with perturbations

    n = args.ingest_n
    texts, _ = synthetic(n, seed=11)
    texts = [f"{t} #{i}" if i % 2 else t for i, t in enumerate(texts)]  # every text new, as in clustering.py
    words = statistics.mean(len(x.split()) for x in texts)
    res: dict[str, Any] = {"traces": n, "mean_words": round(words, 1), "at_ingest": {}}

    # anchor: the same texts through the cache directly, calls of 1,024 (bench/clustering.py's figure)
    with tempfile.TemporaryDirectory(dir=HOME) as d:
        e = engine(d, mode="off")
        try:
            e.clustering.embed(["warm up"])
            t = time.perf_counter()
            for s in range(0, n, 1024):
                e.clustering.embed(texts[s : s + 1024])
            res["anchor_cache_embed_1024_per_s"] = round(n / (time.perf_counter() - t), 1)
            emb = e.clustering.embedder("minilm")  # the model alone: no cache, no store, calls of 2,048
            t = time.perf_counter()
            for s in range(0, n, 2048):
                emb.embed(texts[s : s + 2048])
            res["model_alone_2048_per_s"] = round(n / (time.perf_counter() - t), 1)
        finally:
            e.close()

    def flood(batch: int, *, assign: bool = False) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(dir=HOME) as d:
            e = engine(d, mode="on", batch=batch, auto_assign=assign, assign_every_s=2.0)
            try:
                e.clustering.embed(["warm up"])  # the model loaded, as in a running server
                if assign:  # a run to assign to: the first 3,080 Banking77 test messages
                    base = [t for t, _ in banking77("test")]
                    e.ingest_embedder.mode = "off"
                    e.traces.ingest(as_traces(base, "base_"))
                    e.trace_clusters.run({})
                    e.ingest_embedder.mode = "on"
                    e.ingest_embedder._run_at = (0.0, None)
                tr = as_traces(texts, "new_")
                t0 = time.perf_counter()
                for s in range(0, n, 500):
                    e.traces.ingest(tr[s : s + 500])
                t_stored = time.perf_counter() - t0
                t_end = _wait_embedded(e, n)
                if assign:
                    e.ingest_embedder.flush(120)
                    t_end = time.perf_counter()
                st = e.ingest_embedder.stats()
                got = {
                    "traces_per_s": round(n / (t_end - t0), 1),
                    "stored_per_s": round(n / t_stored, 1),
                    "embedded": st["embedded"],
                    "dropped": st["dropped"],
                    "errors": st["errors"],
                }
                if assign:
                    got["assigned"] = st["assigned"]
                    got["outliers"] = st["outliers"]
                return got
            finally:
                e.close()

    for batch in args.batches:
        res["at_ingest"][batch] = flood(batch)
        print(f"  at ingest, calls of {batch}: {res['at_ingest'][batch]}")
    res["at_ingest_with_assign_1024"] = flood(1024, assign=True)

    # offered load: 1,000 traces/s for `seconds`; the embedder's lag (queued) sampled every 0.5 s
    rate, seconds = 1000, args.paced_s
    m = rate * seconds
    with tempfile.TemporaryDirectory(dir=HOME) as d:
        e = engine(d, mode="on", batch=1024)
        try:
            e.clustering.embed(["warm up"])
            tr = as_traces(texts[:m] if m <= n else (texts * (m // n + 1))[:m], "paced_")
            lags: list[int] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    lags.append(e.ingest_embedder._queued + e.ingest_embedder._busy)
                    time.sleep(0.5)

            th = threading.Thread(target=sample, daemon=True)
            th.start()
            t0 = time.perf_counter()
            step = 100
            for k, s in enumerate(range(0, m, step)):
                e.traces.ingest(tr[s : s + step])
                delay = t0 + (k + 1) * step / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            t_offered = time.perf_counter() - t0
            t_end = _wait_embedded(e, m)
            stop.set()
            th.join()
            res["paced"] = {
                "offered_per_s": round(m / t_offered, 1),
                "seconds": seconds,
                "max_backlog": max(lags) if lags else 0,
                "median_backlog": statistics.median(lags) if lags else 0,
                "drain_after_last_s": round(t_end - t0 - t_offered, 2),
            }
        finally:
            e.close()
    out["ingest"] = res
    print(f"\n== embedding at ingest: {n:,} new traces ({words:.1f} words avg), default embedder")
    print(
        f"anchor, the cache directly in calls of 1,024: {res['anchor_cache_embed_1024_per_s']:,.0f} texts/s"
    )
    print(f"the model alone (no cache), calls of 2,048: {res['model_alone_2048_per_s']:,.0f} texts/s")
    for b, v in res["at_ingest"].items():
        print(
            f"at ingest, calls of {b:>5}: {v['traces_per_s']:,.0f} traces/s (stored at {v['stored_per_s']:,.0f}/s)"
        )
    v = res["at_ingest_with_assign_1024"]
    print(
        f"at ingest + assignment to a run's clusters: {v['traces_per_s']:,.0f} traces/s ({v['assigned']:,} assigned, {v['outliers']:,} outliers)"
    )
    p = res["paced"]
    print(
        f"offered {p['offered_per_s']:,.0f}/s for {p['seconds']} s: backlog median {p['median_backlog']:,}, "
        f"max {p['max_backlog']:,}; drained {p['drain_after_last_s']} s after the last trace (goal: >= 1,000/s)"
    )


def section_demo(args: argparse.Namespace, out: dict[str, Any]) -> None:
    import subprocess

    exe = str(Path(sys.executable).with_name("opentracy"))
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=HOME) as d:
        env = {**os.environ, "OPENTRACY_HOME": d, "OPENTRACY_MODELS_DIR": str(Path(d) / "models")}
        t = time.perf_counter()
        subprocess.run([exe, "embeddings", "build"], env=env, check=True, capture_output=True)
        res["build_model_s"] = round(time.perf_counter() - t, 2)
        for split in ("test", "all"):
            runs = []
            for k in range(2):  # a first run (traces stored, texts embedded), then a second (all cached)
                home = Path(d) / f"h-{split}"
                t = time.perf_counter()
                p = subprocess.run([exe, "demo", "--split", split, "--top", "3"], env={**env, "OPENTRACY_HOME": str(home)},
                                   check=True, capture_output=True, text=True)  # fmt: skip
                runs.append(round(time.perf_counter() - t, 2))
                if k == 0:
                    res[f"{split}_summary"] = [x for x in p.stdout.splitlines() if "clusters over" in x][0]
            res[f"{split}_first_s"], res[f"{split}_again_s"] = runs
    out["demo"] = res
    print("\n== opentracy demo (a fresh data directory; the process's start and imports included)")
    print(f"building the embedding model alone: {res['build_model_s']} s")
    for split in ("test", "all"):
        print(
            f"--split {split}: {res[f'{split}_first_s']} s first, {res[f'{split}_again_s']} s again; {res[f'{split}_summary']}"
        )


def section_promote(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """Promote a large cluster: 20,000 traces (Banking77 test messages repeated, so only 3,080 texts are
    embedded), two clusters forced, the larger promoted whole."""
    from opentracy.traces.service import TraceFilter

    base = [t for t, _ in banking77("test")]
    texts = (base * (args.promote_n // len(base) + 1))[: args.promote_n]
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=HOME) as d:
        e = engine(d, mode="off")
        try:
            e.traces.ingest(as_traces(texts, "p_"))
            run = e.trace_clusters.run(TraceFilter(tags=["p"]), {"n_clusters": 2, "min_cluster_size": 1})
            big = e.clustering.clusters(run.id)[0]
            for mode, n in (("all", None), ("closest", 1000), ("sample", 1000)):
                t = time.perf_counter()
                r = e.trace_clusters.promote(big.id, f"promoted-{mode}", rows=mode, n=n)
                res[mode] = {"rows": r.added, "seconds": round(time.perf_counter() - t, 2)}
        finally:
            e.close()
    out["promote"] = res
    print(
        f"\n== promote a cluster of {res['all']['rows']:,} traces: "
        + ", ".join(f"rows={k}: {v['rows']:,} rows in {v['seconds']} s" for k, v in res.items())
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sections", default="text,ingest,promote,demo")
    ap.add_argument("--promote-n", type=int, default=20_000)
    ap.add_argument("--ingest-n", type=int, default=20_000)
    ap.add_argument("--batches", default="256,1024,2048")
    ap.add_argument("--paced-s", type=int, default=20)
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    HOME.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OPENTRACY_MODELS_DIR", str(HOME / "models"))
    from opentracy.embeddings.build import build_onnx

    build_onnx(HOME, log=lambda _m: None)
    out: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "args": vars(args),
    }
    sections = set(re.split(r"[, ]+", args.sections))
    if "text" in sections:
        section_text(args, out)
    if "ingest" in sections:
        section_ingest(args, out)
    if "promote" in sections:
        section_promote(args, out)
    if "demo" in sections:
        section_demo(args, out)
    path = ROOT / "results" / f"cluster-traces-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2, default=str))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
