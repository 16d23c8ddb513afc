"""Clustering runs, persisted: the service every face (jobs, HTTP, CLI, demo) calls.

    svc = engine.clustering
    run = svc.run([("t_1", "how do I reset my card pin"), ...])        # embed, cluster, name, store
    svc.clusters(run.id)                  # named clusters, largest first
    svc.samples("cl_…")                   # representative and diverse items
    svc.members("cl_…", limit=100)        # the items of a cluster, closest to its centre first
    svc.assign([("t_9", "my card pin is blocked")])   # new items into the latest run's clusters
    svc.submit(items, config)             # the same run as a job (progress, cancel)

Inputs are (item_id, text) pairs, so any source can feed it (the traces store passes trace ids and
prompts). A run is stored all at once when it succeeds: the catalog gets the run, its clusters and their
stats (tables `clustering_runs`, `clusters`, `clustering_run_clusters`); per-item assignments, 2-D map
coordinates and the centroids are Parquet artifacts. Bad input is refused before anything is written.

Cluster ids are stable: a run matches its clusters to the previous run's (same embedder) by centroid
(matching.py), and a matched cluster keeps its id and its name.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field
from sqlalchemy import select

from opentracy.clustering.matching import match
from opentracy.clustering.name import ClusterSummary, KeywordNamer, LLMNamer, Named, Namer
from opentracy.clustering.pipeline import Pipeline, PipelineResult
from opentracy.embeddings import Embedder, resolve_embedder
from opentracy.embeddings.cache import EmbeddingCache, EmbedStats
from opentracy.errors import InvalidInput, NotFound
from opentracy.store.artifacts import ArtifactStore
from opentracy.store.catalog import Catalog
from opentracy.store.tables import ClusteringRunRecord, ClusterRecord, RunClusterRecord, utcnow

Progress = Callable[[float, str], None]
Items = Sequence[tuple[str, str]]

MAX_TEXT_CHARS = 2000  # sample texts kept in the catalog are cut to this
MAX_ASSIGNMENT_FILES = 16  # incremental assignment files of a run before they are merged into one


class ClusteringConfig(BaseModel):
    """Everything a run depends on (recorded with the run)."""

    embedder: str = Field(
        "minilm", description="minilm | minilm-torch | static | st:<model> | provider/model"
    )
    reducer: Literal["neighbours", "pca", "none"] = "neighbours"
    clusterer: Literal["auto", "kmeans", "hdbscan"] = "auto"
    n_clusters: int | None = Field(None, ge=1, description="force k (auto, kmeans); None: chosen by cohesion")
    target_cohesion: float | None = Field(None, gt=0, lt=1, description="auto: finer clusters when higher")
    min_cluster_size: int = Field(5, ge=1)
    outlier_z: float = Field(4.0, gt=0)
    assign_outliers: bool = False
    namer: Literal["auto", "keywords", "llm"] = "auto"
    naming_model: str | None = None
    rename: bool = False
    samples: int = Field(5, ge=1, le=50)
    match_threshold: float = Field(0.85, gt=0, le=1)
    previous_run: str | None = "latest"
    seed: int = 0


class Sample(BaseModel):
    item_id: str
    text: str
    similarity: float


class ClusterInfo(BaseModel):
    id: str
    run_id: str
    name: str
    description: str
    namer: str
    position: int
    size: int
    share: float
    cohesion: float
    keywords: list[str]
    representatives: list[Sample]
    diverse: list[Sample]
    x: float
    y: float
    matched_similarity: float | None = None
    new: bool


class RunInfo(BaseModel):
    id: str
    status: str
    source: dict[str, Any]
    config: dict[str, Any]
    embedder: str
    namer: str | None
    n_items: int
    n_clusters: int
    n_outliers: int
    outlier_share: float
    previous_run_id: str | None
    job_id: str | None
    metrics: dict[str, Any]
    created_at: datetime
    finished_at: datetime | None


class Member(BaseModel):
    item_id: str
    text: str
    cluster_id: str | None  # None: an outlier
    nearest_cluster_id: str | None
    similarity: float
    x: float
    y: float


class Assignment(BaseModel):
    item_id: str
    cluster_id: str | None
    nearest_cluster_id: str | None
    similarity: float


class AssignResult(BaseModel):
    run_id: str
    assigned: int
    outliers: int
    skipped: list[str]  # ids already in the run (not assigned again)
    items: list[Assignment]
    embed: dict[str, Any]


def make_config(config: ClusteringConfig | dict[str, Any] | None) -> ClusteringConfig:
    """A config from a dict (API, job params), with a clear error for a bad field."""
    if isinstance(config, ClusteringConfig):
        return config
    from pydantic import ValidationError

    try:
        return ClusteringConfig(**(config or {}))
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "config"
        raise InvalidInput(f"clustering config: {where}: {err.get('msg')}") from None


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


def validate_items(items: Items) -> tuple[list[str], list[str]]:
    """(ids, texts), or InvalidInput naming the first bad row (0-based, in input order)."""
    ids: list[str] = []
    texts: list[str] = []
    seen: dict[str, int] = {}
    for i, it in enumerate(items):
        try:
            item_id, text = it
        except (TypeError, ValueError):
            raise InvalidInput("each item must be a pair (item_id, text)", row=i) from None
        if not isinstance(item_id, str) or not item_id.strip():
            raise InvalidInput(f"item_id must be a non-empty string, not {item_id!r}", row=i)
        if not isinstance(text, str):
            raise InvalidInput(f"text of item {item_id!r} must be a string, not {type(text).__name__}", row=i)
        if not text.strip():
            raise InvalidInput(f"text of item {item_id!r} is empty", row=i)
        if item_id in seen:
            raise InvalidInput(f"item_id {item_id!r} appears twice (rows {seen[item_id]} and {i})", row=i)
        seen[item_id] = i
        ids.append(item_id)
        texts.append(text)
    return ids, texts


class ClusteringService:
    def __init__(
        self,
        catalog: Catalog,
        artifacts: ArtifactStore,
        *,
        home: str | os.PathLike[str],
        gateway: Callable[[], Any] | None = None,
    ) -> None:
        self.catalog = catalog
        self.artifacts = artifacts
        self.home = Path(home)
        self.cache = EmbeddingCache(catalog, artifacts)
        self._gateway = gateway
        self._embedders: dict[str, Embedder] = {}
        self._lock = threading.Lock()
        self._assign_lock = threading.RLock()
        self._known: dict[str, tuple[list[str], set[str]]] = {}  # run id -> (assignment keys read, item ids)

    # -- pieces ------------------------------------------------------------------------------------
    def gateway(self) -> Any:
        return self._gateway() if self._gateway is not None else None

    def embedder(self, spec: str | Embedder | None = None) -> Embedder:
        if isinstance(spec, Embedder):
            return spec
        key = spec or "minilm"
        with self._lock:
            e = self._embedders.get(key)
            if e is None:
                needs_gateway = "/" in key and not key.startswith("st:")
                e = resolve_embedder(key, home=self.home, gateway=self.gateway() if needs_gateway else None)
                self._embedders[key] = e
            return e

    def embed(
        self, texts: Sequence[str], embedder: str | Embedder | None = None, *, stats: EmbedStats | None = None
    ) -> np.ndarray:
        """Vectors for texts through the cache (what ingest calls to embed traces as they arrive)."""
        return self.cache.embed(self.embedder(embedder), texts, stats=stats)

    def namer(self, config: ClusteringConfig) -> Namer:
        model = config.naming_model or os.environ.get("OPENTRACY_NAMING_MODEL") or None
        if config.namer == "keywords" or (config.namer == "auto" and not model):
            return KeywordNamer()
        if not model:
            raise InvalidInput(
                "namer 'llm' needs a model: set naming_model (e.g. openai/gpt-4o-mini) or OPENTRACY_NAMING_MODEL"
            )
        return LLMNamer(self.gateway(), model)

    def pipeline(self, config: ClusteringConfig) -> Pipeline:
        from opentracy.clustering.cluster import AutoClusterer, HDBSCANClusterer, KMeansClusterer
        from opentracy.clustering.reduce import NeighbourSmoothing, NoReduction, PCAReduction

        reducer = {
            "neighbours": lambda: NeighbourSmoothing(seed=config.seed),
            "pca": lambda: PCAReduction(seed=config.seed),
            "none": NoReduction,
        }[config.reducer]()
        if config.clusterer == "kmeans":
            if not config.n_clusters:
                raise InvalidInput("clusterer 'kmeans' needs n_clusters")
            clusterer: Any = KMeansClusterer(config.n_clusters, seed=config.seed)
        elif config.clusterer == "hdbscan":
            clusterer = HDBSCANClusterer(min_cluster_size=max(2, config.min_cluster_size))
        else:
            clusterer = AutoClusterer(
                target_cohesion=config.target_cohesion, n_clusters=config.n_clusters, seed=config.seed
            )
        return Pipeline(
            reducer=reducer,
            clusterer=clusterer,
            min_cluster_size=config.min_cluster_size,
            outlier_z=config.outlier_z,
            assign_outliers=config.assign_outliers,
            samples=config.samples,
            seed=config.seed,
        )

    # -- a run -------------------------------------------------------------------------------------
    def run(
        self,
        items: Items,
        config: ClusteringConfig | dict[str, Any] | None = None,
        *,
        source: dict[str, Any] | None = None,
        progress: Progress | None = None,
        job_id: str | None = None,
    ) -> RunInfo:
        """Embed, cluster, name and store. Returns the stored run."""
        import time

        cfg = make_config(config)
        ids, texts = validate_items(items)
        if not ids:
            raise InvalidInput("nothing to cluster: no items given")
        say = progress or (lambda _f, _m: None)
        embedder = self.embedder(cfg.embedder)
        namer = self.namer(cfg)
        pipeline = self.pipeline(cfg)
        previous = self._previous_run(cfg, embedder.model_id)
        t0 = time.perf_counter()

        say(0.0, f"embedding {len(texts):,} items with {embedder.model_id}")
        stats = EmbedStats()
        vectors = self.cache.embed(
            embedder,
            texts,
            stats=stats,
            progress=lambda d, t: say(0.6 * d / max(t, 1), f"embedding: {d:,}/{t:,} new texts"),
        )
        t_embed = time.perf_counter() - t0

        say(0.6, "clustering")
        result = pipeline.fit(
            vectors,
            texts,
            cohesion=embedder.cluster_cohesion,
            progress=lambda f, m: say(0.6 + 0.25 * f, m),
        )
        t_cluster = time.perf_counter() - t0 - t_embed

        # stable ids: match to the previous run's clusters
        prev_ids: list[str] = []
        matches: list[tuple[int | None, float]] = [(None, 0.0)] * len(result.clusters)
        if previous is not None:
            prev_ids, prev_centroids, _ = self._centroids(previous)
            matches = match(prev_centroids, result.centroids, cfg.match_threshold)
        cluster_ids = [prev_ids[m] if m is not None else _new_id("cl") for m, _ in matches]
        existing = self._cluster_records(cluster_ids)

        say(0.85, f"naming {len(result.clusters)} clusters")
        t1 = time.perf_counter()
        to_name = [
            i
            for i, cid in enumerate(cluster_ids)
            if cid not in existing
            or cfg.rename
            or (existing[cid].namer.startswith("keywords") and isinstance(namer, LLMNamer))
        ]
        summaries = [self._summary(result, texts, i) for i in to_name]
        names: dict[int, Named] = dict(zip(to_name, namer.name(summaries), strict=True))
        t_name = time.perf_counter() - t1

        run_id = _new_id("cr")
        say(0.95, "storing")
        art = self._write_artifacts(run_id, ids, texts, result, cluster_ids)
        n_out = result.n_outliers if not cfg.assign_outliers else 0
        used = sorted({n.namer for n in names.values()})
        metrics = {
            **{k: v for k, v in result.info.items() if k not in ("pipeline",)},
            "seconds": {
                "embed": round(t_embed, 3),
                "cluster": round(t_cluster, 3),
                "name": round(t_name, 3),
                **(result.info.get("seconds") or {}),
            },
            "embedding": {
                "texts": stats.texts,
                "distinct": stats.distinct,
                "cached": stats.cached,
                "computed": stats.computed,
            },
            "matched": sum(1 for m, _ in matches if m is not None),
            "namers": used,
            "named": len(names),
        }
        now = utcnow()
        with self.catalog.session() as s:
            s.add(
                ClusteringRunRecord(
                    id=run_id,
                    status="succeeded",
                    source=source or {"kind": "items", "count": len(ids)},
                    config=cfg.model_dump(mode="json") | {"pipeline": result.info.get("pipeline")},
                    embedder=embedder.model_id,
                    namer=namer.id if len(used) <= 1 else "mixed",
                    n_items=len(ids),
                    n_clusters=len(result.clusters),
                    n_outliers=n_out,
                    previous_run_id=previous,
                    job_id=job_id,
                    metrics=metrics,
                    artifacts=art,
                    created_at=now,
                    finished_at=now,
                    updated_at=now,
                )
            )
            s.flush()
            for c, cid in zip(result.clusters, cluster_ids, strict=True):
                named = names.get(c.index)
                rec = s.get(ClusterRecord, cid)
                if rec is None:
                    assert named is not None
                    s.add(
                        ClusterRecord(
                            id=cid,
                            name=named.name,
                            description=named.description,
                            namer=named.namer,
                            first_run_id=run_id,
                            last_run_id=run_id,
                        )
                    )
                else:
                    rec.last_run_id = run_id
                    rec.updated_at = now
                    if named is not None and rec.namer != "user":
                        rec.name, rec.description, rec.namer = named.name, named.description, named.namer
                m_sim = matches[c.index][1] if matches[c.index][0] is not None else None
                s.add(
                    RunClusterRecord(
                        run_id=run_id,
                        cluster_id=cid,
                        position=c.index,
                        size=c.size,
                        cohesion=round(c.cohesion, 5),
                        threshold=round(c.threshold, 5),
                        keywords=[[t, sc] for t, sc in c.keywords],
                        representatives=self._samples(ids, texts, result.similarity, c.representatives),
                        diverse=self._samples(ids, texts, result.similarity, c.diverse),
                        x=c.x,
                        y=c.y,
                        matched_similarity=None if m_sim is None else round(m_sim, 5),
                    )
                )
        say(1.0, "done")
        return self.get_run(run_id)

    # -- incremental assignment --------------------------------------------------------------------
    def assign(
        self, items: Items, run_id: str | None = None, *, assign_outliers: bool | None = None
    ) -> AssignResult:
        """Put new items into an existing run's clusters (the latest run by default) without re-running:
        each goes to its nearest centroid, or is an outlier when less similar than that cluster's
        threshold (unless assign_outliers). Items already in the run are skipped and listed. Calls are
        serialised in this process, so two of them never assign one item twice."""
        with self._assign_lock:
            return self._assign(items, run_id, assign_outliers=assign_outliers)

    def _assign(self, items: Items, run_id: str | None, *, assign_outliers: bool | None) -> AssignResult:
        ids, texts = validate_items(items)
        run = self._run_record(run_id)
        cfg = ClusteringConfig(**{k: v for k, v in run.config.items() if k in ClusteringConfig.model_fields})
        force = cfg.assign_outliers if assign_outliers is None else assign_outliers
        known = self.assigned_ids(run.id)
        skipped = [i for i in ids if i in known]
        keep = [j for j, i in enumerate(ids) if i not in known]
        ids = [ids[j] for j in keep]
        texts = [texts[j] for j in keep]
        embedder = self.embedder(cfg.embedder)
        if embedder.model_id != run.embedder:
            raise InvalidInput(
                f"run {run.id} was embedded with {run.embedder}, but {cfg.embedder!r} is now {embedder.model_id}; "
                "start a new run"
            )
        stats = EmbedStats()
        vectors = self.cache.embed(embedder, texts, stats=stats) if ids else np.zeros((0, 1), np.float32)
        cids, centroids, thresholds = self._centroids(run.id)
        out: list[Assignment] = []
        if ids:
            from opentracy.clustering.cluster._kmeans import nearest

            idx, sim = nearest(vectors, centroids)
            inside = force | (sim >= thresholds[idx])
            xy = self._place(run.id, vectors, idx, centroids)
            table = pa.table(
                {
                    "item_id": pa.array(ids, pa.string()),
                    "text": pa.array(texts, pa.string()),
                    "cluster_id": pa.array(
                        [cids[i] if ok else None for i, ok in zip(idx, inside, strict=True)]
                    ),
                    "nearest_cluster_id": pa.array([cids[i] for i in idx], pa.string()),
                    "similarity": pa.array(sim.astype(np.float32)),
                    "x": pa.array(xy[:, 0].astype(np.float32)),
                    "y": pa.array(xy[:, 1].astype(np.float32)),
                    "batch": pa.array(np.full(len(ids), len(run.artifacts.get("assignments", [])), np.int32)),
                }
            )
            key = self._put_table(table, "clustering/assignments")
            counts = np.bincount(idx[inside], minlength=len(cids))
            with self.catalog.session() as s:
                rec = s.get(ClusteringRunRecord, run.id)
                assert rec is not None
                keys = [*rec.artifacts.get("assignments", []), key]
                merged_away: list[str] = []
                if len(keys) > 1 + MAX_ASSIGNMENT_FILES:
                    # many small batches (e.g. assignment at ingest): merge the incremental files into one
                    merged = pa.concat_tables([pq.read_table(self.artifacts.verify(k)) for k in keys[1:]])
                    merged_away = keys[1:]
                    keys = [keys[0], self._put_table(merged, "clustering/assignments")]
                rec.artifacts = {**rec.artifacts, "assignments": keys}
                rec.n_items += len(ids)
                rec.n_outliers += int((~inside).sum())
                rec.updated_at = utcnow()
                for r in s.scalars(select(RunClusterRecord).where(RunClusterRecord.run_id == run.id)):
                    j = cids.index(r.cluster_id)
                    if counts[j]:
                        r.size += int(counts[j])
            for k in set(merged_away) - set(keys):
                self.artifacts.delete(k)
            with self._lock:
                cached = self._known.get(run.id)
                if cached is not None:
                    cached[1].update(ids)
                    cached[0][:] = keys
            out = [
                Assignment(
                    item_id=i,
                    cluster_id=cids[c] if ok else None,
                    nearest_cluster_id=cids[c],
                    similarity=round(float(sv), 5),
                )
                for i, c, sv, ok in zip(ids, idx, sim, inside, strict=True)
            ]
        return AssignResult(
            run_id=run.id,
            assigned=sum(1 for a in out if a.cluster_id is not None),
            outliers=sum(1 for a in out if a.cluster_id is None),
            skipped=skipped,
            items=out,
            embed={"cached": stats.cached, "computed": stats.computed, "model_id": embedder.model_id},
        )

    # -- reading -----------------------------------------------------------------------------------
    def get_run(self, run_id: str | None = None) -> RunInfo:
        return _run_info(self._run_record(run_id))

    def runs(self, limit: int = 20) -> list[RunInfo]:
        with self.catalog.session() as s:
            rows = s.scalars(
                select(ClusteringRunRecord).order_by(ClusteringRunRecord.created_at.desc()).limit(limit)
            ).all()
            return [_run_info(r) for r in rows]

    def clusters(self, run_id: str | None = None) -> list[ClusterInfo]:
        run = self._run_record(run_id)
        with self.catalog.session() as s:
            rows = s.execute(
                select(RunClusterRecord, ClusterRecord)
                .join(ClusterRecord, ClusterRecord.id == RunClusterRecord.cluster_id)
                .where(RunClusterRecord.run_id == run.id)
                .order_by(RunClusterRecord.position)
            ).all()
            return [_cluster_info(rc, c, run) for rc, c in rows]

    def cluster(self, cluster_id: str, run_id: str | None = None) -> ClusterInfo:
        with self.catalog.session() as s:
            c = s.get(ClusterRecord, cluster_id)
            if c is None:
                raise NotFound(f"no cluster {cluster_id!r}")
            rid = run_id or c.last_run_id
            rc = s.get(RunClusterRecord, (rid, cluster_id))
            if rc is None:
                raise NotFound(f"cluster {cluster_id!r} is not in run {rid!r}")
            run = s.get(ClusteringRunRecord, rid)
            assert run is not None
            return _cluster_info(rc, c, run)

    def samples(self, cluster_id: str, run_id: str | None = None) -> dict[str, list[Sample]]:
        c = self.cluster(cluster_id, run_id)
        return {"representatives": c.representatives, "diverse": c.diverse}

    def members(
        self, cluster_id: str, run_id: str | None = None, *, limit: int | None = 100, offset: int = 0
    ) -> list[Member]:
        """A cluster's items, closest to its centre first."""
        c = self.cluster(cluster_id, run_id)
        t = self._assignments(c.run_id)
        import pyarrow.compute as pc

        t = t.filter(pc.equal(t.column("cluster_id"), cluster_id))
        t = t.sort_by([("similarity", "descending")])
        t = t.slice(offset, limit) if limit is not None else t.slice(offset)
        return [_member(r) for r in t.to_pylist()]

    def outliers(
        self, run_id: str | None = None, *, limit: int | None = 100, offset: int = 0
    ) -> list[Member]:
        run = self._run_record(run_id)
        t = self._assignments(run.id)
        t = t.filter(t.column("cluster_id").is_null())
        t = t.slice(offset, limit) if limit is not None else t.slice(offset)
        return [_member(r) for r in t.to_pylist()]

    def map(self, run_id: str | None = None, *, limit: int = 20_000, seed: int = 0) -> list[Member]:
        """Items with their 2-D coordinates (a random sample of at most `limit`)."""
        run = self._run_record(run_id)
        t = self._assignments(run.id)
        if t.num_rows > limit:
            keep = np.sort(np.random.default_rng(seed).choice(t.num_rows, limit, replace=False))
            t = t.take(pa.array(keep))
        return [_member(r) for r in t.to_pylist()]

    def rename(self, cluster_id: str, name: str, description: str | None = None) -> ClusterInfo:
        name = name.strip()
        if not name or len(name) > 200:
            raise InvalidInput("a cluster name must have 1 to 200 characters")
        with self.catalog.session() as s:
            c = s.get(ClusterRecord, cluster_id)
            if c is None:
                raise NotFound(f"no cluster {cluster_id!r}")
            c.name, c.namer, c.updated_at = name, "user", utcnow()
            if description is not None:
                c.description = description
        return self.cluster(cluster_id)

    # -- jobs --------------------------------------------------------------------------------------
    def stage_items(self, items: Items, staging_dir: Path) -> str:
        """Write items to a staged Parquet file for a job (validated first); returns its file name."""
        ids, texts = validate_items(items)
        if not ids:
            raise InvalidInput("nothing to cluster: no items given")
        staging_dir.mkdir(parents=True, exist_ok=True)
        name = f"clustering-{secrets.token_hex(8)}.parquet"
        pq.write_table(pa.table({"item_id": ids, "text": texts}), staging_dir / name, compression="zstd")
        return name

    def find_job_run(self, job_id: str) -> RunInfo | None:
        with self.catalog.session() as s:
            r = s.scalars(select(ClusteringRunRecord).where(ClusteringRunRecord.job_id == job_id)).first()
            return _run_info(r) if r is not None else None

    # -- internals ---------------------------------------------------------------------------------
    def _run_record(self, run_id: str | None) -> ClusteringRunRecord:
        with self.catalog.session() as s:
            if run_id is None:
                r = s.scalars(
                    select(ClusteringRunRecord)
                    .where(ClusteringRunRecord.status == "succeeded")
                    .order_by(ClusteringRunRecord.created_at.desc(), ClusteringRunRecord.id.desc())
                ).first()
                if r is None:
                    raise NotFound("no clustering run yet")
            else:
                r = s.get(ClusteringRunRecord, run_id)
                if r is None:
                    raise NotFound(f"no clustering run {run_id!r}")
            return r

    def _previous_run(self, cfg: ClusteringConfig, model_id: str) -> str | None:
        if not cfg.previous_run:
            return None
        if cfg.previous_run != "latest":
            r = self._run_record(cfg.previous_run)
            if r.embedder != model_id:
                raise InvalidInput(
                    f"run {r.id} used embedder {r.embedder}; its clusters cannot be matched to {model_id}"
                )
            return r.id
        with self.catalog.session() as s:
            return s.scalars(
                select(ClusteringRunRecord.id)
                .where(ClusteringRunRecord.status == "succeeded", ClusteringRunRecord.embedder == model_id)
                .order_by(ClusteringRunRecord.created_at.desc(), ClusteringRunRecord.id.desc())
            ).first()

    def _cluster_records(self, ids: list[str]) -> dict[str, ClusterRecord]:
        if not ids:
            return {}
        with self.catalog.session() as s:
            return {r.id: r for r in s.scalars(select(ClusterRecord).where(ClusterRecord.id.in_(ids)))}

    def _centroids(self, run_id: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        run = self._run_record(run_id)
        t = pq.read_table(self.artifacts.verify(run.artifacts["centroids"]))
        vec = t.column("centroid").combine_chunks()
        d = vec.type.list_size
        cent = vec.values.to_numpy(zero_copy_only=False).reshape(-1, d).astype(np.float32)
        return (
            t.column("cluster_id").to_pylist(),
            cent,
            t.column("threshold").to_numpy().astype(np.float32),
        )

    def _assignments(self, run_id: str) -> pa.Table:
        run = self._run_record(run_id)
        tables = [pq.read_table(self.artifacts.verify(k)) for k in run.artifacts.get("assignments", [])]
        tables = [t.drop_columns([c for c in ("batch",) if c in t.column_names]) for t in tables]
        return pa.concat_tables(tables) if tables else pa.table({})

    def assigned_ids(self, run_id: str) -> set[str]:
        """Ids of the items in a run (its own and those assigned since). Kept in memory for the last few
        runs asked about and read incrementally: only assignment files not seen before are read. The set
        is shared: read it, do not change it."""
        run = self._run_record(run_id)
        keys = list(run.artifacts.get("assignments", []))
        with self._lock:
            cached = self._known.get(run.id)
            if cached is not None and cached[0] == keys[: len(cached[0])] and len(cached[0]) <= len(keys):
                seen, ids = cached
                new = keys[len(seen) :]
            else:
                ids, new = set(), keys
        for k in new:
            ids.update(pq.read_table(self.artifacts.verify(k), columns=["item_id"]).column(0).to_pylist())
        with self._lock:
            self._known[run.id] = (keys, ids)
            while len(self._known) > 4:
                self._known.pop(next(iter(self._known)))
        return ids

    def _place(self, run_id: str, vectors: np.ndarray, idx: np.ndarray, centroids: np.ndarray) -> np.ndarray:
        """Map positions of newly assigned items: next to their cluster's position on the map, offset by
        their distance from its centre (the run's layout is not recomputed)."""
        with self.catalog.session() as s:
            rows = s.scalars(select(RunClusterRecord).where(RunClusterRecord.run_id == run_id)).all()
        pos = {r.cluster_id: (r.x, r.y) for r in rows}
        cids = self._centroids(run_id)[0]
        cxy = np.array([pos.get(c, (0.0, 0.0)) for c in cids], dtype=np.float32)
        rng = np.random.default_rng(len(vectors))
        angle = rng.uniform(0, 2 * np.pi, len(vectors))
        r = 1.0 - (vectors * centroids[idx]).sum(1)
        return cxy[idx] + np.stack([np.cos(angle), np.sin(angle)], 1) * r[:, None] * 3.0

    def _summary(self, result: PipelineResult, texts: Sequence[str], i: int) -> ClusterSummary:
        c = result.clusters[i]
        return ClusterSummary(
            size=c.size,
            keywords=[t for t, _ in c.keywords],
            representatives=[texts[j] for j in c.representatives],
            diverse=[texts[j] for j in c.diverse if j not in set(c.representatives)],
        )

    @staticmethod
    def _samples(ids: list[str], texts: list[str], sim: np.ndarray, idx: list[int]) -> list[dict[str, Any]]:
        return [
            {"item_id": ids[i], "text": texts[i][:MAX_TEXT_CHARS], "similarity": round(float(sim[i]), 5)}
            for i in idx
        ]

    def _put_table(self, table: pa.Table, prefix: str) -> str:
        tmp = self.artifacts.scratch_file("clu", ".parquet")
        pq.write_table(table, tmp, compression="zstd")
        key, _sha, _size = self.artifacts.put_file(tmp, prefix=prefix, suffix=".parquet")
        return key

    def _write_artifacts(
        self, run_id: str, ids: list[str], texts: list[str], result: PipelineResult, cluster_ids: list[str]
    ) -> dict[str, Any]:
        lab = result.labels
        cid = np.array(cluster_ids + [None], dtype=object)
        assignments = pa.table(
            {
                "item_id": pa.array(ids, pa.string()),
                "text": pa.array(texts, pa.string()),
                "cluster_id": pa.array(cid[np.where(lab >= 0, lab, len(cluster_ids))].tolist(), pa.string()),
                "nearest_cluster_id": pa.array(
                    cid[np.where(result.nearest >= 0, result.nearest, len(cluster_ids))].tolist(), pa.string()
                ),
                "similarity": pa.array(result.similarity.astype(np.float32)),
                "x": pa.array(result.coords[:, 0].astype(np.float32)),
                "y": pa.array(result.coords[:, 1].astype(np.float32)),
                "batch": pa.array(np.zeros(len(ids), np.int32)),
            }
        )
        d = result.centroids.shape[1] if result.centroids.size else 0
        centroids = pa.table(
            {
                "cluster_id": pa.array(cluster_ids, pa.string()),
                "threshold": pa.array([c.threshold for c in result.clusters], pa.float32()),
                "centroid": pa.FixedSizeListArray.from_arrays(
                    pa.array(result.centroids.reshape(-1).astype(np.float32)), max(d, 1)
                )
                if d
                else pa.array([], pa.list_(pa.float32(), 1)),
            }
        )
        return {
            "assignments": [self._put_table(assignments, "clustering/assignments")],
            "centroids": self._put_table(centroids, "clustering/centroids"),
        }


def _run_info(r: ClusteringRunRecord) -> RunInfo:
    return RunInfo(
        id=r.id,
        status=r.status,
        source=r.source or {},
        config=r.config or {},
        embedder=r.embedder,
        namer=r.namer,
        n_items=r.n_items,
        n_clusters=r.n_clusters,
        n_outliers=r.n_outliers,
        outlier_share=round(r.n_outliers / r.n_items, 4) if r.n_items else 0.0,
        previous_run_id=r.previous_run_id,
        job_id=r.job_id,
        metrics=r.metrics or {},
        created_at=r.created_at,
        finished_at=r.finished_at,
    )


def _cluster_info(rc: RunClusterRecord, c: ClusterRecord, run: ClusteringRunRecord) -> ClusterInfo:
    return ClusterInfo(
        id=c.id,
        run_id=rc.run_id,
        name=c.name,
        description=c.description,
        namer=c.namer,
        position=rc.position,
        size=rc.size,
        share=round(rc.size / run.n_items, 4) if run.n_items else 0.0,
        cohesion=rc.cohesion,
        keywords=[k[0] if isinstance(k, list) else str(k) for k in rc.keywords],
        representatives=[Sample(**d) for d in rc.representatives],
        diverse=[Sample(**d) for d in rc.diverse],
        x=rc.x,
        y=rc.y,
        matched_similarity=rc.matched_similarity,
        new=c.first_run_id == rc.run_id,
    )


def _member(r: dict[str, Any]) -> Member:
    return Member(
        item_id=r["item_id"],
        text=r["text"],
        cluster_id=r.get("cluster_id"),
        nearest_cluster_id=r.get("nearest_cluster_id"),
        similarity=round(float(r["similarity"]), 5),
        x=float(r["x"]),
        y=float(r["y"]),
    )
