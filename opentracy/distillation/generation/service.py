"""Synthetic datasets, as a job: read seed prompts, generate, dedupe, judge, select, write a version.

    est = engine.generation.estimate("prompt_seeds.txt", {"teacher": "openai/gpt-4o", "n_samples": 4})
    job = engine.generation.submit("python-docstrings-v1", "prompt_seeds.txt",
                                   {"teacher": "openai/gpt-4o", "n_samples": 4, "judge": "openai/gpt-4o-mini"})
    engine.jobs.wait(job.id).result       # {"version": {...}, "run": {...}}

The prompts file is copied into the server's staging area when the job is submitted (over HTTP it arrives
there as a multipart upload: the server never opens a path a request names), checked there (a bad line
fails the submit, not the job), and removed when the job ends. The result is a new dataset, or the next
version of an existing one (see GenerationConfig.mode); its provenance records the prompts file's sha256,
the teacher, the judge and the whole config, and the run (report, every sample with its outcome) is kept in
the catalog. A job killed half-way is resumed on the next start: the teacher's and the judge's answers
received before come from the gateway's cache, so nothing is paid twice.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel
from sqlalchemy import select

from opentracy.datasets._core import label, new_id
from opentracy.distillation.curation.judge import Judge
from opentracy.distillation.generation.config import GenerationConfig
from opentracy.distillation.generation.estimate import CostModel, estimate
from opentracy.distillation.generation.run import PHASES, GenerationOutcome, Generator
from opentracy.distillation.generation.seeds import SeedFile, read_seeds
from opentracy.errors import InvalidInput, NotFound, OpentracyError
from opentracy.store.segments import INPUT_SCHEMA, duck
from opentracy.store.tables import DatasetRecord, GenerationRunRecord, VersionRecord

GENERATE = "dataset.generate"
_encode = msgspec.json.Encoder().encode
SAMPLES_SCHEMA = pa.schema(
    [
        ("seed_line", pa.int64()),
        ("sample", pa.int64()),
        ("outcome", pa.string()),  # kept | dropped
        ("rule", pa.string()),
        ("reason", pa.string()),
        ("row_id", pa.string()),  # kept samples: the row they became
        ("score", pa.float64()),
        ("rank", pa.int64()),
        ("prompt", pa.string()),
        ("prompt_messages", pa.bool_()),
        ("response", pa.string()),
        ("finish_reason", pa.string()),
        ("error", pa.string()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("cost_usd", pa.float64()),
        ("judge_cost_usd", pa.float64()),
        ("cached", pa.bool_()),
        ("judge", pa.string()),  # JSON: model, scores, reason (or error)
        ("detail", pa.string()),  # JSON
        ("metadata", pa.string()),  # JSON: the seed's metadata
    ]
)


class NothingKept(OpentracyError):
    """Every sample was dropped: no version is written (the report says why)."""

    status_code = 422
    code = "nothing_kept"


class GenerationRunInfo(BaseModel):
    id: str
    dataset: str
    output: str
    job_id: str | None = None
    prompts: dict[str, Any]
    config: dict[str, Any]
    report: dict[str, Any]
    created_at: datetime


class GenerationService:
    def __init__(self, catalog: Any, datasets: Any, artifacts: Any, jobs: Any, gateway: Callable[[], Any],
                 pricing: Any, staging_dir: Path) -> None:  # fmt: skip
        self.catalog = catalog
        self.datasets = datasets
        self.artifacts = artifacts
        self.jobs = jobs
        self._gateway = gateway
        self.pricing = pricing
        self.staging_dir = staging_dir
        jobs.register(GENERATE, self._job, resumable=True, cleanup=self._cleanup)

    # -- checks and the estimate -------------------------------------------------------------------
    def _seeds(self, source: str | Path | bytes, cfg: GenerationConfig, filename: str | None) -> SeedFile:
        if isinstance(source, bytes):
            from opentracy.distillation.generation.seeds import parse_seeds

            return parse_seeds(source, cfg.seeds, name=filename or "prompts")
        p = Path(source)
        if not p.is_file():
            raise InvalidInput("no such file", file=str(source))
        return read_seeds(p, cfg.seeds, display_name=filename or p.name)

    def _check_models(self, cfg: GenerationConfig) -> tuple[str, str | None]:
        """Resolve the teacher and the judge, and refuse a run that cannot work: a model that surely cannot be
        reached (no key, no server), or a spending cap on a model whose price is unknown."""
        gw = self._gateway()
        models = [("teacher", cfg.teacher)] + ([("judge", cfg.judge.model)] if cfg.judge is not None else [])
        resolved: list[str] = []
        for role, m in models:
            r, _ = gw.resolve(m)
            # The judge's reachability check knows nothing judge-specific: it is asked about any model here.
            why = Judge(gw, model=m).unavailable_reason()
            if why:
                raise InvalidInput(f"the {role} {r} cannot be reached: {why}")
            if cfg.max_cost_usd is not None and self.pricing.rates(r) is None:
                raise InvalidInput(
                    f"max_cost_usd needs the price of the {role} {r}, which is unknown: set it with OPENTRACY_PRICES "
                    f'(e.g. {{"{r}": {{"input": 0.5, "output": 1.5}}}}, USD per million tokens)'
                )
            resolved.append(r)
        return resolved[0], resolved[1] if len(resolved) > 1 else None

    def _estimate(self, seeds: SeedFile, cfg: GenerationConfig) -> dict[str, Any]:
        teacher, judge_model = self._check_models(cfg)
        gw = self._gateway()
        judge = Judge(gw, cfg.judge) if cfg.judge is not None else None

        def cost(model: str, tin: int, tout: int) -> float | None:
            c = self.pricing.cost(model, tin, tout)
            return None if c is None else float(c)

        return estimate(seeds, cfg, CostModel(cfg, cost, teacher, judge_model, judge), self.pricing.rates)

    def estimate(self, source: str | Path | bytes, config: GenerationConfig | dict[str, Any] | None = None, *,
                 filename: str | None = None, **shortcuts: Any) -> dict[str, Any]:  # fmt: skip
        """What the run would cost (see estimate.py), without running it. Checks the file and the config."""
        cfg = GenerationConfig.build(config, **shortcuts)
        return self._estimate(self._seeds(source, cfg, filename), cfg)

    # -- submit ------------------------------------------------------------------------------------
    def submit(self, name: str, source: str | Path | bytes, config: GenerationConfig | dict[str, Any] | None = None,
               *, filename: str | None = None, **shortcuts: Any) -> Any:  # fmt: skip
        """Check everything now (a mistake fails here, before anything is paid), stage a copy of the prompts
        file, and start the job. `source` is a path (library use) or the file's bytes."""
        self.datasets.check_name(name)
        cfg = GenerationConfig.build(config, **shortcuts)
        seeds = self._seeds(source, cfg, filename)
        est = self._estimate(seeds, cfg)
        slot = self.staging_dir / f"gen-{secrets.token_hex(8)}"
        slot.mkdir(parents=True, exist_ok=True)
        try:
            dest = slot / "prompts"
            if isinstance(source, bytes):
                dest.write_bytes(source)
            else:
                shutil.copyfile(source, dest)
            return self._submit(name, f"{slot.name}/prompts", seeds, cfg, est)
        except BaseException:
            shutil.rmtree(slot, ignore_errors=True)
            raise

    def submit_staged(self, name: str, staged: str, config: GenerationConfig | dict[str, Any] | None,
                      filename: str) -> Any:  # fmt: skip
        """Start a job on a file already in the staging area (`staged` relative to it: the HTTP upload)."""
        self.datasets.check_name(name)
        cfg = GenerationConfig.build(config)
        seeds = read_seeds(self.staging_dir / staged, cfg.seeds, display_name=filename)
        return self._submit(name, staged, seeds, cfg, self._estimate(seeds, cfg))

    def estimate_staged(
        self, staged: str, config: GenerationConfig | dict[str, Any] | None, filename: str
    ) -> dict[str, Any]:
        cfg = GenerationConfig.build(config)
        return self._estimate(read_seeds(self.staging_dir / staged, cfg.seeds, display_name=filename), cfg)

    def _submit(
        self, name: str, staged: str, seeds: SeedFile, cfg: GenerationConfig, est: dict[str, Any]
    ) -> Any:
        params = {
            "dataset": name,
            "staged": staged,
            "filename": seeds.name,
            "sha256": seeds.sha256,
            "config": cfg.model_dump(mode="json"),
            "estimate": est,
        }
        return self.jobs.submit(GENERATE, params)

    def _cleanup(self, params: dict[str, Any]) -> None:
        staged = self.staging_dir / params["staged"]
        if staged.parent != self.staging_dir:
            shutil.rmtree(staged.parent, ignore_errors=True)
        else:
            staged.unlink(missing_ok=True)

    # -- the job -----------------------------------------------------------------------------------
    def _job(self, ctx: Any) -> dict[str, Any]:
        p = ctx.params
        done = self.run_for_job(ctx.job_id)
        if done is not None:
            ctx.log(
                f"this generation was already committed as {done.output} before the restart; not repeating it"
            )
        else:
            staged = self.staging_dir / p["staged"]
            if not staged.exists():
                raise InvalidInput(
                    "the prompts file is no longer staged on the server; submit the generation again"
                )
            cfg = GenerationConfig.model_validate(p["config"])
            seeds = read_seeds(staged, cfg.seeds, display_name=p["filename"])
            if seeds.sha256 != p["sha256"]:
                raise InvalidInput("the staged prompts file changed since it was submitted; submit again")
            if ctx.attempt > 1:
                ctx.log(f"attempt {ctx.attempt}: generating again; answers received before come from the cache and "
                        "are not paid again")  # fmt: skip
            done = self.generate(p["dataset"], seeds, cfg, job_id=ctx.job_id, progress=ctx.progress, log=ctx.log,
                                 estimate=p.get("estimate"))  # fmt: skip
        return {
            "run": done.model_dump(mode="json"),
            "version": self.datasets.version(p["dataset"], done.output).model_dump(mode="json"),
        }

    def generate(self, name: str, seeds: SeedFile, cfg: GenerationConfig, *, job_id: str | None = None,
                 progress: Callable[[float, str], None] | None = None, log: Callable[[str], None] | None = None,
                 estimate: dict[str, Any] | None = None) -> GenerationRunInfo:  # fmt: skip
        """Run the pipeline and write its rows (synchronously; the job calls this)."""
        prog = progress or (lambda f, m: None)
        say = log or (lambda m: None)
        if estimate is None:
            estimate = self._estimate(seeds, cfg)
        if estimate.get("cost_usd") is not None:
            cap = f" (cap ${cfg.max_cost_usd})" if cfg.max_cost_usd is not None else ""
            say(f"estimate: {estimate['samples']:,} samples of {estimate['prompts']:,} prompts, about "
                f"${estimate['cost_usd']:.4f}{cap}")  # fmt: skip
        gen = Generator(self._gateway(), self.pricing, cfg, seeds)
        outcome = gen.run_sync(progress=prog, log=say)
        rep = outcome.report
        rep["estimate"] = {k: estimate.get(k) for k in ("cost_usd", "cost_usd_max", "samples", "prompts")}
        say(_summary(rep))
        if not outcome.kept:
            raise NothingKept("no sample was kept, so no version was written: " + _summary(rep), report=rep)
        lo = PHASES["write"][0]
        prog(lo, f"write: {len(outcome.kept):,} rows")
        return self._commit(name, cfg, seeds, outcome, job_id, log=say)

    # -- writing -----------------------------------------------------------------------------------
    def _commit(self, name: str, cfg: GenerationConfig, seeds: SeedFile, outcome: GenerationOutcome,
                job_id: str | None, *, log: Callable[[str], None]) -> GenerationRunInfo:  # fmt: skip
        run_id = new_id("gen")
        rows = _kept_rows(outcome, run_id)
        key, sha = self._write_samples(outcome, rows)
        teacher = outcome.kept[0].model or cfg.teacher
        judge = outcome.report["judge"]["model"] if outcome.report.get("judge") else None
        step = {
            "kind": "generation",
            "run_id": run_id,
            "job_id": job_id,
            "prompts": seeds.summary(),
            "prompts_sha256": seeds.sha256,
            "teacher": teacher,
            "judge": judge,
            "config": cfg.model_dump(mode="json"),
            "report": outcome.report,
        }

        def in_tx(s: Any, v: VersionRecord) -> None:
            s.add(GenerationRunRecord(id=run_id, dataset_id=v.dataset_id, output_version_id=v.id, job_id=job_id,
                                      prompts=seeds.summary(), config=step["config"], report=outcome.report,
                                      samples_key=key, samples_sha256=sha))  # fmt: skip

        try:
            with self.catalog.session() as s:
                exists = s.scalar(select(DatasetRecord.id).where(DatasetRecord.name == name)) is not None
            if not exists:
                tables = [_rows_table(rows, 0)]
                info = self.datasets.create_derived(name, tables, step=step, description=cfg.description or "",
                                                    in_transaction=in_tx)  # fmt: skip
            else:
                parent = self.datasets.version(name)
                if parent.status == "active":
                    parent = self.datasets.freeze(name, parent.number)
                    log(
                        f"froze {parent.label} ({parent.row_count:,} rows): the generated rows go into the next version"
                    )
                new_ids = {r["row_id"] for r in rows}
                if cfg.mode == "append":
                    tables = self._parent_then(name, parent.number, rows, new_ids)
                else:
                    tables = iter([_rows_table(rows, 0)])
                info = self.datasets.derive_version(
                    name, parent.number, tables, step=step, in_transaction=in_tx
                )
        except BaseException:
            self.artifacts.delete(key)
            raise
        log(f"wrote {info.label}: {info.row_count:,} rows ({len(rows):,} generated)")
        return self.run(name, run_id)

    def _parent_then(
        self, name: str, number: int, rows: list[dict[str, Any]], new_ids: set[str]
    ) -> Iterator[pa.Table]:
        """The parent's rows (those the new rows do not replace, by row id), then the new rows after them."""
        top = -1
        for rb in self.datasets.iter_arrow(name, number, batch_size=20_000):
            t = pa.Table.from_batches([rb])
            if t.num_rows:
                import pyarrow.compute as pc

                top = max(top, pc.max(t.column("ord")).as_py())
                if new_ids:
                    t = t.filter(
                        pc.invert(pc.is_in(t.column("row_id"), pa.array(sorted(new_ids), pa.string())))
                    )
                yield t.append_column("deleted", pa.array([False] * t.num_rows, pa.bool_())).cast(
                    INPUT_SCHEMA
                )
        yield _rows_table(rows, top + 1)

    def _write_samples(self, outcome: GenerationOutcome, rows: list[dict[str, Any]]) -> tuple[str, str]:
        row_of = {(r["_seed"], r["_sample"]): r["row_id"] for r in rows}
        recs = []
        for s in outcome.samples:
            seed = outcome.seeds.items[s.seed]
            pr = seed.prompt
            j = None
            if s.judge is not None:
                j = {"model": s.judge.model, **({"error": s.judge.error} if s.judge.error else
                     {"score": s.judge.score, "scores": s.judge.scores, "reason": s.judge.reason})}  # fmt: skip
            recs.append((seed.line, s.index, s.outcome, s.rule, s.reason, row_of.get((s.seed, s.index)), s.score,
                         s.rank, pr if isinstance(pr, str) else _encode(pr).decode(), not isinstance(pr, str),
                         s.response, s.finish_reason, s.error, s.input_tokens, s.output_tokens, s.cost_usd,
                         s.judge_cost_usd if s.judge is not None else None, s.cached, _json(j), _json(s.detail),
                         _json(seed.metadata)))  # fmt: skip
        cols = list(zip(*recs, strict=True)) if recs else [[] for _ in SAMPLES_SCHEMA]
        table = pa.table({f.name: pa.array(list(c), f.type) for f, c in zip(SAMPLES_SCHEMA, cols, strict=True)},
                         schema=SAMPLES_SCHEMA)  # fmt: skip
        tmp = self.artifacts.scratch_file("generation", ".parquet")
        pq.write_table(table, tmp, compression="zstd")
        key, digest, _ = self.artifacts.put_file(tmp, prefix="generation", suffix=".parquet")
        return key, digest

    # -- runs and samples --------------------------------------------------------------------------
    def _ds(self, s: Any, name: str) -> DatasetRecord:
        ds = s.scalar(select(DatasetRecord).where(DatasetRecord.name == name))
        if ds is None:
            raise NotFound(f"no dataset named {name!r}")
        return ds

    def _info(self, s: Any, ds: DatasetRecord, r: GenerationRunRecord) -> GenerationRunInfo:
        v = s.get(VersionRecord, r.output_version_id)
        return GenerationRunInfo(id=r.id, dataset=ds.name, output=label(ds.name, v.number) if v else r.output_version_id,
                                 job_id=r.job_id, prompts=r.prompts, config=r.config, report=r.report,
                                 created_at=r.created_at)  # fmt: skip

    def runs(self, name: str) -> list[GenerationRunInfo]:
        with self.catalog.session() as s:
            ds = self._ds(s, name)
            q = select(GenerationRunRecord).where(GenerationRunRecord.dataset_id == ds.id)
            return [self._info(s, ds, r) for r in s.scalars(q.order_by(GenerationRunRecord.created_at)).all()]

    def run(self, name: str, run_id: str | None = None) -> GenerationRunInfo:
        """A run by id; None: the dataset's latest."""
        with self.catalog.session() as s:
            ds = self._ds(s, name)
            q = select(GenerationRunRecord).where(GenerationRunRecord.dataset_id == ds.id)
            if run_id:
                q = q.where(GenerationRunRecord.id == run_id)
            r = s.scalar(q.order_by(GenerationRunRecord.created_at.desc()).limit(1))
            if r is None:
                raise NotFound(
                    f"no generation run {run_id!r} of {name!r}"
                    if run_id
                    else f"{name!r} has no generation run"
                )
            return self._info(s, ds, r)

    def run_for_job(self, job_id: str) -> GenerationRunInfo | None:
        with self.catalog.session() as s:
            r = s.scalar(select(GenerationRunRecord).where(GenerationRunRecord.job_id == job_id))
            if r is None:
                return None
            return self._info(s, s.get(DatasetRecord, r.dataset_id), r)

    def samples(self, name: str, run_id: str | None = None, *, outcome: str | None = None, rule: str | None = None,
                limit: int = 100, offset: int = 0) -> dict[str, Any]:  # fmt: skip
        """A run's samples in order (prompt, then sample index), each with its outcome, rule and reason."""
        if outcome not in (None, "kept", "dropped"):
            raise InvalidInput(f"outcome must be 'kept' or 'dropped', not {outcome!r}")
        limit = max(1, min(int(limit), 1000))
        info = self.run(name, run_id)
        with self.catalog.session() as s:
            r = s.get(GenerationRunRecord, info.id)
            key, sha = r.samples_key, r.samples_sha256
        path = self.artifacts.verify(key, sha)
        conds, params = ["true"], []
        if outcome:
            conds.append("outcome = ?")
            params.append(outcome)
        if rule:
            conds.append("rule = ?")
            params.append(rule)
        cond = " AND ".join(conds)
        con = duck()
        try:
            total = con.execute(
                f"SELECT count(*) FROM read_parquet(?) WHERE {cond}", [str(path), *params]
            ).fetchall()[0][0]
            cur = con.execute(f"SELECT * FROM read_parquet(?) WHERE {cond} ORDER BY seed_line, sample LIMIT {limit} "
                              f"OFFSET {max(0, int(offset))}", [str(path), *params])  # fmt: skip
            names = [d[0] for d in cur.description]
            got = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            con.close()
        for g in got:
            if g.pop("prompt_messages"):
                g["prompt"] = json.loads(g["prompt"])
            for k in ("judge", "detail", "metadata"):
                g[k] = json.loads(g[k]) if g[k] else None
        return {"run_id": info.id, "total": int(total), "items": got, "limit": limit, "offset": offset}


