"""Trace work that runs as jobs: importing a staged file."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from opentracy.errors import InvalidInput
from opentracy.jobs import JobContext, JobRunner
from opentracy.traces.importers import import_file

IMPORT = "traces.import"


def register(runner: JobRunner, traces: Any, staging_dir: Path) -> None:
    def run_import(ctx: JobContext) -> dict[str, Any]:
        p = ctx.params
        staged = staging_dir / p["staged"]
        if not staged.exists():
            raise InvalidInput("the uploaded file is no longer staged on the server; import it again")
        res = import_file(
            traces,
            staged,
            display_name=p.get("filename"),
            fmt=p.get("format", "auto"),
            on_error=p.get("on_error", "raise"),
            progress=ctx.progress,
            cancelled=ctx.is_cancelled,
        )
        ctx.log(
            f"imported {res.inserted:,} traces from {res.file}"
            + (f"; {res.duplicates:,} already stored" if res.duplicates else "")
            + (f"; skipped {res.skipped} bad lines" if res.skipped else "")
        )
        return res.model_dump(mode="json")

    def cleanup(params: dict[str, Any]) -> None:
        staged = staging_dir / params["staged"]
        if staged.parent != staging_dir:
            shutil.rmtree(staged.parent, ignore_errors=True)
        else:
            staged.unlink(missing_ok=True)

    # Not resumable: an import is one transaction, so a process that died left nothing behind; the job
    # is marked failed on restart and the file can be imported again.
    runner.register(IMPORT, run_import, resumable=False, cleanup=cleanup)
