"""Curation of a stored dataset, as a job: read a version, run the pipeline, write the next version.

    job = engine.curation.submit("tickets", {"judge": {"threshold": 0.6}, "pii": "redact"})
    engine.jobs.wait(job.id).result       # {"version": {...}, "run": {...}}

The version curated is the latest by default. An active one is frozen first, so the raw rows stay reachable
as their own version; a frozen one (re-curating with a stricter threshold) is read as it is. The curated
rows become the next, active version; its provenance has the parent, the full config, the judge model and
the report. Every dropped row is kept, whole, with its rule and reason, in the run's decisions file
(`dropped(...)`). A job killed half-way is resumed on the next start and pays nothing again for rows the
judge already scored (the gateway's cache answers them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel
from sqlalchemy import select

from opentracy.datasets._core import label, new_id
from opentracy.datasets.models import VersionInfo
from opentracy.distillation.curation.config import CurationConfig
from opentracy.distillation.curation.pipeline import CurationOutcome, curate_rows
from opentracy.distillation.curation.review import ReviewService
from opentracy.distillation.curation.rows import CurationRow, row_from_arrow
from opentracy.errors import Conflict, NotFound
from opentracy.store.segments import INPUT_SCHEMA, duck
from opentracy.store.tables import CurationRunRecord, DatasetRecord, ReviewItemRecord, VersionRecord

CURATE = "dataset.curate"
_encode = msgspec.json.Encoder().encode
DECISIONS_SCHEMA = pa.schema(
    [
        ("row_id", pa.string()),
        ("ord", pa.int64()),
        ("outcome", pa.string()),  # kept | dropped
        ("rule", pa.string()),
        ("reason", pa.string()),
        ("score", pa.float64()),
        ("flags", pa.string()),  # JSON list
        ("detail", pa.string()),  # JSON object
        ("prompt", pa.string()),  # dropped rows only: the row as it was
        ("prompt_messages", pa.bool_()),
        ("response", pa.string()),
        ("metadata", pa.string()),
    ]
)
# Share of the job's progress bar per stage.
_STAGES = {"freeze": (0.0, 0.04), "read": (0.04, 0.08), "rules": (0.08, 0.12), "judge": (0.12, 0.86),
           "dedup": (0.86, 0.9), "write": (0.9, 1.0)}  # fmt: skip


class CurationRunInfo(BaseModel):
    id: str
    dataset: str
    source: str
    output: str
    job_id: str | None = None
    config: dict[str, Any]
    report: dict[str, Any]
    created_at: datetime


class CurationService:
    def __init__(
        self, catalog: Any, datasets: Any, artifacts: Any, jobs: Any, gateway: Callable[[], Any] | None
    ) -> None:
        self.catalog = catalog
        self.datasets = datasets
        self.artifacts = artifacts
        self.jobs = jobs
        self._gateway = gateway
        # Embedders a config may name for the off-cluster distance rule, bound to this engine (its data
        # directory); names not here fall back to the process-wide `register_embedder` registry.
        self.embedders: dict[str, Callable[[], Any]] = {}
        self.review = ReviewService(catalog, datasets)
        jobs.register(CURATE, self._job, resumable=True)

    # -- submit / run ------------------------------------------------------------------------------
    def _source(self, name: str, version: int | str | None) -> VersionInfo:
        src = self.datasets.version(name, version)
        for v in self.datasets.versions(name):
            if v.status == "active" and v.number != src.number:
                raise Conflict(
                    f"{v.label} is active: curation writes the next version, and a dataset has at most one active "
                    f"version. Curate {v.label} itself, or freeze it first (`opentracy datasets freeze {name}`)."
                )
        return src

    def submit(self, name: str, config: CurationConfig | dict[str, Any] | None = None,
               version: int | str | None = None) -> Any:  # fmt: skip
        """Check the config and the version now (a mistake fails here, not in the job), then start the job."""
        cfg = CurationConfig.build(config)
        src = self._source(name, version)
        params = {"dataset": name, "version": src.number, "config": cfg.model_dump(mode="json")}
        return self.jobs.submit(CURATE, params)

    def _job(self, ctx: Any) -> dict[str, Any]:
        p = ctx.params
        done = self.run_for_job(ctx.job_id)
        if done is not None:
            ctx.log(
                f"this curation was already committed as {done.output} before the restart; not repeating it"
            )
        else:
            if ctx.attempt > 1:
                ctx.log(
                    f"attempt {ctx.attempt}: curating again; rows the judge already scored come from the cache"
                )
            done = self.curate(p["dataset"], p["config"], p["version"], job_id=ctx.job_id, progress=ctx.progress,
                               log=ctx.log)  # fmt: skip
        return {
            "run": done.model_dump(mode="json"),
            "version": self.datasets.version(p["dataset"], done.output).model_dump(mode="json"),
        }

    def curate(
        self,
        name: str,
        config: CurationConfig | dict[str, Any] | None = None,
        version: int | str | None = None,
        *,
        job_id: str | None = None,
        progress: Callable[[float, str], None] | None = None,
        log: Callable[[str], None] | None = None,
        embedder: Any = None,
    ) -> CurationRunInfo:
        """Curate a version of `name` and write the result as its next version (see the module doc)."""
        cfg = CurationConfig.build(config)
        prog = progress or (lambda f, m: None)
        say = log or (lambda m: None)
        embedder = embedder if embedder is not None else self._named_embedder(cfg)

        def stage(name_: str) -> Callable[[str, float, str], None]:
            def report(st: str, f: float, msg: str) -> None:
                lo, hi = _STAGES.get(st, _STAGES[name_])
                prog(lo + (hi - lo) * max(0.0, min(1.0, f)), f"{st}: {msg}")

            return report

        src = self._source(name, version)
        if src.status == "active":
            prog(0.0, f"freezing {src.label} so its raw rows stay reachable")
            src = self.datasets.freeze(name, src.number)
            say(f"froze {src.label} ({src.row_count:,} rows) before curating it")
        prog(_STAGES["read"][0], f"reading {src.label}")
        rows = self._read(name, src.number)
        with self.catalog.session() as s:
            dsid = s.scalar(select(DatasetRecord.id).where(DatasetRecord.name == name))
        queued = self.review.queued_row_ids(dsid) if dsid else set()
        gateway = self._gateway() if (self._gateway is not None and cfg.judge.enabled) else None
        outcome = curate_rows(rows, cfg, gateway=gateway, embedder=embedder, queued=queued,
                              progress=stage("rules"), log=say)  # fmt: skip
        prog(_STAGES["write"][0], "writing the curated version")
        return self._commit(name, src, cfg, outcome, job_id)

    def _named_embedder(self, cfg: CurationConfig) -> Any:
        """The embedder the config's distance rule names, when this engine knows it (else None: the filter
        looks the name up in the process-wide registry, and says which names exist if it is not there)."""
        rule = cfg.cluster
        if not (rule.enabled and rule.max_distance is not None and rule.embedder):
            return None
        factory = self.embedders.get(rule.embedder)
        return factory() if factory is not None else None

    def _read(self, name: str, number: int) -> list[CurationRow]:
        out: list[CurationRow] = []
        for rb in self.datasets.iter_arrow(name, number, batch_size=20_000):
            cols = [rb.column(i).to_pylist() for i in range(rb.num_columns)]
            out += [row_from_arrow(*r) for r in zip(*cols, strict=True)]
        return out

    def _commit(
        self, name: str, src: VersionInfo, cfg: CurationConfig, outcome: CurationOutcome, job_id: str | None
    ) -> CurationRunInfo:
        run_id = new_id("cur")
        key, sha = self._write_decisions(outcome)
        rep = outcome.report
        judge_model = rep.judge.model if not rep.judge.skipped else None
        step = {
            "kind": "curation",
            "run_id": run_id,
            "job_id": job_id,
            "config": cfg.model_dump(mode="json"),
            "judge_model": judge_model,
            "judge_skipped": rep.judge.skipped,
            "judge_skipped_reason": rep.judge.skipped_reason,
            "report": rep.model_dump(mode="json"),
        }

        def in_tx(s: Any, v: VersionRecord) -> None:
            s.add(
                CurationRunRecord(
                    id=run_id,
                    dataset_id=v.dataset_id,
                    source_version_id=v.parent_id,
                    output_version_id=v.id,
                    job_id=job_id,
                    config=step["config"],
                    report=step["report"],
                    decisions_key=key,
                    decisions_sha256=sha,
                )
            )
            for row, score in outcome.held:
                s.add(
                    ReviewItemRecord(
                        dataset_id=v.dataset_id,
                        row_id=row.row_id,
                        run_id=run_id,
                        version_id=v.id,
                        status="pending",
                        score=score,
                        threshold=cfg.judge.threshold,
                        original=row.to_dict(),
                    )
                )

        table = _rows_table(outcome.rows)
        try:
            self.datasets.derive_version(name, src.number, [table], step=step, in_transaction=in_tx)
        except BaseException:
            self.artifacts.delete(key)
            raise
        return self.run(name, run_id)

    def _write_decisions(self, outcome: CurationOutcome) -> tuple[str, str]:
        res = outcome.results
        kept = [
            (r.row_id, r.ord, "kept", None, None, _score(res.get(r.row_id)), _json(r.metadata.get("curation_flags")),
             None, None, None, None, None)
            for r in outcome.rows
        ]  # fmt: skip
        dropped = [
            (d.row.row_id, d.row.ord, "dropped", d.rule, d.reason, d.score, None, _json(d.detail),
             d.row.prompt if isinstance(d.row.prompt, str) else _encode(d.row.prompt).decode(),
             not isinstance(d.row.prompt, str), d.row.response, _encode(d.row.metadata).decode())
            for d in outcome.dropped
        ]  # fmt: skip
        recs = sorted(kept + dropped, key=lambda x: x[1])
        cols = list(zip(*recs, strict=True)) if recs else [[] for _ in DECISIONS_SCHEMA]
        table = pa.table({f.name: pa.array(list(c), f.type) for f, c in zip(DECISIONS_SCHEMA, cols, strict=True)},
                         schema=DECISIONS_SCHEMA)  # fmt: skip
        tmp = self.artifacts.scratch_file("curation", ".parquet")
        pq.write_table(table, tmp, compression="zstd")
        key, digest, _ = self.artifacts.put_file(tmp, prefix="curation", suffix=".parquet")
        return key, digest

    # -- runs and dropped rows ---------------------------------------------------------------------
    def _run_info(self, s: Any, ds: DatasetRecord, r: CurationRunRecord) -> CurationRunInfo:
        def lbl(vid: str) -> str:
            v = s.get(VersionRecord, vid)
            return label(ds.name, v.number) if v else vid

        return CurationRunInfo(
            id=r.id,
            dataset=ds.name,
            source=lbl(r.source_version_id),
            output=lbl(r.output_version_id),
            job_id=r.job_id,
            config=r.config,
            report=r.report,
            created_at=r.created_at,
        )

    def runs(self, name: str) -> list[CurationRunInfo]:
        with self.catalog.session() as s:
            ds = self.review._ds(s, name)
            q = (
                select(CurationRunRecord)
                .where(CurationRunRecord.dataset_id == ds.id)
                .order_by(CurationRunRecord.created_at)
            )
            return [self._run_info(s, ds, r) for r in s.scalars(q).all()]

    def run(self, name: str, run_id: str | None = None) -> CurationRunInfo:
        """A run by id; None: the latest run of the dataset."""
        with self.catalog.session() as s:
            ds = self.review._ds(s, name)
            q = select(CurationRunRecord).where(CurationRunRecord.dataset_id == ds.id)
            if run_id:
                q = q.where(CurationRunRecord.id == run_id)
            r = s.scalar(q.order_by(CurationRunRecord.created_at.desc()).limit(1))
            if r is None:
                raise NotFound(
                    f"no curation run {run_id!r} of {name!r}" if run_id else f"{name!r} was never curated"
                )
            return self._run_info(s, ds, r)

    def run_for_job(self, job_id: str) -> CurationRunInfo | None:
        with self.catalog.session() as s:
            r = s.scalar(select(CurationRunRecord).where(CurationRunRecord.job_id == job_id))
            if r is None:
                return None
            return self._run_info(s, s.get(DatasetRecord, r.dataset_id), r)

    def dropped(
        self,
        name: str,
        run_id: str | None = None,
        *,
        rule: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Rows a run dropped, whole, with the rule and the reason (and the judge score if it had one)."""
        limit = max(1, min(int(limit), 1000))
        info = self.run(name, run_id)
        with self.catalog.session() as s:
            r = s.get(CurationRunRecord, info.id)
            key, sha = r.decisions_key, r.decisions_sha256
        path = self.artifacts.verify(key, sha)
        con = duck()
        try:
            cond, params = "outcome = 'dropped'", []
            if rule:
                cond += " AND rule = ?"
                params.append(rule)
            total = con.execute(
                f"SELECT count(*) FROM read_parquet(?) WHERE {cond}", [str(path), *params]
            ).fetchall()[0][0]
            got = con.execute(
                f"SELECT row_id, rule, reason, score, detail, prompt, prompt_messages, response, metadata "
                f"FROM read_parquet(?) WHERE {cond} ORDER BY ord LIMIT {limit} OFFSET {max(0, int(offset))}",
                [str(path), *params],
            ).fetchall()
            rules = dict(con.execute("SELECT rule, count(*) FROM read_parquet(?) WHERE outcome = 'dropped' GROUP BY rule",
                                     [str(path)]).fetchall())  # fmt: skip
        finally:
            con.close()
        items = [
            {
                "row_id": rid,
                "rule": rl,
                "reason": reason,
                "judge_score": score,
                "detail": json.loads(detail) if detail else None,
                "prompt": json.loads(prompt) if is_msgs else prompt,
                "response": response,
                "metadata": json.loads(meta) if meta else {},
            }
            for rid, rl, reason, score, detail, prompt, is_msgs, response, meta in got
        ]
        return {
            "run_id": info.id,
            "total": int(total),
            "by_rule": rules,
            "items": items,
            "limit": limit,
            "offset": offset,
        }


def _rows_table(rows: list[CurationRow]) -> pa.Table:
    n = len(rows)
    return pa.table(
        {
            "row_id": pa.array([r.row_id for r in rows], pa.string()),
            "ord": pa.array([r.ord for r in rows], pa.int64()),
            "prompt": pa.array(
                [r.prompt if isinstance(r.prompt, str) else _encode(r.prompt).decode() for r in rows],
                pa.string(),
            ),
            "prompt_messages": pa.array([not isinstance(r.prompt, str) for r in rows], pa.bool_()),
            "response": pa.array([r.response for r in rows], pa.string()),
            "metadata": pa.array([_encode(r.metadata).decode() for r in rows], pa.string()),
            "deleted": pa.array([False] * n, pa.bool_()),
        },
        schema=INPUT_SCHEMA,
    )


def _json(v: Any) -> str | None:
    return None if v is None else json.dumps(v, ensure_ascii=False)


def _score(r: Any) -> float | None:
    return None if r is None else r.score
