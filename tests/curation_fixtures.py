"""Rows with known noise, and a scripted judge, for the curation tests (built here: no shared data)."""

from __future__ import annotations

import json
import random

from opentracy.testing import Reply

WORDS = [
    "card",
    "transfer",
    "refund",
    "cash",
    "pin",
    "limit",
    "fee",
    "rate",
    "app",
    "phone",
    "visa",
    "atm",
    "balance",
    "account",
    "payment",
    "salary",
    "statement",
    "currency",
    "euro",
    "dollar",
    "pound",
    "travel",
    "abroad",
    "online",
    "shop",
    "declined",
    "pending",
    "blocked",
    "stolen",
    "lost",
    "contactless",
    "virtual",
    "physical",
    "delivery",
    "address",
    "verify",
    "identity",
    "passport",
    "selfie",
    "code",
    "password",
    "login",
    "freeze",
    "unfreeze",
    "cancel",
    "charge",
    "exchange",
    "topup",
    "cheque",
    "direct",
    "debit",
    "standing",
    "order",
    "merchant",
    "receipt",
]
LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "declined_transfer"]


def prompt_for(i: int) -> str:
    rnd = random.Random(i)
    return f"Ticket {i}: " + " ".join(rnd.sample(WORDS, 9)) + "?"


def noisy_rows(n_clean: int = 220) -> tuple[list[dict], dict[str, str]]:
    """Clean rows plus injected noise; returns (rows, {row_id: the rule that must drop or flag it})."""
    rows: list[dict] = []
    truth: dict[str, str] = {}

    def add(rid: str, prompt: str, response: str, why: str | None = None, **meta) -> None:
        meta.setdefault("cluster_id", 34)
        rows.append({"row_id": rid, "prompt": prompt, "response": response, "metadata": meta})
        if why:
            truth[rid] = why

    for i in range(n_clean):
        add(f"r_{i:04d}", prompt_for(i), LABELS[i % 5])
    for k in range(4):
        add(f"empty_{k}", prompt_for(1000 + k), "", "empty_response")
    for k in range(3):
        add(f"refusal_{k}", prompt_for(1100 + k), "I'm sorry, but I can't help with that request.", "refusal")
    for k in range(3):
        add(f"trunc_{k}", prompt_for(1200 + k), "card_arr", "truncated", finish_reason="length")
    for k in range(3):
        add(f"off_{k}", prompt_for(1300 + k), "weather", "off_cluster", cluster_id=99)
    for k, pii in enumerate(
        ["my email is ana@example.com", "card 4111 1111 1111 1111", "call +44 20 7946 0958"]
    ):
        add(f"pii_{k}", prompt_for(1400 + k) + " " + pii, LABELS[k], "pii")
    for k in range(4):  # exact copies of clean rows
        src = rows[k * 7]
        add(f"dup_{k}", src["prompt"], src["response"], "exact_duplicate")
    for k in range(3):  # near copies: one word changed
        src = rows[k * 11 + 1]
        add(f"near_{k}", src["prompt"].replace("?", " please?"), src["response"], "near_duplicate")
    for k in range(6):  # rows the judge will score low
        add(f"bad_{k}", prompt_for(1500 + k) + " [bad]", "no idea", "judge_flagged")
    return rows, truth


def verdict(user: str) -> dict:
    if "[bad]" in user:
        return {"helpfulness": 1, "relevance": 2, "format": 1, "reason": "does not answer"}
    # Clean rows: a score that depends on the ticket number, so a few sit near the threshold.
    digits = "".join(c for c in user.split("Ticket ", 1)[-1][:6] if c.isdigit())
    i = int(digits or 0)
    h = 3 + (i % 3)  # 3, 4 or 5
    return {"helpfulness": h, "relevance": 5, "format": 4 if i % 4 else 3, "reason": "fine"}


def judge_script(req: dict):
    user = req["body"]["messages"][-1]["content"]
    return Reply(content=json.dumps(verdict(user)), usage={"prompt_tokens": 400, "completion_tokens": 30})


def write_rows(path, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
