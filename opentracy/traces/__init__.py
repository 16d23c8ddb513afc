"""Traces: one LLM call each. Ways in: the batch API, file import (importers.py) and the
OpenAI-compatible recording proxy (proxy.py); reading with filters and cursors, and traces → dataset
rows (service.py)."""
