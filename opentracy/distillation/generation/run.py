"""The generation pipeline: generate → dedupe → judge → select, over the gateway.

    gen = Generator(engine.gateway, engine.pricing, cfg, seeds)
    outcome = gen.run_sync(progress=lambda f, m: ..., log=print)
    outcome.kept          # [(seed, sample)] in prompt order, best first
    outcome.report        # samples asked, generated, kept, dropped per rule, tokens, cost, stopped_by

- **generate**: the teacher answers every seed `n_samples` times, `sample` = 0..n-1 (the request's seed and a
  part of the cache key, so the answers differ and a re-run is answered by the cache). The first call goes
  alone: a teacher that cannot be reached at all fails the run before anything else is sent. A call that
  fails after the gateway's retries is recorded on its sample (`teacher_error`).
- **dedupe**: per prompt, empty, refused and truncated answers are dropped (the curation error rules), then
  identical and near-identical answers are collapsed (the curation dedup filter, on the responses): the
  first stays, the others are not judged.
- **judge**: the curation `Judge` scores each remaining sample (structured output, cached).
- **select**: per prompt, samples scoring at least the threshold, best first (ties: the lower sample
  index), the top k (`keep`) of them.

Every sample ends `kept` or `dropped` with a rule and a reason; nothing is left out of the report.

**Spending cap** (`max_cost_usd`): the cost counted is every call the run uses, teacher and judge, at list
price, including answers that came from the cache (an earlier attempt or run paid them; a resumed job so
stops where it would have, and pays only for what it had not done). Prompts are admitted in order: a
prompt starts only if what was spent, what calls in flight are expected to cost, the judging reserved for
prompts already started and this prompt's expected cost (its teacher calls and their judging) fit under the
cap. Once one does not, no later prompt starts; the prompts started finish, are judged and selected. The
judge phase checks again, prompt by prompt, with the answers' real lengths. Expected output lengths are the
mean of the answers seen so far (the configured assumption before the first). The cap can be passed only by
what the calls in flight cost beyond their estimate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from opentracy.distillation.curation.config import DedupRule
from opentracy.distillation.curation.filters.dedup import DedupFilter
from opentracy.distillation.curation.filters.errors import ErrorFilter
from opentracy.distillation.curation.judge import Judge, JudgeResult
from opentracy.distillation.curation.rows import CurationRow
from opentracy.distillation.generation.config import GenerationConfig
from opentracy.distillation.generation.estimate import JUDGE_OUTPUT_TOKENS, CostModel
from opentracy.distillation.generation.seeds import Seed, SeedFile
from opentracy.errors import OpentracyError

# Share of the job's progress bar per phase (the service writes the rows in the last slice).
PHASES = {"generate": (0.0, 0.6), "dedupe": (0.6, 0.62), "judge": (0.62, 0.95), "select": (0.95, 0.96),
          "write": (0.96, 1.0)}  # fmt: skip
CAP = "spending_cap"


class TeacherUnavailable(OpentracyError):
    """The teacher model cannot be reached at all (no server, refused credentials, unknown model)."""

    status_code = 502
    code = "teacher_unavailable"


@dataclass(slots=True)
class Sample:
    seed: int  # index into the seed file's items
    index: int  # sample index: 0..n_samples-1
    response: str | None = None
    finish_reason: str | None = None
    model: str | None = None  # the teacher, resolved
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0  # list price of the answer (cached answers included)
    cached: bool = False
    attempts: int = 0
    judge: JudgeResult | None = None
    judge_cost_usd: float | None = 0.0
    outcome: str = "pending"  # kept | dropped
    rule: str | None = None
    reason: str | None = None
    detail: dict[str, Any] | None = None
    rank: int | None = None  # 1 = best of its prompt, among those scored

    def drop(self, rule: str, reason: str, detail: dict[str, Any] | None = None) -> None:
        self.outcome, self.rule, self.reason, self.detail = "dropped", rule, reason, detail

    @property
    def score(self) -> float | None:
        return None if self.judge is None else self.judge.score


@dataclass
class Tally:
    """Calls of one model: answered by the provider or the cache, failed; tokens; cost at list price."""

    model: str | None = None
    calls: int = 0
    cached: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0  # every answer used, at list price
    cached_cost_usd: float = 0.0  # the part answered by the cache (not paid again)
    unpriced_calls: int = 0

    def add(self, *, ok: bool, cached: bool, tin: int, tout: int, cost: float | None) -> None:
        if not ok:
            self.errors += 1
            return
        self.calls += 1
        self.cached += int(cached)
        self.input_tokens += tin
        self.output_tokens += tout
        if cost is None:
            self.unpriced_calls += 1
        else:
            self.cost_usd += cost
            if cached:
                self.cached_cost_usd += cost

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "calls": self.calls,
            "cached": self.cached,
            "errors": self.errors,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "cached_cost_usd": round(self.cached_cost_usd, 6),
            "unpriced_calls": self.unpriced_calls,
        }


class Budget:
    """The spending cap's ledger (see the module doc). Single-threaded: it lives on the run's event loop."""

    def __init__(self, cap: float | None) -> None:
        self.cap = cap
        self.spent = 0.0
        self.in_flight = 0.0
        self.reserved = 0.0  # judging of prompts already generated
        self.stopped_in: str | None = None  # the phase where the cap stopped admitting prompts

    def fits(self, cost: float, *, reserved: bool = True) -> bool:
        if self.cap is None:
            return True
        return self.spent + self.in_flight + (self.reserved if reserved else 0.0) + cost <= self.cap + 1e-12


@dataclass
class GenerationOutcome:
    seeds: SeedFile
    samples: list[Sample]
    report: dict[str, Any]
    kept: list[Sample] = field(default_factory=list)


class _ResponseDedup(DedupFilter):
    """The curation dedup filter, comparing answers only (the samples of one prompt share their prompt)."""

    def text(self, r: CurationRow) -> str:
        return r.response


class Generator:
    def __init__(self, gateway: Any, pricing: Any, cfg: GenerationConfig, seeds: SeedFile) -> None:
        self.gw = gateway
        self.pricing = pricing
        self.cfg = cfg
        self.seeds = seeds
        self.teacher, _ = gateway.resolve(cfg.teacher)
        self.judge: Judge | None = None
        judge_model = None
        if cfg.judge is not None:
            self.judge = Judge(gateway, cfg.judge, threshold=cfg.cut, concurrency=cfg.concurrency)
            judge_model, _ = gateway.resolve(cfg.judge.model)
        self.judge_model = judge_model
        self.costs = CostModel(cfg, self._price, self.teacher, judge_model, self.judge)
        self.budget = Budget(cfg.max_cost_usd)
        n = cfg.n_samples
        self.samples = [Sample(i, k) for i in range(len(seeds.items)) for k in range(n)]
        self.t_tally = Tally(model=self.teacher)
        self.j_tally = Tally(model=judge_model)
        self.admitted = 0  # prompts the teacher was asked about
        self.judged_prompts = 0
        self._out_seen = [0, 0]  # teacher answers seen, their output tokens
        self._judge_out_seen = [0, 0]
        self._done = 0
        self._to_judge = 0
        self._judged = 0
        self.phase_seconds: dict[str, float] = {}
        self._progress: Callable[[float, str], None] = lambda f, m: None
        self._log: Callable[[str], None] = lambda m: None

    # -- prices ------------------------------------------------------------------------------------
    def _price(self, model: str, tin: int, tout: int) -> float | None:
        if self.pricing is None:
            return None
        c = self.pricing.cost(model, tin, tout)
        return None if c is None else float(c)

    def _value(self, model: str, cached: bool, paid: float | None, tin: int, tout: int) -> float | None:
        """An answer's cost at list price: what was paid, or for a cache hit what it cost when it was paid."""
        return self._price(model, tin, tout) if cached else paid

    def _expected_out(self) -> int:
        n, tokens = self._out_seen
        return round(tokens / n) if n else self.cfg.expected_output_tokens

    def _expected_judge_out(self) -> int:
        n, tokens = self._judge_out_seen
        return round(tokens / n) if n else JUDGE_OUTPUT_TOKENS

    def _prompt_cost(self, seed: Seed) -> tuple[float, float]:
        """(teacher, judging) expected for all samples of a seed."""
        n = self.cfg.n_samples
        out = self._expected_out()
        t = self.costs.teacher_call(seed.messages, out)[2] or 0.0
        j = self.costs.judge_call(seed.prompt, out, self._expected_judge_out())[2] or 0.0
        return t * n, j * n

    # -- the run -----------------------------------------------------------------------------------
    def run_sync(self, *, progress: Callable[[float, str], None] | None = None,
                 log: Callable[[str], None] | None = None) -> GenerationOutcome:  # fmt: skip
        """Run on an event loop of this thread. `progress(fraction, message)` is called from it about every
        0.25 s; an exception it raises (a job's cancel) stops the calls in flight and propagates."""
        self._progress = progress or (lambda f, m: None)
        self._log = log or (lambda m: None)

        async def main() -> GenerationOutcome:
            try:
                return await self.run()
            finally:
                await self.gw.aclose()

        return asyncio.run(main())

    async def run(self) -> GenerationOutcome:
        t0 = time.perf_counter()
        await self._phase("generate", self._generate())
        self._dedupe()
        if self.judge is not None:
            await self._phase("judge", self._judge_all())
        self._select()
        report = self._report(time.perf_counter() - t0)
        kept = sorted(
            (s for s in self.samples if s.outcome == "kept"), key=lambda s: (s.seed, s.rank or 0, s.index)
        )
        return GenerationOutcome(self.seeds, self.samples, report, kept)

    async def _phase(self, name: str, coro: Any) -> None:
        """Run a phase, reporting progress every 0.25 s; a progress callback that raises stops it."""
        t = time.perf_counter()
        task = asyncio.ensure_future(coro)
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.25)
                self._report_progress(name)
            task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self.phase_seconds[name] = round(time.perf_counter() - t, 3)

    def _report_progress(self, name: str) -> None:
        lo, hi = PHASES[name]
        cost = self.t_tally.cost_usd + self.j_tally.cost_usd
        if name == "generate":
            total = max(1, len(self.samples))
            f, msg = self._done / total, f"{self._done:,} of {total:,} samples"
        else:
            total = max(1, self._to_judge)
            f, msg = self._judged / total, f"{self._judged:,} of {self._to_judge:,} samples judged"
        self._progress(lo + (hi - lo) * min(1.0, f), f"{name}: {msg}, ${cost:.4f}")

    # -- generate ----------------------------------------------------------------------------------
    def _units(self) -> Iterator[Sample]:
        """Samples in prompt order; a prompt is admitted (or the cap stops the phase) at its first sample."""
        n = self.cfg.n_samples
        for i, seed in enumerate(self.seeds.items):
            t, j = self._prompt_cost(seed)
            if not self.budget.fits(t + j):
                self.budget.stopped_in = "generate"
                self._log(
                    f"spending cap ${self.cfg.max_cost_usd}: stopping before prompt {i + 1} of "
                    f"{len(self.seeds.items)} (line {seed.line}); ${self.budget.spent:.4f} spent, "
                    f"${self.budget.in_flight + self.budget.reserved:.4f} reserved for calls in flight and judging"
                )
                return
            self.admitted = i + 1
            self.budget.reserved += j
            for k in range(n):
                yield self.samples[i * n + k]

    async def _generate(self) -> None:
        units = self._units()
        first = next(units, None)
        if first is None:
            return
        await self._teach(first, probe=True)

        async def worker() -> None:
            for s in units:
                await self._teach(s)

        await asyncio.gather(*(worker() for _ in range(self.cfg.concurrency)))

    async def _teach(self, s: Sample, *, probe: bool = False) -> None:
        from opentracy.llm.types import LLMError, LLMTimeout

        seed = self.seeds.items[s.seed]
        est = self.costs.teacher_call(seed.messages, self._expected_out())[2] or 0.0
        self.budget.in_flight += est
        try:
            try:
                c = await self.gw.complete(self.teacher, seed.messages, params=self.cfg.params, sample=s.index,
                                           internal=True, max_retries=1 if probe else None)  # fmt: skip
            except LLMError as e:
                unreachable = isinstance(e, LLMTimeout) or e.status is None or e.status in (401, 403, 404)
                if probe and unreachable:
                    raise TeacherUnavailable(f"cannot use the teacher {self.teacher}: {e.message}") from None
                if not probe:
                    raise
                c = await self.gw.complete(self.teacher, seed.messages, params=self.cfg.params, sample=s.index,
                                           internal=True)  # fmt: skip
        except LLMError as e:
            s.error = e.message
            s.drop("teacher_error", f"the teacher call failed: {e.message}")
            self.t_tally.add(ok=False, cached=False, tin=0, tout=0, cost=None)
        else:
            s.response, s.finish_reason, s.model = c.content or "", c.finish_reason, c.model
            s.input_tokens, s.output_tokens, s.cached, s.attempts = (
                c.input_tokens,
                c.output_tokens,
                c.cached,
                c.attempts,
            )
            s.cost_usd = self._value(c.model, c.cached, c.cost_usd, c.input_tokens, c.output_tokens)
            self.t_tally.add(
                ok=True, cached=c.cached, tin=c.input_tokens, tout=c.output_tokens, cost=s.cost_usd
            )
            self.budget.spent += s.cost_usd or 0.0
            self._out_seen[0] += 1
            self._out_seen[1] += c.output_tokens
        finally:
            self.budget.in_flight -= est
            self._done += 1

    # -- dedupe ------------------------------------------------------------------------------------
    def _dedupe(self) -> None:
        t = time.perf_counter()
        n = self.cfg.n_samples
        errors = ErrorFilter(self.cfg.errors) if self.cfg.errors.enabled else None
        d = self.cfg.dedupe
        dedup = _ResponseDedup(DedupRule(near=d.near, threshold=d.threshold)) if d.enabled else None
        collapsed = 0
        for i in range(len(self.seeds.items)):
            group = self.samples[i * n : (i + 1) * n]
            if i >= self.admitted:
                for s in group:
                    s.drop(
                        CAP, f"not generated: the spending cap (${self.cfg.max_cost_usd}) was reached first"
                    )
                continue
            alive = [s for s in group if s.outcome == "pending"]
            rows = [CurationRow(f"sample {s.index}", self.seeds.items[i].prompt, s.response or "",
                                {"finish_reason": s.finish_reason}) for s in alive]  # fmt: skip
            if errors is not None:
                for s, r in zip(alive, rows, strict=True):
                    hit = errors.one(r)
                    if hit is not None:
                        s.drop(hit.rule or "error", hit.reason)
            pairs = [(s, r) for s, r in zip(alive, rows, strict=True) if s.outcome == "pending"]
            if dedup is not None and len(pairs) > 1:
                hits = dedup.check([r for _, r in pairs])
                for (s, _), hit in zip(pairs, hits, strict=True):
                    if hit is not None:
                        other = int(hit.detail["duplicate_of"].split()[-1]) if hit.detail else None
                        s.drop(hit.rule or "duplicate", hit.reason, {"duplicate_of_sample": other, **(
                            {"similarity": hit.detail["similarity"]} if hit.detail and "similarity" in hit.detail
                            else {})})  # fmt: skip
                        collapsed += 1
        self._to_judge = (
            sum(1 for s in self.samples if s.outcome == "pending") if self.judge is not None else 0
        )
        if collapsed:
            self._log(f"dedupe: collapsed {collapsed:,} identical or near-identical samples before judging")
        self.phase_seconds["dedupe"] = round(time.perf_counter() - t, 3)
        self._report_progress_safe("dedupe")

    def _report_progress_safe(self, name: str) -> None:
        lo, hi = PHASES[name]
        self._progress(hi, f"{name}: done")

    # -- judge -------------------------------------------------------------------------------------
    def _judge_units(self) -> Iterator[Sample]:
        n = self.cfg.n_samples
        for i in range(self.admitted):
            group = [s for s in self.samples[i * n : (i + 1) * n] if s.outcome == "pending"]
            if not group:
                continue
            cost = 0.0
            for s in group:
                cost += (
                    self.costs.judge_call(
                        self.seeds.items[i].prompt, s.output_tokens, self._expected_judge_out()
                    )[2]
                    or 0.0
                )
            # This prompt's judging was reserved when it was generated; check it again with the real lengths.
            if not self.budget.fits(cost, reserved=False):
                self.budget.stopped_in = self.budget.stopped_in or "judge"
                left = sum(1 for s in self.samples[i * n :] if s.outcome == "pending")
                self._log(f"spending cap ${self.cfg.max_cost_usd}: stopping the judge before prompt {i + 1} "
                          f"(line {self.seeds.items[i].line}); {left:,} samples left unjudged")  # fmt: skip
                return
            self.judged_prompts = i + 1
            yield from group

    async def _judge_all(self) -> None:
        assert self.judge is not None
        self.budget.reserved = 0.0
        units = self._judge_units()
        first = next(units, None)
        if first is not None:
            await self._judge_one(first, probe=True)

            async def worker() -> None:
                for s in units:
                    await self._judge_one(s)

            await asyncio.gather(*(worker() for _ in range(self.cfg.concurrency)))
        n = self.cfg.n_samples
        for s in self.samples[self.judged_prompts * n :]:
            if s.outcome == "pending":
                s.drop(CAP, f"not judged: the spending cap (${self.cfg.max_cost_usd}) was reached first")

    async def _judge_one(self, s: Sample, *, probe: bool = False) -> None:
        assert self.judge is not None
        seed = self.seeds.items[s.seed]
        est = self.costs.judge_call(seed.prompt, s.output_tokens, self._expected_judge_out())[2] or 0.0
        self.budget.in_flight += est
        try:
            row = CurationRow(f"sample {s.index}", seed.prompt, s.response or "", dict(seed.metadata))
            r = await self.judge.score_row(row, probe=probe)
        finally:
            self.budget.in_flight -= est
        s.judge = r
        ok = r.error is None
        s.judge_cost_usd = (
            self._value(r.model, r.cached, r.cost_usd, r.input_tokens, r.output_tokens) if ok else 0.0
        )
        self.j_tally.add(
            ok=ok, cached=r.cached, tin=r.input_tokens, tout=r.output_tokens, cost=s.judge_cost_usd
        )
        self.budget.spent += s.judge_cost_usd or 0.0
        if ok:
            self._judge_out_seen[0] += 1
            self._judge_out_seen[1] += r.output_tokens
        self._judged += 1

    # -- select ------------------------------------------------------------------------------------
    def _select(self) -> None:
        t = time.perf_counter()
        n, k, cut = self.cfg.n_samples, self.cfg.keep_per_prompt, self.cfg.cut
        for i in range(len(self.seeds.items)):
            group = [s for s in self.samples[i * n : (i + 1) * n] if s.outcome == "pending"]
            if self.judge is None:
                for s in group:
                    s.outcome = "kept"
                continue
            scored = []
            for s in group:
                r = s.judge
                if r is None or r.error is not None or r.score is None:
                    s.drop("judge_error", f"the judge could not score it: {r.error if r else 'not judged'}")
                else:
                    scored.append(s)
            scored.sort(key=lambda s: (-(s.score or 0.0), s.index))
            passed = 0
            for rank, s in enumerate(scored, 1):
                s.rank = rank
                if cut is not None and (s.score or 0.0) < cut:
                    s.drop("below_threshold", f"judge score {s.score:.2f} < threshold {cut}",
                           {"score": s.score, "threshold": cut})  # fmt: skip
                elif k is not None and passed >= k:
                    s.drop("not_selected", f"ranked {rank} of {len(scored)} for its prompt; keep={self.cfg.keep!r}",
                           {"rank": rank, "score": s.score})  # fmt: skip
                else:
                    passed += 1
                    s.outcome = "kept"
        self.phase_seconds["select"] = round(time.perf_counter() - t, 3)
        self._report_progress_safe("select")

    # -- report ------------------------------------------------------------------------------------
    def _report(self, seconds: float) -> dict[str, Any]:
        dropped: dict[str, int] = {}
        for s in self.samples:
            if s.outcome == "dropped":
                dropped[s.rule or "?"] = dropped.get(s.rule or "?", 0) + 1
        kept = sum(1 for s in self.samples if s.outcome == "kept")
        n = self.cfg.n_samples
        with_rows = sum(
            1
            for i in range(len(self.seeds.items))
            if any(s.outcome == "kept" for s in self.samples[i * n : (i + 1) * n])
        )
        generated = sum(1 for s in self.samples if s.response is not None)
        scores = [s.score for s in self.samples if s.score is not None]
        hist = [0] * 10
        for x in scores:
            hist[min(9, int(x * 10))] += 1
        judge = None
        if self.judge is not None:
            judge = {**self.j_tally.to_dict(), "threshold": self.cfg.cut, "samples_judged": self._judged,
                     "mean_score": round(sum(scores) / len(scores), 4) if scores else None, "histogram": hist}  # fmt: skip
        teacher = self.t_tally.to_dict()
        cost = self.t_tally.cost_usd + self.j_tally.cost_usd
        cached_cost = self.t_tally.cached_cost_usd + self.j_tally.cached_cost_usd
        unpriced = self.t_tally.unpriced_calls + self.j_tally.unpriced_calls
        stopped = CAP if self.budget.stopped_in else None
        return {
            "prompts": len(self.seeds.items),
            "prompts_generated": self.admitted,
            "prompts_with_rows": with_rows,
            "duplicate_prompts": self.seeds.duplicates[:100],
            "samples": {
                "requested": len(self.samples),
                "generated": generated,
                "teacher_errors": dropped.get("teacher_error", 0),
                "not_generated": len(self.samples) - self.admitted * n,
                "kept": kept,
                "dropped": sum(dropped.values()),
            },
            "kept": kept,
            "dropped": dict(sorted(dropped.items())),
            "teacher": teacher,
            "judge": judge,
            "cost_usd": round(cost, 6) if not unpriced else None,
            "cost_usd_priced": round(cost, 6),
            "cached_cost_usd": round(cached_cost, 6),
            "new_cost_usd": round(cost - cached_cost, 6),
            "unpriced_calls": unpriced,
            "tokens": {
                "input": self.t_tally.input_tokens + self.j_tally.input_tokens,
                "output": self.t_tally.output_tokens + self.j_tally.output_tokens,
            },
            "max_cost_usd": self.cfg.max_cost_usd,
            "stopped_by": stopped,
            "stopped_in": self.budget.stopped_in,
            "phase_seconds": dict(self.phase_seconds),
            "seconds": round(seconds, 3),
        }
