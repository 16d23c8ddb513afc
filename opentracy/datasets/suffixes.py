"""The export format a file name asks for. No heavy imports: the client uses it too."""

from __future__ import annotations

import os
from pathlib import PurePath

from opentracy.errors import InvalidInput

# What a name's last suffix means when no format is given. ".jsonl" is the spec's rows; OpenAI chat
# fine-tuning JSONL is asked for by name (format="openai").
EXPORT_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def export_format(
    path: str | os.PathLike[str], fmt: str | None, allowed: tuple[str, ...] | None = None
) -> str:
    """`fmt` when given (checked by whoever writes), else the format the file name's suffix names; a name
    that names none (or one outside `allowed`) is an error rather than a file whose content its name
    misstates."""
    if fmt:
        return fmt
    suffix = PurePath(os.fspath(path)).suffix.lower()
    got = EXPORT_SUFFIXES.get(suffix)
    choices = allowed or tuple(dict.fromkeys(EXPORT_SUFFIXES.values()))
    if got is None or got not in choices:
        raise InvalidInput(
            f"cannot tell the export format from the name {PurePath(os.fspath(path)).name!r}; "
            f"pass format= (one of {', '.join(choices)})"
        )
    return got
