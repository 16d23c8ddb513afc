"""What the mock answers: `Reply`, scripts (a function or a list of rules) and script files."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json as jsonlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentracy.errors import InvalidInput


@dataclass
class Reply:
    """One scripted answer. Fields left at their defaults keep the mock's default behaviour.

    content: the assistant's text (None: the default answer, or a schema instance when the request asks
        for JSON; with status >= 400 it is the error message).
    status: HTTP status; >= 400 returns OpenAI's error shape {"error": {"message", "type", "code", "param"}}
        (Anthropic's {"type": "error", "error": {"type", "message"}} on `POST /v1/messages`).
    headers: extra response headers, e.g. {"retry-after": "1"} on a 429.
    json: the whole response body, sent as is with `status` (overrides everything but latency and headers).
    latency_ms: delay before answering (None: the server's `latency_ms`).
    hang: never answer, until the client disconnects or the server stops.
    malformed: answer 200 with a body that is not valid JSON (a broken SSE event when streaming).
    usage: override usage fields (prompt_tokens, completion_tokens; total_tokens is their sum if absent;
        on /v1/messages also input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens).
    finish_reason: finish_reason of every choice.
    tool_calls: tool calls of the assistant message, in OpenAI's shape or as {"name", "arguments"}.
    chunk_delay_ms: when streaming, pause between chunks (0: all chunks are written at once).
    """

    content: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    json: dict[str, Any] | None = None
    latency_ms: int | None = None
    hang: bool = False
    malformed: bool = False
    usage: dict[str, int] | None = None
    finish_reason: str = "stop"
    tool_calls: list[dict[str, Any]] | None = None
    chunk_delay_ms: int = 0


REPLY_FIELDS = frozenset(f.name for f in dataclasses.fields(Reply))
MATCH_FIELDS = frozenset({"model", "contains", "path"})

ScriptFn = Callable[[dict[str, Any]], "Reply | str | dict[str, Any] | None | Awaitable[Any]"]


def as_reply(value: Any) -> Reply | None:
    """What a script function returned, as a Reply: None (default behaviour), a Reply, a str (the
    answer's text) or a dict (the whole JSON body)."""
    if value is None or isinstance(value, Reply):
        return value
    if isinstance(value, str):
        return Reply(content=value)
    if isinstance(value, dict):
        return Reply(json=value)
    raise TypeError(f"a mock script returned {type(value).__name__}; expected Reply, str, dict or None")


def _reply_from(value: Any, where: str) -> Reply:
    if isinstance(value, Reply):
        return value
    if isinstance(value, str):
        return Reply(content=value)
    if not isinstance(value, dict):
        raise ValueError(f"{where}: 'reply' must be an object (Reply fields) or a string")
    unknown = set(value) - REPLY_FIELDS
    if unknown:
        raise ValueError(
            f"{where}: unknown reply field(s) {sorted(unknown)}; known: {', '.join(sorted(REPLY_FIELDS))}"
        )
    try:
        return Reply(**value)
    except TypeError as e:  # pragma: no cover - guarded by the field check
        raise ValueError(f"{where}: {e}") from None


@dataclass
class Rule:
    """Answer `reply` to requests that match (every given matcher must hold), at most `times` times."""

    reply: Reply
    model: str | None = None
    contains: str | None = None
    path: str | None = None
    times: int | None = None

    def matches(self, request: dict[str, Any], last_user: str) -> bool:
        if self.path is not None:
            p = request.get("path", "")
            if p != self.path and not p.endswith(self.path):
                return False
        body = request.get("body")
        if self.model is not None and (not isinstance(body, dict) or body.get("model") != self.model):
            return False
        return self.contains is None or self.contains in last_user

    @classmethod
    def parse(cls, raw: Any, index: int) -> Rule:
        where = f"rule {index}"
        if isinstance(raw, Rule):
            return raw
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: must be an object with 'reply' (and optional 'match', 'times')")
        unknown = set(raw) - {"match", "reply", "times"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: match, reply, times")
        if "reply" not in raw:
            raise ValueError(f"{where}: missing 'reply'")
        match = raw.get("match") or {}
        if not isinstance(match, dict):
            raise ValueError(f"{where}: 'match' must be an object")
        bad = set(match) - MATCH_FIELDS
        if bad:
            raise ValueError(f"{where}: unknown match key(s) {sorted(bad)}; known: contains, model, path")
        for k, v in match.items():
            if not isinstance(v, str):
                raise ValueError(f"{where}: match.{k} must be a string")
        times = raw.get("times")
        if times is not None and (not isinstance(times, int) or isinstance(times, bool) or times < 0):
            raise ValueError(f"{where}: 'times' must be a non-negative integer")
        return cls(reply=_reply_from(raw["reply"], where), times=times, **match)


class Script:
    """A compiled script: None, a function, or rules with per-rule use counters."""

    def __init__(self, script: Any = None) -> None:
        self.fn: ScriptFn | None = None
        self.rules: list[Rule] = []
        if script is None:
            pass
        elif callable(script):
            self.fn = script
        elif isinstance(script, list | tuple):
            self.rules = [Rule.parse(r, i) for i, r in enumerate(script)]
        else:
            raise TypeError("script must be None, a function of the request, or a list of rules")
        self.used = [0] * len(self.rules)

    def reset(self) -> None:
        self.used = [0] * len(self.rules)

    @property
    def empty(self) -> bool:
        return self.fn is None and not self.rules

    async def resolve(self, request: dict[str, Any], last_user: str) -> Reply | None:
        if self.fn is not None:
            got = self.fn(request)
            if inspect.isawaitable(got):
                got = await got
            return as_reply(got)
        used = self.used
        for i, rule in enumerate(self.rules):
            if rule.times is not None and used[i] >= rule.times:
                continue
            if rule.matches(request, last_user):
                used[i] += 1
                return rule.reply
        return None


def load_script(path: str | Path) -> list[dict[str, Any]] | ScriptFn:
    """Read a script file for `opentracy mock-llm --script`.

    A `.json` file holds the list of rules (or {"rules": [...]}). A `.py` file defines `reply(request)`
    (returning a Reply, a str, a dict or None, like a script function) or a list named `rules`.
    Raises InvalidInput naming the file when it cannot be used.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidInput("no such script file", file=str(p))
    if p.suffix == ".py":
        spec = importlib.util.spec_from_file_location(f"_opentracy_mock_script_{p.stem}", p)
        if spec is None or spec.loader is None:
            raise InvalidInput("cannot import this file", file=str(p))
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
        except Exception as e:
            raise InvalidInput(f"importing the script failed: {type(e).__name__}: {e}", file=str(p)) from None
        if callable(getattr(mod, "reply", None)):
            return mod.reply
        rules = getattr(mod, "rules", None)
        if not isinstance(rules, list):
            raise InvalidInput("a .py script must define reply(request) or a list named rules", file=str(p))
    else:
        try:
            rules = jsonlib.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidInput(f"not valid JSON: {e}", file=str(p)) from None
        if isinstance(rules, dict) and isinstance(rules.get("rules"), list):
            rules = rules["rules"]
        if not isinstance(rules, list):
            raise InvalidInput('a JSON script must be a list of rules (or {"rules": [...]})', file=str(p))
    try:
        Script(rules)
    except ValueError as e:
        raise InvalidInput(str(e), file=str(p)) from None
    return rules
