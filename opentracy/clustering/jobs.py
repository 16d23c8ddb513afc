"""Clustering as a job: `clustering.run` reads the items staged for it, runs, and stores the run.

Resumable: nothing is stored until the run succeeds, so a run interrupted by a restart starts again from
its staged items; a run that had already been stored is found by its job id and not repeated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from opentracy.clustering.service import ClusteringService, Items
from opentracy.errors import InvalidInput
from opentracy.jobs import JobContext, JobInfo, JobRunner

RUN = "clustering.run"


def register(runner: JobRunner, service: ClusteringService, staging_dir: Path) -> None:
    def run(ctx: JobContext) -> dict[str, Any]:
        done = service.find_job_run(ctx.job_id)
        if done is not None:
            ctx.log("this run was already stored before the restart; not repeating it")
            return done.model_dump(mode="json")
        staged = staging_dir / ctx.params["staged"]
        if not staged.exists():
            raise InvalidInput("the items staged for this run are gone; submit the run again")
        t = pq.read_table(staged)
        items = list(zip(t.column("item_id").to_pylist(), t.column("text").to_pylist(), strict=True))
        info = service.run(
            items,
            ctx.params.get("config") or {},
            source=ctx.params.get("source"),
            progress=ctx.progress,
            job_id=ctx.job_id,
        )
        ctx.log(
            f"{info.n_clusters} clusters over {info.n_items:,} items, {info.outlier_share:.1%} unclustered; "
            f"named by {info.namer}"
        )
        return info.model_dump(mode="json")

    def cleanup(params: dict[str, Any]) -> None:
        (staging_dir / params["staged"]).unlink(missing_ok=True)

    runner.register(RUN, run, resumable=True, cleanup=cleanup)


def submit(
    runner: JobRunner,
    service: ClusteringService,
    staging_dir: Path,
    items: Items,
    config: dict[str, Any] | None = None,
    *,
    source: dict[str, Any] | None = None,
) -> JobInfo:
    """Validate and stage the items, then queue the run as a job (bad input fails here, before a job)."""
    from opentracy.clustering.service import make_config

    cfg = make_config(config)
    staged = service.stage_items(items, staging_dir)
    return runner.submit(
        RUN, {"staged": staged, "config": cfg.model_dump(mode="json"), "source": source or {"kind": "items"}}
    )
