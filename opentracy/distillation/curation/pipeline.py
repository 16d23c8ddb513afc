"""The curation pipeline on rows in memory: rules → judge → duplicates → review slice → judge flags.

    outcome = curate_rows(rows, {"judge": {"threshold": 0.6}, "pii": "redact"}, gateway=engine.gateway)
    outcome.rows        # kept rows (judge scores and flags in their metadata, PII masked in redact mode)
    outcome.dropped     # every other row, with the rule and the reason
    outcome.report      # counts per rule that add up, judge histogram, cost

Cheap deterministic rules run first, so rows they drop (empty, PII, off-cluster, too long) are never paid
for or sent to the judge (`judge.judge_dropped=True` judges them anyway). Duplicates are resolved after the
judge, keeping the best-scored copy. The review slice is chosen among the rows still in, and those rows
are held for a person instead of being dropped by their judge flag. `curate()` in service.py wraps this into
a job that writes the next dataset version.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from opentracy.distillation.curation.config import CurationConfig
from opentracy.distillation.curation.filters import (
    ClusterFilter,
    DedupFilter,
    ErrorFilter,
    Filter,
    FilterContext,
    JudgeFlaggedFilter,
    LengthFilter,
    MetadataRuleFilter,
    PIIFilter,
)
from opentracy.distillation.curation.judge import Judge, JudgeResult, JudgeUnavailable
from opentracy.distillation.curation.report import CurationReport, JudgeReport, RuleReport, histogram
from opentracy.distillation.curation.rows import CurationRow, rows_of

StageProgress = Callable[[str, float, str], None]


@dataclass(slots=True)
class DroppedRow:
    row: CurationRow  # as it was (before any redaction)
    rule: str
    reason: str
    detail: dict[str, Any] | None = None
    score: float | None = None


@dataclass
class CurationOutcome:
    rows: list[CurationRow]
    dropped: list[DroppedRow]
    held: list[tuple[CurationRow, float]]  # rows selected for review, with their score (also in `rows`)
    report: CurationReport
    results: dict[str, JudgeResult] = field(default_factory=dict)
    config: CurationConfig | None = None


def build_rule_filters(cfg: CurationConfig, *, embedder: Any = None) -> list[Filter]:
    """The deterministic rules that run before the judge, in order."""
    out: list[Filter] = []
    if cfg.errors.enabled:
        out.append(ErrorFilter(cfg.errors))
    if cfg.cluster.enabled:
        out.append(ClusterFilter(cfg.cluster, embedder=embedder))
    if cfg.length.enabled:
        out.append(LengthFilter(cfg.length))
    if cfg.pii.enabled:
        out.append(PIIFilter(cfg.pii))
    out += [MetadataRuleFilter(r) for r in cfg.rules]
    return out


def select_for_review(
    rows: list[CurationRow], scores: dict[str, float | None], threshold: float, size: int,
    exclude: Iterable[str] = (),
) -> list[tuple[CurationRow, float]]:  # fmt: skip
    """The `size` rows whose scores sit closest to the threshold (ties: earlier rows first), skipping rows
    in `exclude` (already in the review queue: a row is queued at most once)."""
    skip = set(exclude)
    cand = [
        (abs(s - threshold), i, r, s)
        for i, r in enumerate(rows)
        if (s := scores.get(r.row_id)) is not None and r.row_id not in skip
    ]
    cand.sort(key=lambda x: (x[0], x[1]))
    return [(r, s) for _, _, r, s in cand[:size]]


def curate_rows(
    rows: Iterable[Any],
    config: CurationConfig | dict[str, Any] | None = None,
    *,
    gateway: Any = None,
    judge: Judge | None = None,
    embedder: Any = None,
    queued: Iterable[str] = (),
    progress: StageProgress | None = None,
    log: Callable[[str], None] | None = None,
) -> CurationOutcome:
    cfg = config if isinstance(config, CurationConfig) else CurationConfig.build(config)
    items = rows_of(rows)
    n = len(items)
    say = log or (lambda m: None)
    prog = progress or (lambda stage, f, m: None)
    originals = list(items)
    dropped: list[tuple[str, str, dict[str, Any] | None] | None] = [None] * n
    flags: list[list[str]] = [[] for _ in range(n)]
    reports: list[RuleReport] = []
    seconds: dict[str, float] = {}
    redacted = 0

    def apply(f: Filter, alive: list[int], hits: list[Any], stage: str) -> list[int]:
        nonlocal redacted
        rep = RuleReport(name=f.name, stage=stage, action=f.action)
        for i, h in zip(alive, hits, strict=True):
            if h is None:
                continue
            if f.action == "drop":
                rule = h.rule or f.name
                dropped[i] = (rule, h.reason, h.detail)
                rep.dropped[rule] = rep.dropped.get(rule, 0) + 1
            elif f.action == "redact":
                if h.edit:
                    items[i] = replace(items[i], **h.edit)
                flags[i].append(f"{f.name}_redacted")
                rep.redacted += 1
                redacted += 1
            else:
                flags[i].append(f.name)
                rep.flagged += 1
        rep.notes = f.notes()
        reports.append(rep)
        return [i for i in alive if dropped[i] is None]

    # 1. Deterministic rules.
    t0 = time.perf_counter()
    alive = list(range(n))
    ctx = FilterContext()
    filters = build_rule_filters(cfg, embedder=embedder)
    for k, f in enumerate(filters):
        prog("rules", k / max(1, len(filters)), f"rule {f.name}")
        alive = apply(f, alive, f.check([items[i] for i in alive], ctx), "rules")
    seconds["rules"] = round(time.perf_counter() - t0, 3)
    say(f"rules: {n - len(alive):,} of {n:,} rows dropped before judging")

    # 2. The judge.
    t0 = time.perf_counter()
    jrep = JudgeReport(model=cfg.judge.model if cfg.judge.enabled else None, threshold=cfg.judge.threshold)
    results: dict[str, JudgeResult] = {}
    if not cfg.judge.enabled:
        jrep.skipped, jrep.skipped_reason = True, "the judge is turned off in the config"
    elif judge is None and gateway is None:
        jrep.skipped, jrep.skipped_reason = True, "no LLM gateway was given"
    else:
        judge = judge or Judge(gateway, cfg.judge)
        why = judge.unavailable_reason()
        targets = list(range(n)) if cfg.judge.judge_dropped else alive
        if why is not None:
            jrep.skipped, jrep.skipped_reason = True, why
        elif targets:
            say(f"judge: scoring {len(targets):,} rows with {judge.model}")
            try:
                got = judge.score_rows_sync(
                    [items[i] for i in targets],
                    progress=lambda d, t: prog("judge", d / max(1, t), f"judged {d:,}/{t:,} rows"),
                )
            except JudgeUnavailable as e:
                jrep.skipped, jrep.skipped_reason = True, e.message
            else:
                for i, res in zip(targets, got, strict=True):
                    results[items[i].row_id] = res
                u = judge.usage
                jrep.calls, jrep.cached, jrep.cost_usd = u.calls, u.cached, round(u.cost_usd, 6)
                jrep.input_tokens, jrep.output_tokens, jrep.unpriced_calls = (
                    u.input_tokens,
                    u.output_tokens,
                    u.unpriced_calls,
                )
        if jrep.skipped:
            say(f"judge skipped: {jrep.skipped_reason}")
    scored = [r.score for r in results.values() if r.score is not None]
    jrep.rows_judged = len(results)
    jrep.errors = sum(1 for r in results.values() if r.error is not None)
    jrep.below_threshold = sum(1 for r in results.values() if r.score is not None and r.flagged)
    jrep.histogram = histogram(scored)
    jrep.mean_score = round(sum(scored) / len(scored), 4) if scored else None
    seconds["judge"] = round(time.perf_counter() - t0, 3)

    scores = {rid: r.score for rid, r in results.items() if r.score is not None}
    why_flagged: dict[str, str] = {}
    for rid, r in results.items():
        if r.error is not None:
            why_flagged[rid] = f"judge_error: {r.error}"
        elif r.flagged:
            why_flagged[rid] = f"judge score {r.score:.2f} < threshold {cfg.judge.threshold:g}" + (
                f": {r.reason}" if r.reason else ""
            )
    ctx = FilterContext(scores=scores, flagged=why_flagged)

    # 3. Duplicates, keeping the best-scored copy.
    t0 = time.perf_counter()
    if cfg.dedup.enabled and (cfg.dedup.exact or cfg.dedup.near):
        prog("dedup", 0.0, "finding duplicates")
        f = DedupFilter(cfg.dedup)
        alive = apply(f, alive, f.check([items[i] for i in alive], ctx), "dedup")
    seconds["dedup"] = round(time.perf_counter() - t0, 3)

    # 4. The review slice, among rows still in.
    t0 = time.perf_counter()
    held: list[tuple[CurationRow, float]] = []
    if cfg.review.enabled and cfg.review.size > 0:
        alive_rows = [items[i] for i in alive]
        all_scores = {r.row_id: ctx.score(r) for r in alive_rows}
        held = select_for_review(alive_rows, all_scores, cfg.judge.threshold, cfg.review.size, queued)
        say(f"review: {len(held)} borderline rows held for a person")
    held_ids = frozenset(r.row_id for r, _ in held)
    ctx.held = held_ids

    # 5. Judge flags.
    if cfg.judge_flagged.enabled:
        f = JudgeFlaggedFilter(cfg.judge_flagged, threshold=cfg.judge.threshold)
        alive = apply(f, alive, f.check([items[i] for i in alive], ctx), "judge")
    seconds["review"] = round(time.perf_counter() - t0, 3)

    # Kept rows: judge results, flags and the review mark go into their metadata.
    kept: list[CurationRow] = []
    flag_counts: dict[str, int] = {}
    held_rows: list[tuple[CurationRow, float]] = []
    held_score = {r.row_id: s for r, s in held}
    for i in alive:
        r = items[i]
        res = results.get(r.row_id)
        if res is None and not flags[i] and r.row_id not in held_ids and "curation_flags" not in r.metadata:
            kept.append(r)  # nothing to add to this row
            continue
        meta = dict(r.metadata)
        row_flags = list(flags[i])
        if res is not None:
            meta.pop("judge_score", None)
            meta.update(res.metadata())
            if res.error is not None:
                row_flags.append("judge_error")
            elif res.flagged:
                row_flags.append("judge_below_threshold")
        if row_flags:
            meta["curation_flags"] = row_flags
        else:
            meta.pop("curation_flags", None)
        if r.row_id in held_ids:
            meta["review"] = {"status": "pending"}
        for fl in row_flags:
            flag_counts[fl] = flag_counts.get(fl, 0) + 1
        out = CurationRow(r.row_id, r.prompt, r.response, meta, r.ord)
        kept.append(out)
        if r.row_id in held_ids:
            held_rows.append((out, held_score[r.row_id]))

    gone: list[DroppedRow] = []
    by_rule: dict[str, int] = {}
    for i, d in enumerate(dropped):
        if d is None:
            continue
        rule, reason, detail = d
        by_rule[rule] = by_rule.get(rule, 0) + 1
        res = results.get(originals[i].row_id)
        gone.append(DroppedRow(originals[i], rule, reason, detail, res.score if res else None))
    report = CurationReport(
        rows_in=n,
        rows_out=len(kept),
        dropped=by_rule,
        dropped_total=len(gone),
        flagged=flag_counts,
        redacted=redacted,
        held_for_review=len(held_rows),
        judge=jrep,
        rules=reports,
        seconds=seconds,
    )
    return CurationOutcome(kept, gone, held_rows, report, results, cfg)
