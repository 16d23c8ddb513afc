"""The format a file name says (an upload's, an export's). No heavy imports: the client uses it too."""

from __future__ import annotations

import os
from pathlib import PurePath

from opentracy.errors import InvalidInput

# What a name's last suffix means when no format is given. ".jsonl" is the spec's rows; OpenAI chat
# fine-tuning JSONL is asked for by name (format="openai") on export, and told by its first record on upload.
SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def gzipped(path: str | os.PathLike[str]) -> bool:
    """Whether an export to `path` is written gzip-compressed (its name ends in .gz)."""
    return PurePath(os.fspath(path)).suffix.lower() == ".gz"


def export_format(
    path: str | os.PathLike[str], fmt: str | None, allowed: tuple[str, ...] | None = None
) -> str:
    """`fmt` when given (checked by whoever writes), else the format the file name's suffix names (before a
    final .gz, which compresses a text format); a name that names none (or one outside `allowed`) is an
    error rather than a file whose content its name misstates."""
    name = PurePath(os.fspath(path)).name
    inner = PurePath(name[: -len(".gz")]) if gzipped(name) else PurePath(name)
    got = fmt or SUFFIX_FORMATS.get(inner.suffix.lower())
    if gzipped(name) and got == "parquet":
        raise InvalidInput(f"{name!r}: Parquet is compressed inside; name the file .parquet")
    if fmt:
        return fmt
    choices = allowed or tuple(dict.fromkeys(SUFFIX_FORMATS.values()))
    if got is None or got not in choices:
        raise InvalidInput(
            f"cannot tell the export format from the name {name!r}; pass format= (one of {', '.join(choices)})"
        )
    return got
