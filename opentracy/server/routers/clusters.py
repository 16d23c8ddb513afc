"""/v1/clusters: clustering runs over traces, clusters, members, the map, renaming, assigning new traces and
promoting a cluster to a dataset. No logic here: parse, call the core (opentracy.clustering), render."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, Query
from pydantic import BaseModel, Field

from opentracy.clustering.promote import PromoteResult
from opentracy.clustering.service import ClusterInfo, Member, RunInfo, Sample
from opentracy.clustering.traces import TraceAssignResult, TraceRunRequest
from opentracy.datasets.models import VersionInfo
from opentracy.engine import Engine
from opentracy.jobs import JobInfo
from opentracy.server.deps import get_engine

router = APIRouter(tags=["clusters"])


def _run_id(run_id: str | None) -> str | None:
    return None if run_id in (None, "", "latest") else run_id


@router.post("/clusters/runs", status_code=202)
def start_run(body: TraceRunRequest | None = Body(None), engine: Engine = Depends(get_engine)) -> JobInfo:
    """Cluster the traces matching `filter` (all by default) as a job: embed their text (`text`: the last user
    message by default, `user` turns or `all` messages), cluster, name. `config` is a ClusteringConfig
    (embedder, n_clusters, target_cohesion, min_cluster_size, assign_outliers, naming_model, …); names come
    from an LLM when `naming_model` or OPENTRACY_NAMING_MODEL is set, else from keywords. The job's result
    is the run."""
    body = body or TraceRunRequest()
    return engine.trace_clusters.submit(body.filter, body.config, text=body.text, limit=body.limit)


@router.get("/clusters/runs")
def list_runs(limit: int = Query(20, ge=1, le=200), engine: Engine = Depends(get_engine)) -> dict[str, Any]:
    return {"items": engine.clustering.runs(limit)}


@router.get("/clusters/runs/{run_id}")
def get_run(run_id: str, engine: Engine = Depends(get_engine)) -> RunInfo:
    """A run (`latest`: the latest one) with its source (trace filter, text mode), config, embedder, namer,
    counts and per-stage timings."""
    return engine.clustering.get_run(_run_id(run_id))


class AssignRequest(BaseModel):
    limit: int | None = Field(10_000, ge=1)


@router.post("/clusters/runs/{run_id}/assign")
def assign_new(
    run_id: str, body: AssignRequest | None = Body(None), engine: Engine = Depends(get_engine)
) -> TraceAssignResult:
    """Put traces stored since the run (matching its filter, not in it yet) into its clusters without
    re-running it: each to its nearest cluster, or an outlier. At most `limit` per call; `remaining` says
    how many wait."""
    body = body or AssignRequest()
    return engine.trace_clusters.assign_new(_run_id(run_id), limit=body.limit)


@router.get("/clusters/ingest")
def ingest_stats(engine: Engine = Depends(get_engine)) -> dict[str, Any]:
    """Embedding at ingest: whether it is on, traces embedded, assigned, dropped, recent texts/s."""
    return engine.ingest_embedder.stats()


@router.get("/clusters")
def list_clusters(
    run_id: str | None = Query(None, description="a run id; default: the latest run"),
    engine: Engine = Depends(get_engine),
) -> dict[str, Any]:
    """The run's clusters, largest first: id, name, description, namer, size, share, cohesion, keywords,
    representative and diverse samples, map position."""
    run = engine.clustering.get_run(_run_id(run_id))
    return {"run": run, "items": engine.clustering.clusters(run.id)}


@router.get("/clusters/map")
def cluster_map(
    run_id: str | None = None,
    limit: int = Query(20_000, ge=1, le=200_000),
    seed: int = 0,
    engine: Engine = Depends(get_engine),
) -> dict[str, Any]:
    """2-D positions of the run's items (a random sample of at most `limit`), with their cluster."""
    run = engine.clustering.get_run(_run_id(run_id))
    pts = engine.clustering.map(run.id, limit=limit, seed=seed)
    return {
        "run_id": run.id,
        "items": [{"item_id": p.item_id, "cluster_id": p.cluster_id, "x": p.x, "y": p.y} for p in pts],
    }


@router.get("/clusters/outliers")
def outliers(
    run_id: str | None = None,
    limit: int = Query(100, ge=1, le=10_000),
    offset: int = Query(0, ge=0),
    engine: Engine = Depends(get_engine),
) -> dict[str, list[Member]]:
    return {"items": engine.clustering.outliers(_run_id(run_id), limit=limit, offset=offset)}


@router.get("/clusters/{cluster_id}")
def get_cluster(
    cluster_id: str, run_id: str | None = None, engine: Engine = Depends(get_engine)
) -> ClusterInfo:
    """A cluster in a run (default: the latest run it is in)."""
    return engine.clustering.cluster(cluster_id, _run_id(run_id))


@router.get("/clusters/{cluster_id}/samples")
def samples(
    cluster_id: str, run_id: str | None = None, engine: Engine = Depends(get_engine)
) -> dict[str, list[Sample]]:
    return engine.clustering.samples(cluster_id, _run_id(run_id))


@router.get("/clusters/{cluster_id}/members")
def members(
    cluster_id: str,
    run_id: str | None = None,
    limit: int = Query(100, ge=1, le=10_000),
    offset: int = Query(0, ge=0),
    engine: Engine = Depends(get_engine),
) -> dict[str, Any]:
    """The cluster's items (trace ids and their text), closest to its centre first."""
    c = engine.clustering.cluster(cluster_id, _run_id(run_id))
    items = engine.clustering.members(cluster_id, c.run_id, limit=limit, offset=offset)
    return {"cluster_id": cluster_id, "run_id": c.run_id, "size": c.size, "items": items}


class Rename(BaseModel):
    name: str
    description: str | None = None


@router.patch("/clusters/{cluster_id}")
def rename(cluster_id: str, body: Rename, engine: Engine = Depends(get_engine)) -> ClusterInfo:
    """Rename a cluster (kept across re-runs; the namer becomes `user`)."""
    return engine.clustering.rename(cluster_id, body.name, body.description)


class PromoteRequest(BaseModel):
    dataset: str = Field(description="the dataset to create, or to append to (its active version)")
    rows: Literal["all", "sample", "closest"] | list[str] = Field(
        "all", description="all | sample (n at random) | closest (n nearest the centre) | a list of trace ids"
    )
    n: int | None = Field(None, ge=1)
    run_id: str | None = None
    seed: int = 0
    description: str = ""


class PromoteResponse(PromoteResult):
    version_info: VersionInfo


@router.post("/clusters/{cluster_id}/promote", status_code=201)
def promote(cluster_id: str, body: PromoteRequest, engine: Engine = Depends(get_engine)) -> PromoteResponse:
    """Promote a cluster to a dataset: its traces (all, a sample of n, the n closest to the centre, or the
    ids given) become rows with metadata.source_trace_id and metadata.cluster_id; the clustering run is in
    the version's provenance."""
    res = engine.trace_clusters.promote(
        cluster_id,
        body.dataset,
        rows=body.rows,
        n=body.n,
        run_id=_run_id(body.run_id),
        seed=body.seed,
        description=body.description,
    )
    return PromoteResponse(
        **res.model_dump(), version_info=engine.datasets.version(body.dataset, res.version)
    )
