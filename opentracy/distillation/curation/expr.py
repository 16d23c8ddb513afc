"""A small, safe expression language over a row's metadata, for user rules.

    tags contains "reviewed"
    cluster_id == 34 and not (source == "synthetic")
    judge_score >= 0.7 or reviewer exists
    lang in ["en", "fr"]
    response matches "^[a-z_]+$"

Fields are metadata keys (dotted paths reach into nested objects); `prompt`, `response` and `row_id` are the
row's own fields. Operators: == != < <= > >= contains in matches exists, joined by and / or / not and
parentheses. A field that is absent compares as null: `x == null` holds, `x > 1` does not. Nothing is
evaluated as Python; a mistake is an InvalidInput naming the column where it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from opentracy.errors import InvalidInput

_TOKEN = re.compile(
    r"""\s*(?:
    (?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
    )""",
    re.VERBOSE,
)
_WORD_OPS = {"contains", "in", "matches", "exists"}
_KEYWORDS = {"and", "or", "not", "true", "false", "null"} | _WORD_OPS
ROW_FIELDS = ("prompt", "response", "row_id")

Pred = Callable[[Any], bool]


@dataclass
class _Tok:
    kind: str
    value: Any
    pos: int


def _lex(src: str) -> list[_Tok]:
    out: list[_Tok] = []
    i = 0
    while i < len(src):
        if src[i:].strip() == "":
            break
        m = _TOKEN.match(src, i)
        if m is None or m.end() == i:
            raise InvalidInput(
                f"rule {src!r}: cannot read what starts at column {i + 1}: {src[i : i + 20]!r}"
            )
        kind = m.lastgroup or ""
        text = m.group(kind)
        start = m.start(kind)
        if kind == "num":
            out.append(_Tok("value", float(text) if any(c in text for c in ".eE") else int(text), start))
        elif kind == "str":
            out.append(_Tok("value", _unquote(text), start))
        elif kind == "word" and text in ("true", "false", "null"):
            out.append(_Tok("value", {"true": True, "false": False, "null": None}[text], start))
        elif kind == "word" and text in _KEYWORDS:
            out.append(_Tok("kw", text, start))
        else:
            out.append(_Tok(kind, text, start))
        i = m.end()
    return out


def _unquote(s: str) -> str:
    body = s[1:-1]
    if s[0] == "'":
        body = body.replace('\\"', '"').replace("\\'", "'").replace('"', '\\"')
    return json.loads('"' + body + '"')


class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.toks = _lex(src)
        self.i = 0

    def fail(self, what: str) -> InvalidInput:
        pos = self.toks[self.i].pos + 1 if self.i < len(self.toks) else len(self.src) + 1
        return InvalidInput(f"rule {self.src!r}: {what} at column {pos}")

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, kind: str, value: Any = None) -> _Tok | None:
        t = self.peek()
        if t is not None and t.kind == kind and (value is None or t.value == value):
            self.i += 1
            return t
        return None

    def parse(self) -> Pred:
        if not self.toks:
            raise InvalidInput('empty rule: write a condition such as tags contains "reviewed"')
        p = self.or_()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek().value!r}")  # type: ignore[union-attr]
        return p

    def or_(self) -> Pred:
        parts = [self.and_()]
        while self.take("kw", "or"):
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else (lambda r, ps=tuple(parts): any(p(r) for p in ps))

    def and_(self) -> Pred:
        parts = [self.not_()]
        while self.take("kw", "and"):
            parts.append(self.not_())
        return parts[0] if len(parts) == 1 else (lambda r, ps=tuple(parts): all(p(r) for p in ps))

    def not_(self) -> Pred:
        if self.take("kw", "not"):
            inner = self.not_()
            return lambda r: not inner(r)
        return self.atom()

    def atom(self) -> Pred:
        if self.take("op", "("):
            p = self.or_()
            if not self.take("op", ")"):
                raise self.fail("expected ')'")
            return p
        f = self.take("word")
        if f is None:
            raise self.fail("expected a field name")
        get = _getter(f.value)
        if self.take("kw", "exists"):
            return lambda r: get(r) is not _MISSING
        op = self.take("op") or self.take("kw")
        if op is None or op.value in ("(", ")", "[", "]", ",", "and", "or", "not"):
            raise self.fail(
                f"expected an operator after {f.value!r} (== != < <= > >= contains in matches exists)"
            )
        value = self.value()
        return _compare(get, op.value, value, self)

    def value(self) -> Any:
        if self.take("op", "["):
            items = []
            if not self.take("op", "]"):
                while True:
                    items.append(self.value())
                    if self.take("op", "]"):
                        break
                    if not self.take("op", ","):
                        raise self.fail("expected ',' or ']'")
            return items
        t = self.take("value")
        if t is None:
            raise self.fail('expected a value (a number, a "string", true, false, null or a [list])')
        return t.value


class _Missing:
    pass


_MISSING = _Missing()


def _getter(path: str) -> Callable[[Any], Any]:
    if path in ROW_FIELDS:
        return lambda r: getattr(r, path)
    keys = path.split(".")
    if keys[0] == "metadata" and len(keys) > 1:
        keys = keys[1:]

    def get(r: Any) -> Any:
        cur: Any = r.metadata
        for k in keys:
            if not isinstance(cur, dict) or k not in cur:
                return _MISSING
            cur = cur[k]
        return cur

    return get


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _compare(get: Callable[[Any], Any], op: str, value: Any, p: _Parser) -> Pred:
    if op == "matches":
        if not isinstance(value, str):
            raise p.fail("'matches' takes a \"regular expression\"")
        try:
            rx = re.compile(value)
        except re.error as e:
            raise p.fail(f"bad regular expression {value!r} ({e})") from None
        return lambda r: isinstance(v := get(r), str) and rx.search(v) is not None
    if op == "in":
        if not isinstance(value, list):
            raise p.fail("'in' takes a [list]")
        return lambda r: (v := get(r)) is not _MISSING and v in value
    if op == "contains":
        return lambda r: (isinstance(v := get(r), list) and value in v) or (
            isinstance(v, str) and isinstance(value, str) and value in v
        )
    if op in ("==", "!="):

        def eq(r: Any) -> bool:
            v = get(r)
            return (None if v is _MISSING else v) == value

        return eq if op == "==" else (lambda r: not eq(r))
    if op in ("<", "<=", ">", ">="):
        if not (_num(value) or isinstance(value, str)):
            raise p.fail(f"'{op}' compares with a number or a string")
        cmp = {
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
        }[op]

        def ordered(r: Any) -> bool:
            v = get(r)
            if _num(value) and _num(v) or isinstance(value, str) and isinstance(v, str):
                return bool(cmp(v, value))
            return False

        return ordered
    raise p.fail(f"unknown operator {op!r}")


@lru_cache(maxsize=256)
def parse(src: str) -> Pred:
    """Compile a rule into a predicate over rows (objects with row_id, prompt, response, metadata)."""
    return _Parser(src).parse()
