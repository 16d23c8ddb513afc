"""A scripted teacher and judge for the generation tests (built here: no shared data).

The teacher's answer to (prompt, seed) is two random sentences (distinct per sample, so the dedupe does not
collapse them) ending in `quality Q.`; the judge reads Q back and gives every criterion Q (1-5), so a sample
of quality Q scores (Q - 1) / 4. Tests set Q per (prompt, sample), make calls fail, or make answers repeat.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from typing import Any

from opentracy.testing import Reply
from opentracy.testing.answers import sentence

_RESPONSE = re.compile(r"<response>\n(.*?)\n</response>", re.S)
_QUALITY = re.compile(r"quality (\d)")


def body_text(prompt: str, seed: int) -> str:
    rng = random.Random(int.from_bytes(hashlib.sha256(f"{prompt}|{seed}".encode()).digest()[:8], "little"))
    return f"{sentence(rng)} {sentence(rng)}"


class Script:
    def __init__(self, quality: dict[tuple[str, int], int] | None = None, default: int = 3) -> None:
        self.quality = dict(quality or {})
        self.default = default
        # (prompt, seed) -> failures left (None: always); each failure answers `fail_status`
        self.fail: dict[tuple[str, int], int | None] = {}
        self.fail_status = 500
        self.judge_fail: set[str] = set()  # prompts whose judge calls always fail
        self.same: dict[tuple[str, int], int] = {}  # (prompt, seed) -> answer exactly as this other seed
        self.near: dict[
            tuple[str, int], int
        ] = {}  # (prompt, seed) -> answer as this other seed, one word off
        self.teacher_calls: list[tuple[str, int]] = []
        self.judge_calls: list[str] = []
        self._lock = threading.Lock()

    def answer(self, prompt: str, seed: int) -> str:
        if (prompt, seed) in self.same:
            return self.answer(prompt, self.same[(prompt, seed)])
        if (prompt, seed) in self.near:  # the other answer with its last sentence's first word changed
            text = self.answer(prompt, self.near[(prompt, seed)])
            return text.replace(" It is quality", " This is quality", 1)
        q = self.quality.get((prompt, seed), self.default)
        return f"{body_text(prompt, seed)} It is quality {q}."

    def __call__(self, request: dict[str, Any]) -> Reply | str | None:
        body = request["body"]
        if not request["path"].endswith("/chat/completions") or not isinstance(body, dict):
            return None
        user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        if body.get("response_format"):  # the judge
            m = _RESPONSE.search(user)
            resp = m.group(1) if m else ""
            prompt = user.split("<prompt>\n", 1)[-1].split("\n</prompt>", 1)[0]
            with self._lock:
                self.judge_calls.append(resp)
            if prompt in self.judge_fail:
                return Reply(status=500)
            q = int(_QUALITY.search(resp).group(1)) if _QUALITY.search(resp) else 3
            return json.dumps({"helpfulness": q, "relevance": q, "format": q, "reason": f"quality {q}"})
        seed = int(body.get("seed", 0))
        key = (user, seed)
        with self._lock:
            self.teacher_calls.append(key)
            if key in self.fail:
                left = self.fail[key]
                if left is None or left > 0:
                    if left is not None:
                        self.fail[key] = left - 1
                    return Reply(status=self.fail_status)
        return self.answer(user, seed)


def write_jsonl(path: Any, records: list[dict[str, Any]]) -> Any:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path
