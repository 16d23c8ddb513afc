"""Curation: judge, filter, review. Each stage runs alone, or all of them as one job.

    from opentracy.distillation.curation import Judge, curate_rows, PIIFilter, DedupFilter

    judge = Judge(engine.gateway, model="openai/gpt-4o-mini", threshold=0.6)
    results = judge.score_rows_sync(rows)                     # or: await judge.score_rows(rows)
    hits = PIIFilter(PIIRule(action="redact")).check(rows)    # one rule, alone
    outcome = curate_rows(rows, {"pii": "redact"}, gateway=engine.gateway)

On a stored dataset, `engine.curation.curate(name, config)` (HTTP: POST /v1/datasets/{name}/curate; client:
`Distiller.curate`; CLI: `opentracy curate`) runs the pipeline as a job and writes the next version.
"""

from opentracy.distillation.curation.config import (
    DEFAULT_CRITERIA,
    ClusterRule,
    Criterion,
    CurationConfig,
    DedupRule,
    ErrorsRule,
    JudgeConfig,
    JudgeFlaggedRule,
    LengthRule,
    MetadataRule,
    PIIRule,
    ReviewConfig,
)
from opentracy.distillation.curation.filters import (
    ClusterFilter,
    DedupFilter,
    Embedder,
    ErrorFilter,
    Filter,
    FilterContext,
    Hit,
    JudgeFlaggedFilter,
    LengthFilter,
    MetadataRuleFilter,
    PIIFilter,
    register_embedder,
)
from opentracy.distillation.curation.judge import Judge, JudgeResult, JudgeUnavailable, JudgeUsage
from opentracy.distillation.curation.pii import PIIDetector, PIIMatch
from opentracy.distillation.curation.pipeline import (
    CurationOutcome,
    DroppedRow,
    curate_rows,
    select_for_review,
)
from opentracy.distillation.curation.report import CurationReport
from opentracy.distillation.curation.rows import CurationRow

__all__ = [
    "DEFAULT_CRITERIA",
    "ClusterFilter",
    "ClusterRule",
    "CurationConfig",
    "CurationOutcome",
    "CurationReport",
    "CurationRow",
    "Criterion",
    "DedupFilter",
    "DedupRule",
    "DroppedRow",
    "Embedder",
    "ErrorFilter",
    "ErrorsRule",
    "Filter",
    "FilterContext",
    "Hit",
    "Judge",
    "JudgeConfig",
    "JudgeFlaggedFilter",
    "JudgeFlaggedRule",
    "JudgeResult",
    "JudgeUnavailable",
    "JudgeUsage",
    "LengthFilter",
    "LengthRule",
    "MetadataRule",
    "MetadataRuleFilter",
    "PIIDetector",
    "PIIFilter",
    "PIIMatch",
    "PIIRule",
    "ReviewConfig",
    "curate_rows",
    "register_embedder",
    "select_for_review",
]
