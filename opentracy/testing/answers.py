"""Deterministic default answers: chat text, JSON-schema instances, tool-call arguments, embeddings, token counts.

Everything here is a pure function of the request, so a test can predict it (and a re-run gets the same
bytes). Cheap on purpose: the mock server is the upstream of throughput benchmarks.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import re
import struct
from functools import lru_cache
from typing import Any

import msgspec

_ENC = msgspec.json.Encoder(order="sorted")

# --- token estimates -------------------------------------------------------------------------------


def estimate_tokens(text: str) -> int:
    """Tokens the mock charges for `text`: whitespace-separated words × 4 // 3."""
    return len(text.split()) * 4 // 3


def content_text(content: Any) -> str:
    """The text of a message `content`: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p.get("text") or "" if isinstance(p, dict) else str(p) for p in content if p is not None
        )
    return str(content)


def prompt_tokens(messages: Any) -> int:
    """Prompt tokens of a chat request: 3 + for each message (4 + its text's tokens, tool calls included)."""
    if not isinstance(messages, list):
        return 0
    total = 3
    for m in messages:
        if not isinstance(m, dict):
            continue
        total += 4 + estimate_tokens(content_text(m.get("content")))
        for tc in m.get("tool_calls") or ():
            fn = tc.get("function") or {} if isinstance(tc, dict) else {}
            total += estimate_tokens(f"{fn.get('name', '')} {fn.get('arguments', '')}")
    return total


def completion_tokens(content: str | None, tool_calls: list[dict[str, Any]] | None = None) -> int:
    """Completion tokens of one choice: its text's tokens plus, per tool call, those of 'name arguments'."""
    total = estimate_tokens(content or "")
    for tc in tool_calls or ():
        fn = tc.get("function") or {}
        total += estimate_tokens(f"{fn.get('name', '')} {fn.get('arguments', '')}")
    return total


def last_user_text(body: Any) -> str:
    """The text of the last user message (chat), or the joined input texts (embeddings)."""
    if not isinstance(body, dict):
        return ""
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user":
                return content_text(m.get("content"))
        return ""
    inp = body.get("input")
    if isinstance(inp, str):
        return inp
    if isinstance(inp, list):
        return "\n".join(x for x in inp if isinstance(x, str))
    return ""


# --- seeds ------------------------------------------------------------------------------------------


def request_seed(body: dict[str, Any]) -> int:
    """A 64-bit seed from what determines the answer: model, messages, tools, response format, seed."""
    key = _ENC.encode(
        [
            body.get("model"),
            body.get("messages"),
            body.get("seed"),
            body.get("response_format"),
            body.get("tools"),
            body.get("tool_choice"),
        ]
    )
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def choice_rng(seed: int, index: int) -> random.Random:
    """The generator for choice `index` (so the n choices of one request differ)."""
    return random.Random(seed * 1_000_003 + index)


# --- text -------------------------------------------------------------------------------------------

_ADJ = "quiet bright careful steady gentle clear rapid simple honest modest bold calm early final plain quick patient subtle vivid warm".split()  # noqa: SIM905
_NOUN = "river lantern answer garden signal ticket ledger harbor engine summary pattern window report question invoice bridge meadow record compass draft".split()  # noqa: SIM905
_VERB = "follows explains reaches supports shapes guides finds matches carries resolves describes improves reveals balances answers".split()  # noqa: SIM905
_PREP = "beside across toward under within beyond near after".split()  # noqa: SIM905
_ADV = "softly clearly quickly carefully gladly plainly steadily briefly".split()  # noqa: SIM905


def sentence(rng: random.Random) -> str:
    """One short sentence, e.g. 'The quiet river follows a clear signal beyond the harbor.'"""
    c = rng.choice
    s = f"The {c(_ADJ)} {c(_NOUN)} {c(_VERB)} a {c(_ADJ)} {c(_NOUN)} {c(_PREP)} the {c(_NOUN)}"
    if rng.random() < 0.5:
        s += f" {c(_ADV)}"
    return s + "."


def answer_text(rng: random.Random) -> str:
    """The default chat answer: one to three sentences (about 9 to 30 words)."""
    return " ".join(sentence(rng) for _ in range(rng.randint(1, 3)))


def words(rng: random.Random, n: int) -> str:
    pool = _ADJ + _NOUN
    return " ".join(rng.choice(pool) for _ in range(n))


# --- JSON schema instances -------------------------------------------------------------------------

_MAX_DEPTH = 6


def schema_instance(schema: Any, rng: random.Random) -> Any:
    """A valid instance of a JSON schema (the subset pydantic v2 and OpenAI structured outputs use).

    Handles type (or a list of types), properties/required/additionalProperties, string (enum, const,
    minLength/maxLength, format), integer/number (minimum/maximum, exclusive bounds, multipleOf),
    boolean, null, array (items, prefixItems, minItems/maxItems), `$ref` into `$defs`/`definitions`,
    anyOf/oneOf (the first non-null branch), allOf (merged). Recursive schemas stop at a fixed depth.
    """
    return _gen(schema, rng, schema if isinstance(schema, dict) else {}, 0)


def _resolve(s: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    seen = 0
    while "$ref" in s and seen < 32:
        ref = s["$ref"]
        target: Any = root
        if ref != "#":
            if not ref.startswith("#/"):
                raise ValueError(f"unsupported $ref {ref!r}")
            for part in ref[2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
        rest = {k: v for k, v in s.items() if k != "$ref"}
        s = {**target, **rest} if rest else target
        seen += 1
    return s


def _is_null(s: Any, root: dict[str, Any]) -> bool:
    if not isinstance(s, dict):
        return False
    s = _resolve(s, root)
    return s.get("type") == "null" or ("const" in s and s["const"] is None)


def _merge_all_of(s: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in s.items() if k != "allOf"}
    for sub in s["allOf"]:
        sub = _resolve(sub, root) if isinstance(sub, dict) else {}
        if "allOf" in sub:
            sub = _merge_all_of(sub, root)
        for k, v in sub.items():
            if k == "properties":
                out["properties"] = {**out.get("properties", {}), **v}
            elif k == "required":
                out["required"] = list(dict.fromkeys([*out.get("required", []), *v]))
            else:
                out.setdefault(k, v)
    return out


def _gen(s: Any, rng: random.Random, root: dict[str, Any], depth: int) -> Any:
    if depth > 64:
        raise ValueError("schema has no finite instance (a required field recurses forever)")
    if s is True or not isinstance(s, dict) or not s:
        return words(rng, 2)
    if "$ref" in s:
        s = _resolve(s, root)
    if "allOf" in s:
        s = _merge_all_of(s, root)
    if "const" in s:
        return s["const"]
    if s.get("enum"):
        return rng.choice(s["enum"])
    for key in ("anyOf", "oneOf"):
        if s.get(key):
            branches = s[key]
            real = [b for b in branches if not _is_null(b, root)]
            if not real or (depth >= _MAX_DEPTH and len(real) < len(branches)):
                return None
            base = {k: v for k, v in s.items() if k != key}
            branch = real[0]
            return _gen({**base, **branch} if base and isinstance(branch, dict) else branch, rng, root, depth)
    t = s.get("type")
    if isinstance(t, list):
        real_t = [x for x in t if x != "null"]
        if not real_t or (depth >= _MAX_DEPTH and "null" in t):
            return None
        t = real_t[0]
    if t is None:
        if "properties" in s or "additionalProperties" in s:
            t = "object"
        elif "items" in s or "prefixItems" in s:
            t = "array"
        else:
            t = "string"
    if t == "object":
        return _object(s, rng, root, depth)
    if t == "array":
        return _array(s, rng, root, depth)
    if t == "string":
        return _string(s, rng)
    if t == "integer":
        return _integer(s, rng)
    if t == "number":
        return _number(s, rng)
    if t == "boolean":
        return rng.random() < 0.5
    if t == "null":
        return None
    return words(rng, 2)


def _object(s: dict[str, Any], rng: random.Random, root: dict[str, Any], depth: int) -> dict[str, Any]:
    props: dict[str, Any] = s.get("properties") or {}
    required = set(s.get("required") or props)
    out: dict[str, Any] = {}
    for name, sub in props.items():
        if depth >= _MAX_DEPTH and name not in required:
            continue
        out[name] = _gen(sub, rng, root, depth + 1)
    extra = s.get("additionalProperties")
    want = int(s.get("minProperties") or 0)
    i = 0
    while len(out) < want:
        i += 1
        out[f"key{i}"] = _gen(extra if isinstance(extra, dict) else {}, rng, root, depth + 1)
    return out


def _array(s: dict[str, Any], rng: random.Random, root: dict[str, Any], depth: int) -> list[Any]:
    lo = int(s.get("minItems") or 0)
    hi = int(s["maxItems"]) if s.get("maxItems") is not None else max(lo, 3)
    prefix = s.get("prefixItems") or []
    n = lo if depth >= _MAX_DEPTH else rng.randint(max(lo, 1), max(lo, 1, min(hi, 3)))
    n = max(min(n, hi), lo)
    items = s.get("items")
    if items is False:
        n = min(n, len(prefix))
    out = []
    for i in range(n):
        sub = prefix[i] if i < len(prefix) else items
        out.append(_gen(sub if isinstance(sub, dict) else {}, rng, root, depth + 1))
    return out


def _string(s: dict[str, Any], rng: random.Random) -> str:
    fmt = s.get("format")
    if fmt == "date-time":
        v = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00Z"
    elif fmt == "date":
        v = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    elif fmt == "time":
        v = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00"
    elif fmt == "email":
        v = f"{rng.choice(_NOUN)}{rng.randint(1, 99)}@example.com"
    elif fmt in ("uri", "url"):
        v = f"https://example.com/{rng.choice(_NOUN)}"
    elif fmt == "uuid":
        v = "%08x-%04x-4%03x-8%03x-%012x" % (  # noqa: UP031
            rng.getrandbits(32),
            rng.getrandbits(16),
            rng.getrandbits(12),
            rng.getrandbits(12),
            rng.getrandbits(48),
        )
    else:
        v = words(rng, rng.randint(2, 5))
    lo = int(s.get("minLength") or 0)
    while len(v) < lo:
        v += " " + words(rng, 3)
    hi = s.get("maxLength")
    if hi is not None:
        v = v[: int(hi)]
    return v


def _bounds(s: dict[str, Any], step: float) -> tuple[float | None, float | None]:
    lo = s.get("minimum")
    hi = s.get("maximum")
    xlo = s.get("exclusiveMinimum")
    xhi = s.get("exclusiveMaximum")
    if isinstance(xlo, int | float) and not isinstance(xlo, bool):
        lo = xlo + step if lo is None else max(lo, xlo + step)
    if isinstance(xhi, int | float) and not isinstance(xhi, bool):
        hi = xhi - step if hi is None else min(hi, xhi - step)
    return lo, hi


def _integer(s: dict[str, Any], rng: random.Random) -> int:
    lo, hi = _bounds(s, 1)
    lo_i = math.ceil(lo) if lo is not None else None
    hi_i = math.floor(hi) if hi is not None else None
    if lo_i is None and hi_i is None:
        lo_i, hi_i = 0, 100
    elif lo_i is None:
        lo_i = hi_i - 100  # type: ignore[operator]
    elif hi_i is None:
        hi_i = lo_i + 100
    if hi_i < lo_i:  # type: ignore[operator]
        hi_i = lo_i
    m = s.get("multipleOf")
    if isinstance(m, int) and m > 0:
        first = -(-lo_i // m) * m  # type: ignore[operator]
        if first <= hi_i:  # type: ignore[operator]
            return first + m * rng.randint(0, (hi_i - first) // m)  # type: ignore[operator]
    return rng.randint(lo_i, hi_i)  # type: ignore[arg-type]


def _number(s: dict[str, Any], rng: random.Random) -> float:
    lo, hi = _bounds(s, 1e-6)
    if lo is None and hi is None:
        lo, hi = 0.0, 100.0
    elif lo is None:
        lo = hi - 100.0  # type: ignore[operator]
    elif hi is None:
        hi = lo + 100.0
    if hi < lo:  # type: ignore[operator]
        hi = lo
    raw = lo + rng.random() * (hi - lo)  # type: ignore[operator]
    v = round(raw, 2)
    if not lo <= v <= hi:  # type: ignore[operator]
        v = raw
    m = s.get("multipleOf")
    if isinstance(m, int | float) and m > 0:
        first = math.ceil(lo / m)  # type: ignore[operator]
        last = math.floor(hi / m)  # type: ignore[operator]
        if first <= last:
            v = rng.randint(first, last) * m
    return float(v)


def response_format_instance(response_format: Any, rng: random.Random) -> str | None:
    """The JSON text answering a `response_format` (json_schema or json_object), or None for plain text."""
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            schema = {"type": "object"}
        return msgspec.json.encode(schema_instance(schema, rng)).decode()
    if kind == "json_object":
        return msgspec.json.encode({"answer": answer_text(rng)}).decode()
    return None


def forced_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function tool the request forces (`tool_choice` naming one, or "required"), else None."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools:
        return None
    fns = [t.get("function") for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if not fns:
        return None
    if choice == "required":
        return fns[0]
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return next((f for f in fns if f.get("name") == name), None)
    return None


def tool_call(fn: dict[str, Any], rng: random.Random, index: int) -> dict[str, Any]:
    args = schema_instance(fn.get("parameters") or {"type": "object"}, rng)
    return {
        "id": f"call_{rng.getrandbits(64):016x}",
        "type": "function",
        "function": {"name": fn.get("name", "tool"), "arguments": msgspec.json.encode(args).decode()},
    }


def normalize_tool_calls(calls: list[Any]) -> list[dict[str, Any]]:
    """Tool calls in the OpenAI shape. Accepts that shape, or the shorthand {"name", "arguments"}."""
    out = []
    for i, tc in enumerate(calls):
        if not isinstance(tc, dict):
            raise ValueError(f"tool_calls[{i}] must be an object")
        fn = tc.get("function") if isinstance(tc.get("function"), dict) else tc
        args = fn.get("arguments", {})
        if not isinstance(args, str):
            args = msgspec.json.encode(args).decode()
        out.append(
            {
                "id": tc.get("id") or f"call_mock{i}",
                "type": "function",
                "function": {"name": fn.get("name", "tool"), "arguments": args},
            }
        )
    return out


# --- embeddings -------------------------------------------------------------------------------------

DEFAULT_EMBEDDING_DIMS = 384
_WORD_RE = re.compile(r"\w+")
_SLOTS = 8


@lru_cache(maxsize=65536)
def _slots(token: str, dims: int) -> tuple[tuple[int, float], ...]:
    h = int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=32).digest(), "little")
    out = []
    for _ in range(_SLOTS):
        h, r = divmod(h, dims * 2)
        out.append((r >> 1, 1.0 if r & 1 else -1.0))
    return tuple(out)


def embedding(text: str, dims: int = DEFAULT_EMBEDDING_DIMS) -> list[float]:
    """A deterministic unit vector for `text`, by feature hashing.

    Each lower-cased word adds ±1 in 8 hashed dimensions and the whole text adds ±0.5 in 8 more, so equal
    texts get equal vectors, different texts different ones, and texts sharing words are close (cosine),
    which keeps clustering tests meaningful.
    """
    v = [0.0] * dims
    for w in _WORD_RE.findall(text.lower()):
        for i, sign in _slots(w, dims):
            v[i] += sign
    for i, sign in _slots("\x00" + text, dims):
        v[i] += 0.5 * sign
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def embedding_base64(vec: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
