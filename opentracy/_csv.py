"""Python's csv reader as opentracy reads CSV everywhere (uploads, generation seeds): strict, and fields of
any length."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any

# csv refuses a field over 131,072 characters by default ("field larger than field limit"); a prompt may be
# longer (JSONL lines go to 4 MB and beyond). The limit belongs to the process; it is lifted on first use.
FIELD_LIMIT = 2**31 - 1


def reader(lines: Iterable[str], **kwargs: Any) -> Any:
    """`csv.reader(lines, strict=True, **kwargs)`, with no limit on a field's length."""
    if csv.field_size_limit() < FIELD_LIMIT:
        csv.field_size_limit(FIELD_LIMIT)
    return csv.reader(lines, strict=True, **kwargs)