# -- rows ------------------------------------------------------------------------------------------------


def row_id(teacher: str, messages: list[dict[str, Any]], sample: int) -> str:
    """Stable across runs: the same teacher's answer number `sample` to the same prompt is the same row."""
    doc = json.dumps([teacher, messages, sample], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "r_" + hashlib.blake2b(doc.encode("utf-8"), digest_size=8).hexdigest()


def _kept_rows(outcome: GenerationOutcome, run_id: str) -> list[dict[str, Any]]:
    out = []
    for s in outcome.kept:
        seed = outcome.seeds.items[s.seed]
        meta: dict[str, Any] = {**seed.metadata, "teacher_model": s.model}
        if s.judge is not None:
            meta["judge_score"] = s.judge.score
            meta["judge"] = s.judge.metadata()["judge"]
        meta["sample"] = s.index
        meta["generation"] = {
            "run_id": run_id,
            "seed_line": seed.line,
            **({"rank": s.rank} if s.rank else {}),
        }
        out.append({"row_id": row_id(s.model or "", seed.messages, s.index), "prompt": seed.prompt,
                    "response": s.response or "", "metadata": meta, "_seed": s.seed, "_sample": s.index})  # fmt: skip
    return out


def _rows_table(rows: list[dict[str, Any]], first_ord: int) -> pa.Table:
    n = len(rows)
    return pa.table(
        {
            "row_id": pa.array([r["row_id"] for r in rows], pa.string()),
            "ord": pa.array(range(first_ord, first_ord + n), pa.int64()),
            "prompt": pa.array(
                [
                    r["prompt"] if isinstance(r["prompt"], str) else _encode(r["prompt"]).decode()
                    for r in rows
                ],
                pa.string(),
            ),  # fmt: skip
            "prompt_messages": pa.array([not isinstance(r["prompt"], str) for r in rows], pa.bool_()),
            "response": pa.array([r["response"] for r in rows], pa.string()),
            "metadata": pa.array([_encode(r["metadata"]).decode() for r in rows], pa.string()),
            "deleted": pa.array([False] * n, pa.bool_()),
        },
        schema=INPUT_SCHEMA,
    )


def _json(v: Any) -> str | None:
    return None if v is None else json.dumps(v, ensure_ascii=False)


def _summary(rep: dict[str, Any]) -> str:
    s = rep["samples"]
    dropped = ", ".join(f"{k} {v:,}" for k, v in rep["dropped"].items()) or "none"
    cost = rep["cost_usd"] if rep["cost_usd"] is not None else rep["cost_usd_priced"]
    line = (f"{s['requested']:,} samples asked of {rep['prompts']:,} prompts, {s['generated']:,} generated, "
            f"{rep['kept']:,} kept; dropped: {dropped}; cost ${cost:.4f} (${rep['cached_cost_usd']:.4f} of it from "
            "the cache)")  # fmt: skip
    if rep.get("stopped_by"):
        line += f"; stopped by the spending cap (${rep['max_cost_usd']}) in the {rep['stopped_in']} phase"
    return line
