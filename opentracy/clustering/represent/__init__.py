"""Representation stage: keywords (c-TF-IDF), sample items, and 2-D map coordinates."""

from opentracy.clustering.represent._base import KeywordExtractor
from opentracy.clustering.represent.ctfidf import CTfidfKeywords

__all__ = ["CTfidfKeywords", "KeywordExtractor"]
