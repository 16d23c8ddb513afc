"""The row shape of the spec, and the rules every row from any source must pass."""

from __future__ import annotations

from typing import Any, Union

import msgspec

MESSAGE_ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})
KNOWN_METADATA_KEYS = ("source_trace_id", "teacher_model", "judge_score", "cluster_id", "tags")


class Row(msgspec.Struct, kw_only=True):
    """One dataset row: `(prompt, response, metadata)` with a stable `row_id`.

    `prompt` is a string or an OpenAI-style list of chat messages.
    """

    row_id: str
    prompt: Union[str, list[dict[str, Any]]]
    response: str
    metadata: dict[str, Any] = {}

    def to_dict(self) -> dict[str, Any]:
        return {"row_id": self.row_id, "prompt": self.prompt, "response": self.response, "metadata": self.metadata}


class KnownMetadata(msgspec.Struct, forbid_unknown_fields=False):
    """Types of the metadata keys the spec names; any other key is kept as it is."""

    source_trace_id: Union[str, None] = None
    teacher_model: Union[str, None] = None
    judge_score: Union[float, None] = None
    cluster_id: Union[int, str, None] = None
    tags: Union[list[str], None] = None


_known_meta = msgspec.convert


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
            return f"message {i} content must be a string, a list of parts or null, not {type(content).__name__}"
        if content is None and role != "assistant":
            return f"message {i} ({role}) has no content"
    return None


def check_metadata(meta: Any) -> str | None:
    """None when `meta` is an object whose known keys have the right types, else the problem."""
    if not isinstance(meta, dict):
        return f"metadata must be an object, not {_type_name(meta)}"
    try:
        msgspec.convert(meta, KnownMetadata)
    except msgspec.ValidationError as e:
        return f"metadata: {e}".replace("`$.", "`metadata.")
    return None


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(v), type(v).__name__
    )


type_name = _type_name
