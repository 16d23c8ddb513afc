"""The row shape every curation stage works on, and the text views of it the stages share."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class CurationRow:
    """A dataset row as curation sees it. `prompt` is a string or a list of chat messages."""

    row_id: str
    prompt: str | list[dict[str, Any]]
    response: str
    metadata: dict[str, Any] = field(default_factory=dict)
    ord: int = 0

    @classmethod
    def of(cls, row: Any, n: int = 0) -> CurationRow:
        """From a CurationRow, a client/service row object (row_id, prompt, response, metadata) or a dict."""
        if isinstance(row, CurationRow):
            return row
        if isinstance(row, Mapping):
            get = row.get
            rid = get("row_id") or f"row_{n}"
            return cls(str(rid), get("prompt", ""), get("response", "") or "", dict(get("metadata") or {}), n)
        return cls(row.row_id, row.prompt, row.response, dict(row.metadata or {}), n)

    @property
    def prompt_text(self) -> str:
        """The prompt as plain text (a chat prompt becomes one line per message, `role: content`)."""
        return prompt_text(self.prompt)

    def to_dict(self) -> dict[str, Any]:
        return {
            "row_id": self.row_id,
            "prompt": self.prompt,
            "response": self.response,
            "metadata": self.metadata,
        }


def prompt_text(prompt: str | list[dict[str, Any]]) -> str:
    if isinstance(prompt, str):
        return prompt
    lines = []
    for m in prompt:
        c = m.get("content")
        if isinstance(c, list):  # content parts: keep the text ones
            c = " ".join(p.get("text", "") for p in c if isinstance(p, dict))
        lines.append(f"{m.get('role', '?')}: {c if c is not None else ''}")
    return "\n".join(lines)


def rows_of(rows: Iterable[Any]) -> list[CurationRow]:
    return [CurationRow.of(r, i) for i, r in enumerate(rows)]


def row_from_arrow(
    row_id: str, ord_: int, prompt: str, is_msgs: bool, response: str, meta: str
) -> CurationRow:
    return CurationRow(
        row_id, json.loads(prompt) if is_msgs else prompt, response, json.loads(meta) if meta else {}, ord_
    )
