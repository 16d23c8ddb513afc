"""Data shipped with opentracy for the demo, tests and benchmarks.

banking77/: Banking77 (Casanueva et al., 2020; PolyAI), 13,083 online-banking queries labelled with 77
intents, under CC BY 4.0: see banking77/SOURCE.md, which must travel with the data.
"""

from __future__ import annotations

import csv
from pathlib import Path

BANKING77 = Path(__file__).with_name("banking77")


def banking77(split: str = "test") -> list[tuple[str, str]]:
    """(text, category) rows of a split: "train" (10,003), "test" (3,080) or "all" (test then train)."""
    if split == "all":
        return banking77("test") + banking77("train")
    if split not in ("train", "test"):
        raise ValueError(f"split must be train, test or all, not {split!r}")
    with open(BANKING77 / f"{split}.csv", newline="", encoding="utf-8") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]
