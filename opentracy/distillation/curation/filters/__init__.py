"""The rule filters of curation, each usable alone: `Filter.check(rows, ctx) -> [Hit | None]`."""

from opentracy.distillation.curation.filters._base import Filter, FilterContext, Hit
from opentracy.distillation.curation.filters.cluster import ClusterFilter, Embedder, register_embedder
from opentracy.distillation.curation.filters.dedup import DedupFilter
from opentracy.distillation.curation.filters.errors import ErrorFilter
from opentracy.distillation.curation.filters.length import LengthFilter, estimate_tokens
from opentracy.distillation.curation.filters.pii import PIIFilter
from opentracy.distillation.curation.filters.rules import JudgeFlaggedFilter, MetadataRuleFilter

__all__ = [
    "ClusterFilter",
    "DedupFilter",
    "Embedder",
    "ErrorFilter",
    "Filter",
    "FilterContext",
    "Hit",
    "JudgeFlaggedFilter",
    "LengthFilter",
    "MetadataRuleFilter",
    "PIIFilter",
    "estimate_tokens",
    "register_embedder",
]
