"""The one rule for names (datasets, aliases, local models). No heavy imports: the client checks a dataset's
name with it before sending a file the server would refuse."""

from __future__ import annotations

import re

from opentracy.errors import InvalidInput

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def check_dataset_name(name: str) -> None:
    if not NAME_RE.match(name or ""):
        raise InvalidInput(
            f"bad dataset name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
