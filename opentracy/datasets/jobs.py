"""Dataset work that runs as jobs: uploads (from a staged file) and freezes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from opentracy.datasets.service import DatasetService
from opentracy.errors import Conflict, InvalidInput
from opentracy.jobs import JobContext, JobRunner

UPLOAD = "dataset.upload"
FREEZE = "dataset.freeze"


def register(runner: JobRunner, datasets: DatasetService, staging_dir: Path) -> None:
    def upload(ctx: JobContext) -> dict[str, Any]:
        p = ctx.params
        done = datasets.find_job_step(p["dataset"], ctx.job_id)
        if done is not None:  # a previous attempt committed before the process died
            ctx.log("this upload was already committed before the restart; not repeating it")
            return done
        staged = staging_dir / p["staged"]
        if not staged.exists():
            raise InvalidInput("the uploaded file is no longer staged on the server; upload it again")
        if ctx.attempt > 1:
            ctx.log(f"attempt {ctx.attempt}: reading the staged file again from the start")
        res = datasets.upload(
            p["dataset"],
            staged,
            display_name=p.get("filename"),
            progress=ctx.progress,
            cancelled=ctx.is_cancelled,
            job_id=ctx.job_id,
            **p.get("options", {}),
        )
        ctx.log(
            f"uploaded {res.rows_added:,} rows into {res.version.label}"
            + (f"; skipped {res.skipped}" if res.skipped else "")
        )
        return res.model_dump(mode="json")

    def cleanup_upload(params: dict[str, Any]) -> None:
        staged = staging_dir / params["staged"]
        shutil.rmtree(staged.parent, ignore_errors=True) if staged.parent != staging_dir else staged.unlink(
            missing_ok=True
        )

    def freeze(ctx: JobContext) -> dict[str, Any]:
        p = ctx.params
        try:
            info = datasets.freeze(p["dataset"], p.get("version"), progress=ctx.progress)
        except Conflict:
            info = datasets.version(p["dataset"], p.get("version"))
            if info.status != "frozen" or ctx.attempt == 1:
                raise
        return info.model_dump(mode="json")

    runner.register(UPLOAD, upload, resumable=True, cleanup=cleanup_upload)
    runner.register(FREEZE, freeze, resumable=True)
