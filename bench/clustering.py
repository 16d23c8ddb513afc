"""Clustering benchmark (run by hand, never in CI): quality and speed against a BERTopic-style baseline.

Sections (all by default):

  banking   Banking77 test split (3,080 texts) and train+test (13,083), 77 true intents. The anchor, in the same
            process on the same texts: all-MiniLM-L6-v2 on sentence-transformers/torch (fp32) + UMAP
            (n_neighbors=15, n_components=5, min_dist=0, cosine) + HDBSCAN(min_cluster_size=10), BERTopic's
            defaults. Ours: the default pipeline (int8 ONNX MiniLM, neighbour smoothing, auto clusterer,
            outliers, c-TF-IDF keywords, samples, map, offline namer), k chosen by itself. NMI, V-measure and
            ARI against the intents (outliers scored as one label of their own, and again with outliers
            assigned to their nearest cluster), wall time per stage including embedding and model loading.
            Also: our clustering on the anchor's fp32 vectors, and on static (model2vec) vectors; cosine
            agreement of the int8 vectors with fp32.
  scale     100,000 and 1,000,000 synthetic texts: Banking77 tiled with perturbations (dropped and swapped
            words, typos, prefixes and suffixes), embedded for real through the embedding cache (100k; the
            1M set reuses those vectors with small noise), then clustered and named offline, pre-embedded.
  ingest    Sustained incremental embedding: new texts arriving in batches of 256 through the cache, with the
            default embedder, against sentence-transformers/torch on the same texts.

    .venv/bin/python bench/clustering.py [--sections banking,scale,ingest] [--repeat 3] [--no-baseline]

Imports of every library are done before timing starts (a server has them loaded); the ONNX and static
models are built once into the bench's data folder (build time reported, not counted per run). Prints a
table and writes bench/results/clustering-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from opentracy.demo_data import banking77  # noqa: E402

HOME = ROOT / "results" / "clustering-home"


def scores(y: list[str], labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, v_measure_score

    return {
        "nmi": round(float(normalized_mutual_info_score(y, labels)), 4),
        "v_measure": round(float(v_measure_score(y, labels)), 4),
        "ari": round(float(adjusted_rand_score(y, labels)), 4),
    }


def warm_imports(baseline: bool) -> None:
    import onnxruntime  # noqa: F401
    import scipy.cluster.hierarchy  # noqa: F401
    import scipy.optimize  # noqa: F401
    import sklearn.feature_extraction.text  # noqa: F401
    import sklearn.manifold  # noqa: F401
    import tokenizers  # noqa: F401

    if baseline:
        import hdbscan  # noqa: F401
        import sentence_transformers  # noqa: F401
        import torch  # noqa: F401
        import umap  # noqa: F401


# -- the anchor ---------------------------------------------------------------------------------------
def baseline(texts: list[str], y: list[str]) -> dict[str, Any]:
    import hdbscan
    import umap
    from sentence_transformers import SentenceTransformer

    from opentracy.embeddings.build import minilm_path

    t0 = time.perf_counter()
    st = SentenceTransformer(str(minilm_path()), device="cpu")
    t_load = time.perf_counter() - t0
    t = time.perf_counter()
    vec = st.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    t_embed = time.perf_counter() - t
    t = time.perf_counter()
    red = umap.UMAP(n_neighbors=15, n_components=5, min_dist=0.0, metric="cosine", low_memory=False)
    z = red.fit_transform(vec)
    t_umap = time.perf_counter() - t
    t = time.perf_counter()
    labels = hdbscan.HDBSCAN(
        min_cluster_size=10, metric="euclidean", cluster_selection_method="eom", prediction_data=True
    ).fit_predict(z)
    t_hdb = time.perf_counter() - t
    total = time.perf_counter() - t0
    return {
        "clusters": int(labels.max()) + 1,
        "outlier_share": round(float((labels < 0).mean()), 4),
        "scores": scores(y, labels),
        "seconds": {
            "load": round(t_load, 2),
            "embed": round(t_embed, 2),
            "umap": round(t_umap, 2),
            "hdbscan": round(t_hdb, 2),
            "total": round(total, 2),
        },
        "_vectors": np.asarray(vec, dtype=np.float32),
    }


# -- ours -----------------------------------------------------------------------------------------------
def ours(
    texts: list[str],
    y: list[str],
    *,
    vectors: np.ndarray | None = None,
    cohesion: float | None = None,
    embedder: Any = None,
) -> dict[str, Any]:
    from opentracy.clustering import Pipeline
    from opentracy.clustering.name import ClusterSummary, KeywordNamer
    from opentracy.embeddings.onnx import OnnxEmbedder

    t0 = time.perf_counter()
    t_load = 0.0
    t_embed = 0.0
    if vectors is None:
        emb = embedder or OnnxEmbedder(HOME)
        emb._load() if hasattr(emb, "_load") else None
        t_load = time.perf_counter() - t0
        t = time.perf_counter()
        vectors = emb.embed(texts)
        t_embed = time.perf_counter() - t
        cohesion = emb.cluster_cohesion
    t = time.perf_counter()
    res = Pipeline().fit(vectors, texts, cohesion=cohesion)
    t_pipe = time.perf_counter() - t
    t = time.perf_counter()
    names = KeywordNamer().name(
        [
            ClusterSummary(c.size, [k for k, _ in c.keywords], [texts[i] for i in c.representatives])
            for c in res.clusters
        ]
    )
    t_name = time.perf_counter() - t
    total = time.perf_counter() - t0
    return {
        "clusters": res.info["n_clusters"],
        "chosen_by": res.info.get("chosen_by"),
        "target_cohesion": res.info.get("target_cohesion"),
        "outlier_share": res.info["outlier_share"],
        "scores": scores(y, res.labels),
        "scores_outliers_assigned": scores(y, res.nearest),
        "seconds": {
            "load": round(t_load, 3),
            "embed": round(t_embed, 3),
            **{k: v for k, v in res.info["seconds"].items() if k != "clusterer"},
            "pipeline": round(t_pipe, 3),
            "name": round(t_name, 3),
            "total": round(total, 3),
        },
        "examples": [n.name for n in names[:8]],
        "_vectors": vectors,
    }


def med(runs: list[dict[str, Any]], *path: str) -> float:
    vals = []
    for r in runs:
        v: Any = r
        for p in path:
            v = v[p]
        vals.append(v)
    return float(statistics.median(vals))


def section_banking(args: argparse.Namespace, out: dict[str, Any]) -> None:
    from opentracy.embeddings.build import build_onnx, build_static
    from opentracy.embeddings.static import StaticEmbedder

    t = time.perf_counter()
    build_onnx(HOME, log=lambda _m: None)
    out["build_onnx_seconds"] = round(time.perf_counter() - t, 2)
    for split in args.splits.split(","):
        rows = banking77(split)
        texts, y = [r[0] for r in rows], [r[1] for r in rows]
        print(f"\n== Banking77 {split}: {len(texts):,} texts, {len(set(y))} intents")
        base_runs = [] if args.no_baseline else [baseline(texts, y) for _ in range(args.baseline_repeat)]
        our_runs = [ours(texts, y) for _ in range(args.repeat)]
        res: dict[str, Any] = {"n": len(texts)}
        if base_runs:
            fp32 = base_runs[0].pop("_vectors")
            for b in base_runs[1:]:
                b.pop("_vectors")
            res["baseline"] = base_runs
            int8 = our_runs[0]["_vectors"]
            cos = (fp32 * int8).sum(1)
            res["int8_vs_fp32_cosine"] = {
                "mean": round(float(cos.mean()), 4),
                "p1": round(float(np.percentile(cos, 1)), 4),
                "min": round(float(cos.min()), 4),
            }
            on_fp32 = ours(texts, y, vectors=fp32, cohesion=0.80)
            on_fp32.pop("_vectors")
            res["ours_on_fp32_vectors"] = on_fp32
        for r in our_runs:
            r.pop("_vectors")
        res["ours"] = our_runs
        # static embeddings (model2vec distilled from MiniLM)
        t = time.perf_counter()
        build_static(HOME, log=lambda _m: None)
        res["build_static_seconds"] = round(time.perf_counter() - t, 2)
        st = ours(texts, y, embedder=StaticEmbedder(HOME))
        st.pop("_vectors")
        res["ours_static"] = st
        out[f"banking77_{split}"] = res
        rows_out = []
        if base_runs:
            rows_out.append(("baseline (torch+UMAP+HDBSCAN)", base_runs))
        rows_out.append(("ours (default)", our_runs))
        print(
            f"{'':34s} {'k':>5s} {'outl':>6s} {'NMI':>7s} {'V':>7s} {'ARI':>7s} {'NMI*':>7s} {'embed s':>8s} {'total s':>8s}"
        )
        for name, runs in rows_out:
            k = med(runs, "clusters")
            o = med(runs, "outlier_share")
            nmi = med(runs, "scores", "nmi")
            v = med(runs, "scores", "v_measure")
            a = med(runs, "scores", "ari")
            nmi2 = (
                med(runs, "scores_outliers_assigned", "nmi")
                if "scores_outliers_assigned" in runs[0]
                else float("nan")
            )
            e = med(runs, "seconds", "embed")
            tt = med(runs, "seconds", "total")
            print(f"{name:34s} {k:5.0f} {o:6.1%} {nmi:7.4f} {v:7.4f} {a:7.4f} {nmi2:7.4f} {e:8.2f} {tt:8.2f}")
        for name, r in (
            ("ours on fp32 vectors", res.get("ours_on_fp32_vectors")),
            ("ours, static embeddings", st),
        ):
            if r:
                print(
                    f"{name:34s} {r['clusters']:5d} {r['outlier_share']:6.1%} {r['scores']['nmi']:7.4f} "
                    f"{r['scores']['v_measure']:7.4f} {r['scores']['ari']:7.4f} "
                    f"{r['scores_outliers_assigned']['nmi']:7.4f} {r['seconds']['embed']:8.2f} {r['seconds']['total']:8.2f}"
                )
        if base_runs:
            ours_t = med(our_runs, "seconds", "total")
            first = base_runs[0]["seconds"]["total"]  # what a fresh process pays (numba compiles UMAP)
            res["speedup_vs_first_baseline"] = round(first / ours_t, 2)
            res["speedup_vs_median_baseline"] = round(med(base_runs, "seconds", "total") / ours_t, 2)
            print(
                f"speed-up end to end: {res['speedup_vs_first_baseline']:.1f}x against the baseline's first run "
                f"(fresh process, {first:.1f} s), {res['speedup_vs_median_baseline']:.1f}x against its median "
                f"of {len(base_runs)}; int8 vs fp32 cosine {res['int8_vs_fp32_cosine']}"
            )
        print(
            "stage seconds (ours, median):",
            {k: round(med(our_runs, "seconds", k), 3) for k in our_runs[0]["seconds"]},
        )
        print("names:", our_runs[0]["examples"])


# -- synthetic scale ------------------------------------------------------------------------------------
PREFIXES = ["", "", "", "hi, ", "hello! ", "quick question: ", "please help: ", "urgent: ", "hey there, "]
SUFFIXES = ["", "", "", " thanks", " thank you!", " asap", " please", " - sent from my phone", " cheers"]


def perturb(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) > 4 and rng.random() < 0.5:
        del words[rng.randrange(len(words))]
    if len(words) > 3 and rng.random() < 0.3:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    if rng.random() < 0.3:
        i = rng.randrange(len(words))
        w = words[i]
        if len(w) > 3:
            j = rng.randrange(len(w) - 1)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return rng.choice(PREFIXES) + " ".join(words) + rng.choice(SUFFIXES)


def synthetic(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rows = banking77("all")
    rng = random.Random(seed)
    texts, y, seen = [], [], set()
    while len(texts) < n:
        t, c = rows[rng.randrange(len(rows))]
        p = perturb(t, rng)
        if p in seen:
            continue
        seen.add(p)
        texts.append(p)
        y.append(c)
    return texts, y


def section_scale(args: argparse.Namespace, out: dict[str, Any]) -> None:
    from opentracy.clustering import Pipeline
    from opentracy.clustering.name import ClusterSummary, KeywordNamer
    from opentracy.config import Settings
    from opentracy.engine import Engine

    n100 = args.scale_n
    texts, y = synthetic(n100)
    print(f"\n== synthetic: {len(texts):,} distinct perturbed Banking77 texts")
    with Engine(Settings.from_env(home=str(HOME))) as engine:
        svc = engine.clustering
        from opentracy.embeddings.cache import EmbedStats

        st = EmbedStats()
        t = time.perf_counter()
        vec = svc.embed(texts, stats=st)
        t_emb = time.perf_counter() - t
        print(f"embedded via the cache: {st.computed:,} computed, {st.cached:,} cached in {t_emb:.1f} s")
        res: dict[str, Any] = {
            "n": len(texts),
            "embed": {"computed": st.computed, "cached": st.cached, "seconds": round(t_emb, 2)},
        }
        if st.computed > 1000:
            res["embed"]["texts_per_s"] = round(st.computed / t_emb, 1)

        def cluster_and_name(v: np.ndarray, tx: list[str], yy: list[str]) -> dict[str, Any]:
            t0 = time.perf_counter()
            r = Pipeline().fit(v, tx, cohesion=0.80)
            t1 = time.perf_counter()
            KeywordNamer().name(
                [
                    ClusterSummary(c.size, [k for k, _ in c.keywords], [tx[i] for i in c.representatives])
                    for c in r.clusters
                ]
            )
            t2 = time.perf_counter()
            return {
                "clusters": r.info["n_clusters"],
                "outlier_share": r.info["outlier_share"],
                "scores": scores(yy, r.labels),
                "seconds": {
                    **{k: v for k, v in r.info["seconds"].items() if k != "clusterer"},
                    "clusterer": r.info["seconds"].get("clusterer"),
                    "pipeline": round(t1 - t0, 2),
                    "name": round(t2 - t1, 2),
                    "total": round(t2 - t0, 2),
                },
            }

        r100 = cluster_and_name(vec, texts, y)
        res["pre_embedded_100k"] = r100
        print(
            f"{n100:,} pre-embedded: {r100['clusters']} clusters, NMI {r100['scores']['nmi']}, "
            f"cluster+name {r100['seconds']['total']:.1f} s (goal < 30 s) {r100['seconds']}"
        )
        # through the service (cache hit for every text, catalog and artifacts written)
        items = [(f"s_{i}", tx) for i, tx in enumerate(texts)]
        t = time.perf_counter()
        run = svc.run(items, {"previous_run": None})
        res["service_100k_seconds"] = round(time.perf_counter() - t, 2)
        res["service_100k_metrics"] = run.metrics.get("seconds")
        print(f"{n100:,} through ClusteringService.run (warm cache, stored): {res['service_100k_seconds']} s")
        if args.million:
            rng = np.random.default_rng(0)
            reps = args.million // len(texts)
            big = np.concatenate([vec] * reps)
            big += rng.normal(0, 0.01, big.shape).astype(np.float32)
            big /= np.linalg.norm(big, axis=1, keepdims=True)
            bt = texts * reps
            by = y * reps
            r1m = cluster_and_name(big, bt, by)
            res["pre_embedded_1m"] = r1m
            print(
                f"{len(bt):,} pre-embedded: {r1m['clusters']} clusters, NMI {r1m['scores']['nmi']}, "
                f"cluster+name {r1m['seconds']['total']:.1f} s {r1m['seconds']}"
            )
            # static embeddings at that size
            from opentracy.embeddings.static import StaticEmbedder

            se = StaticEmbedder(HOME)
            se._load()
            t = time.perf_counter()
            se.embed(bt[: args.million])
            ts = time.perf_counter() - t
            res["static_embed_1m"] = {"seconds": round(ts, 2), "texts_per_s": round(len(bt) / ts, 1)}
            print(f"static embeddings of {len(bt):,} texts: {ts:.1f} s ({len(bt) / ts:,.0f}/s)")
    out["scale"] = res


def section_ingest(args: argparse.Namespace, out: dict[str, Any]) -> None:
    import tempfile

    from opentracy.config import Settings
    from opentracy.embeddings.st import SentenceTransformerEmbedder
    from opentracy.engine import Engine

    texts, _ = synthetic(args.ingest_n, seed=7)
    texts = [f"{t} #{i}" if i % 2 else t for i, t in enumerate(texts)]
    words = statistics.mean(len(x.split()) for x in texts)
    res: dict[str, Any] = {"texts": len(texts), "mean_words": round(words, 1), "ours_texts_per_s": {}}
    for batch in (256, 1024):
        fresh = tempfile.mkdtemp(prefix="ingest-", dir=HOME)  # an empty cache: every text is new
        with Engine(Settings.from_env(home=fresh)) as engine:
            svc = engine.clustering
            svc.embed(["warm up"])
            t = time.perf_counter()
            for s in range(0, len(texts), batch):
                svc.embed(texts[s : s + batch])
            res["ours_texts_per_s"][batch] = round(len(texts) / (time.perf_counter() - t), 1)
    anchor_n = min(len(texts), 3000)
    st = SentenceTransformerEmbedder()
    st.embed(["warm up"])
    t = time.perf_counter()
    for s in range(0, anchor_n, 256):
        st.embed(texts[s : s + 256])
    res["torch_fp32_texts_per_s"] = round(anchor_n / (time.perf_counter() - t), 1)
    out["ingest"] = res
    print(
        f"\n== ingest: {len(texts):,} new texts ({words:.1f} words avg) through the cache, default embedder: "
        + ", ".join(f"{v:,.0f} texts/s in batches of {b}" for b, v in res["ours_texts_per_s"].items())
        + f" (goal >= 1,000); sentence-transformers fp32: {res['torch_fp32_texts_per_s']:,.0f}/s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sections", default="banking,scale,ingest")
    ap.add_argument("--splits", default="test,all")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline-repeat", type=int, default=1)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--scale-n", type=int, default=100_000)
    ap.add_argument("--million", type=int, default=1_000_000, help="0 to skip the 1M run")
    ap.add_argument("--ingest-n", type=int, default=20_000)
    args = ap.parse_args()
    HOME.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OPENTRACY_MODELS_DIR", str(HOME / "models"))  # one build for every engine here
    warm_imports(not args.no_baseline)
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
    if "banking" in sections:
        section_banking(args, out)
    if "scale" in sections:
        section_scale(args, out)
    if "ingest" in sections:
        section_ingest(args, out)
    path = ROOT / "results" / f"clustering-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
