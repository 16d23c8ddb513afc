"""What a generation run will cost, before it runs: prompts × samples × expected tokens × price, for the
teacher and the judge.

Tokens are estimated from characters (about four a token, plus a few per message), the teacher's answers at
`expected_output_tokens` each (and at `max_tokens` for the upper bound, when the params set one), the
judge's request from its real prompt built around each seed, and its answer at JUDGE_OUTPUT_TOKENS. The
figure assumes every sample is judged: collapsed duplicates, answers the teacher could not give and
answers already in the cache cost less.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from opentracy.distillation.curation.rows import CurationRow, prompt_text
from opentracy.distillation.generation.config import GenerationConfig
from opentracy.distillation.generation.seeds import SeedFile

JUDGE_OUTPUT_TOKENS = 60  # three 1-5 scores and a one-sentence reason, as JSON


def text_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def message_tokens(messages: Sequence[dict[str, Any]]) -> int:
    """A rough count that needs no tokenizer: 3 + per message 4 + a token per 4 characters."""
    n = 3
    for m in messages:
        c = m.get("content")
        n += 4 + (text_tokens(c) if isinstance(c, str) else text_tokens(str(c or "")))
    return n


class CostModel:
    """Expected tokens and list-price cost of one teacher call and one judge call for a seed. The run uses it
    to reserve budget (with the mean of the answers seen so far in place of the assumption)."""

    def __init__(self, cfg: GenerationConfig, cost: Callable[[str, int, int], float | None], teacher: str,
                 judge_model: str | None, judge: Any = None) -> None:  # fmt: skip
        self.cfg = cfg
        self.cost = cost
        self.teacher = teacher
        self.judge_model = judge_model
        self.judge = judge
        self._judge_overhead = 0
        if judge is not None:
            self._judge_overhead = message_tokens(judge.messages(CurationRow("x", "", "")))

    def teacher_call(
        self, messages: Sequence[dict[str, Any]], out_tokens: int
    ) -> tuple[int, int, float | None]:
        tin = message_tokens(messages)
        return tin, out_tokens, self.cost(self.teacher, tin, out_tokens)

    def judge_call(self, prompt: str | list[dict[str, Any]], response_tokens: int,
                   out_tokens: int = JUDGE_OUTPUT_TOKENS) -> tuple[int, int, float | None]:  # fmt: skip
        if self.judge_model is None:
            return 0, 0, 0.0
        tin = self._judge_overhead + text_tokens(prompt_text(prompt)) + response_tokens
        return tin, out_tokens, self.cost(self.judge_model, tin, out_tokens)


def estimate(
    seeds: SeedFile, cfg: GenerationConfig, model: CostModel, rates: Callable[[str], Any]
) -> dict[str, Any]:
    """The estimate as a dict (what the API returns and the run records)."""
    n = cfg.n_samples
    exp_out = cfg.expected_output_tokens
    max_out = cfg.params.get("max_tokens")
    max_out = int(max_out) if isinstance(max_out, int) and not isinstance(max_out, bool) else None
    judge_max = model.judge.config.max_tokens if model.judge is not None else None

    def side(kind: str) -> dict[str, Any] | None:
        if kind == "judge" and model.judge_model is None:
            return None
        tin = tout = 0
        cost: float | None = 0.0
        hi: float | None = 0.0 if (max_out is not None or kind == "judge") else None
        for s in seeds.items:
            if kind == "teacher":
                a, b, c = model.teacher_call(s.messages, exp_out)
                c_hi = model.teacher_call(s.messages, max_out)[2] if max_out is not None else None
            else:
                a, b, c = model.judge_call(s.prompt, exp_out)
                c_hi = model.judge_call(s.prompt, max_out or exp_out, judge_max or JUDGE_OUTPUT_TOKENS)[2]
            tin, tout = tin + a * n, tout + b * n
            cost = None if cost is None or c is None else cost + c * n
            hi = None if hi is None or c_hi is None else hi + c_hi * n
        name = model.teacher if kind == "teacher" else model.judge_model
        return {
            "model": name,
            "calls": len(seeds.items) * n,
            "input_tokens": tin,
            "output_tokens": tout,
            "cost_usd": None if cost is None else round(cost, 6),
            "cost_usd_max": None if hi is None else round(hi, 6),
            "price_per_million_tokens": rates(name),  # type: ignore[arg-type]
        }

    teacher, judge = side("teacher"), side("judge")
    parts = [p for p in (teacher, judge) if p is not None]
    total = None if any(p["cost_usd"] is None for p in parts) else round(sum(p["cost_usd"] for p in parts), 6)
    total_max = (
        None
        if any(p["cost_usd_max"] is None for p in parts)
        else round(sum(p["cost_usd_max"] for p in parts), 6)
    )
    cap = cfg.max_cost_usd
    return {
        "prompts": len(seeds.items),
        "n_samples": n,
        "samples": len(seeds.items) * n,
        "teacher": teacher,
        "judge": judge,
        "cost_usd": total,
        "cost_usd_max": total_max,
        "max_cost_usd": cap,
        "within_cap": None if cap is None or total is None else total <= cap,
        "unknown_prices": [p["model"] for p in parts if p["cost_usd"] is None],
        "assumptions": {
            "teacher_output_tokens": exp_out,
            "teacher_max_tokens": max_out,
            "judge_output_tokens": JUDGE_OUTPUT_TOKENS if judge else None,
            "tokens": "about 4 characters a token, 4 a message",
            "every_sample_judged": judge is not None,
        },
        "seeds": seeds.summary(),
    }
