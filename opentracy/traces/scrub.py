"""Secrets never reach the store: keys that name a secret are dropped, and values that look like one are
masked, in request parameters, metadata and message text alike.

    scrub_obj({"api_key": "sk-…", "temperature": 0})   # {"temperature": 0}
    scrub_text("my key is sk-abc…xyz")                  # "my key is [REDACTED]"
"""

from __future__ import annotations

import functools
import re
from typing import Any

REDACTED = "[REDACTED]"

# Field names that hold a secret (compared lower-case, with '-' read as '_').
SECRET_KEYS = frozenset(
    {
        "api_key",
        "apikey",
        "x_api_key",
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "access_token",
        "refresh_token",
        "id_token",
        "auth_token",
        "bearer_token",
        "session_token",
        "private_key",
        "aws_secret_access_key",
    }
)
_SECRET_SUFFIXES = ("_api_key", "_secret", "_password", "_access_token", "_auth_token", "_private_key")

# Values that are credentials whatever field they sit in.
SECRET_VALUE = re.compile(
    r"(?:\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}"  # OpenAI / Anthropic keys
    r"|\bBearer\s+[A-Za-z0-9._~+/=-]{16,}"  # bearer tokens
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key ids
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}"  # GitHub tokens
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|\bAIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|\bhf_[A-Za-z0-9]{30,}"  # Hugging Face tokens
    r")"
)


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    k = key.lower().replace("-", "_")
    return k in SECRET_KEYS or k.endswith(_SECRET_SUFFIXES)


def scrub_text(s: str) -> str:
    # Cheap precheck (substring tests run in C): every pattern above starts with one of these.
    if "sk-" in s or "Bearer" in s or "AKIA" in s or "gh" in s or "xox" in s or "AIza" in s or "hf_" in s:
        return SECRET_VALUE.sub(REDACTED, s)
    return s


def scrub_obj(o: Any) -> Any:
    """A copy of `o` (JSON-like) without secret keys and with secret-looking strings masked."""
    t = type(o)
    if t is str:
        return scrub_text(o)
    if t is dict:
        return {k: scrub_obj(v) for k, v in o.items() if not (type(k) is str and is_secret_key(k))}
    if t is list:
        return [scrub_obj(v) for v in o]
    if isinstance(o, str):
        return scrub_text(o)
    if isinstance(o, dict):
        return {k: scrub_obj(v) for k, v in o.items() if not (isinstance(k, str) and is_secret_key(k))}
    if isinstance(o, list):
        return [scrub_obj(v) for v in o]
    return o


def scrub_message(m: dict[str, Any]) -> dict[str, Any]:
    """A chat message: its text masked; its keys are the message's own (role, content…), not secrets."""
    c = m.get("content")
    if type(c) is str and len(m) == 2 and "role" in m:
        sc = scrub_text(c)
        return m if sc is c else {"role": m["role"], "content": sc}
    return scrub_obj(m)
