"""Write a synthetic JSONL file in the spec's row format, for the upload benchmark.

Prompts are 40 words drawn from the Banking77 vocabulary-like word list below, responses are short
labels, and metadata carries the spec's known keys. Deterministic for a given seed.

    python bench/gen_jsonl.py --rows 1000000 --out /tmp/rows.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

WORDS = [
    "account",
    "card",
    "payment",
    "transfer",
    "balance",
    "money",
    "bank",
    "app",
    "refund",
    "charge",
    "fee",
    "exchange",
    "rate",
    "currency",
    "top",
    "up",
    "cash",
    "withdrawal",
    "pending",
    "declined",
    "verify",
    "identity",
    "pin",
    "blocked",
    "contactless",
    "virtual",
    "physical",
    "statement",
    "direct",
    "debit",
    "cheque",
    "deposit",
    "limit",
    "arrive",
    "delivery",
    "lost",
    "stolen",
    "phone",
    "passcode",
    "beneficiary",
    "why",
    "how",
    "when",
    "where",
    "can",
    "my",
    "the",
    "a",
    "is",
    "was",
    "not",
    "still",
    "yet",
    "I",
    "you",
    "please",
    "help",
    "need",
    "want",
    "received",
    "sent",
    "yesterday",
    "today",
    "week",
    "month",
    "wrong",
    "amount",
    "extra",
    "twice",
    "cancel",
    "order",
    "new",
    "change",
    "address",
    "name",
    "details",
]
LABELS = ["billing", "technical", "feature_request", "card", "transfer", "account", "refund"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--words", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--layout",
        choices=["spaced", "compact"],
        default="spaced",
        help="spaced: what json.dumps writes by default (', ' and ': '; 1M rows ~435 MB); compact: no spaces",
    )
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        separators = (", ", ": ") if args.layout == "spaced" else (",", ":")
        for i in range(args.rows):
            row = {
                "row_id": f"r_{i:07d}",
                "prompt": " ".join(rnd.choices(WORDS, k=args.words)),
                "response": rnd.choice(LABELS),
                "metadata": {
                    "source_trace_id": f"t_{rnd.getrandbits(48):012x}",
                    "cluster_id": rnd.randrange(3),
                    "judge_score": round(rnd.random(), 3),
                    "tags": ["bench", rnd.choice(LABELS)],
                },
            }
            f.write(json.dumps(row, separators=separators) + "\n")


if __name__ == "__main__":
    main()
