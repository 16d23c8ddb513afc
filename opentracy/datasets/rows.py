"""The rules every row from any source must pass (the row shape itself is in models.py)."""

from __future__ import annotations

from typing import Any

MESSAGE_ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})
KNOWN_METADATA_KEYS = ("source_trace_id", "teacher_model", "judge_score", "cluster_id", "tags")


def check_messages(value: Any) -> str | None:
    """None when `value` is a valid list of chat messages, else what is wrong with it."""
    if not isinstance(value, list) or not value:
        return "a chat prompt must be a non-empty list of messages"
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            return f"message {i} must be an object with 'role' and 'content'"
        role = m.get("role")
        if role not in MESSAGE_ROLES:
            return f"message {i} has role {role!r}; expected one of {', '.join(sorted(MESSAGE_ROLES))}"
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            return (
                f"message {i} content must be a string, a list of parts or null, not {type(content).__name__}"
            )
        if content is None and role != "assistant":
            return f"message {i} ({role}) has no content"
    return None


def check_metadata(meta: Any) -> str | None:
    """None when `meta` is an object whose known keys have the right types, else the problem.

    The wording matches the check the segment writer runs in DuckDB (store/segments.py), so a problem reads
    the same whichever path found it.
    """
    if not isinstance(meta, dict):
        return "metadata must be an object"
    for key in ("source_trace_id", "teacher_model"):
        v = meta.get(key)
        if v is not None and not isinstance(v, str):
            return f"metadata.{key} must be a string"
    v = meta.get("judge_score")
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
        return "metadata.judge_score must be a number"
    v = meta.get("cluster_id")
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, str))):
        return "metadata.cluster_id must be an integer or a string"
    v = meta.get("tags")
    if v is not None and (not isinstance(v, list) or not all(isinstance(t, str) for t in v)):
        return "metadata.tags must be a list of strings"
    return None


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(v), type(v).__name__)


type_name = _type_name
