"""Rule-based PII and secret recognisers, with checksums where the data has one.

    det = PIIDetector()
    det.find("mail me at ana@example.com")        # [PIIMatch(kind="email", start=11, end=26)]
    det.redact("card 4111 1111 1111 1111")        # ("card [CREDIT_CARD]", [PIIMatch(...)])

Kinds: email; phone (international `+…`/`00…` numbers, and national numbers written in groups, 7-15
digits, not dates, amounts or card numbers); credit_card (13-19 digits with a known issuer prefix and a
valid Luhn check digit); iban (country code, length for that country, mod-97 check); national_id (US SSN
in its written form, UK National Insurance number, Spanish DNI/NIE with its check letter); ip_address (IPv4,
IPv6, validated); secret (API keys of OpenAI, Anthropic, AWS, GitHub, Slack, Google, Stripe; JWTs; private
key blocks; `password=`/`api_key:` assignments with a high-entropy value); person (names, only with a spaCy
NER pipeline installed by pip, else not checked, and `names_status` says so: nothing is downloaded).

Every recogniser is a regular expression behind a cheap pre-check (an '@', a digit, a key prefix), so text
without any of those costs a few string scans.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from opentracy.distillation.curation.config import PII_KINDS

LABELS = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "credit_card": "[CREDIT_CARD]",
    "iban": "[IBAN]",
    "national_id": "[NATIONAL_ID]",
    "ip_address": "[IP_ADDRESS]",
    "secret": "[SECRET]",
    "person": "[PERSON]",
}
# When two findings overlap, the more specific kind wins.
_PRIORITY = {
    "secret": 0,
    "email": 1,
    "iban": 2,
    "credit_card": 3,
    "national_id": 4,
    "ip_address": 5,
    "phone": 6,
    "person": 7,
}


@dataclass(frozen=True, slots=True)
class PIIMatch:
    kind: str
    start: int
    end: int


# --- email ------------------------------------------------------------------------------------------
_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![\w-])"
)

# --- numbers: cards, phones, ids ----------------------------------------------------------------------
_HAS_DIGIT = re.compile(r"\d")
# Digit runs that may be written with spaces, dashes, dots, slashes or parentheses between groups.
_NUMBERISH = re.compile(r"(?<![\w.+-])(?:\+|00)?\(?\d[\d \t().\-/]{4,24}\d(?![\w]|[.,]\d)")
_SEP = re.compile(r"[ \t().\-/]+")
_CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|3[0689]|35|6[0-9])")
_DATE = re.compile(r"^(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})$")
_THOUSANDS = re.compile(r"^\d{1,3}(?:[.,]\d{3})+$")
_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\w-])")
_NINO = re.compile(
    r"(?<![\w])(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![\w])"
)
_DNI = re.compile(r"(?<![\w])([XYZ]?)(\d{7,8})-?([A-Z])(?![\w])")
_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"

# --- IBAN ---------------------------------------------------------------------------------------------
_IBAN = re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{1,4}){3,8}(?![\w])")
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip

# --- IP addresses -------------------------------------------------------------------------------------
_IPV4 = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)"
)
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")

# --- secrets ------------------------------------------------------------------------------------------
_SECRET_HINT = re.compile(
    r"sk-|sk_|rk_|pk_|AKIA|ASIA|gh[pousr]_|github_pat_|xox[abprs]-|AIza|eyJ|PRIVATE KEY|[Kk][Ee][Yy]|[Ss]ecret|"
    r"SECRET|[Tt]oken|TOKEN|[Pp]ass|PASS|[Pp]wd"
)
_SECRETS = re.compile(
    r"(?<![\w-])(?:"
    r"sk-(?:proj-|ant-(?:api\d\d-)?|svcacct-)?[A-Za-z0-9_-]{20,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{36,}"
    r"|github_pat_[A-Za-z0-9_]{22,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r")(?![\w-])"
    r"|-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----(?:[\s\S]*?-----END (?:[A-Z]+ )*PRIVATE KEY-----)?"
)
_ASSIGNED = re.compile(
    r"(?i)\b(?:api[_ -]?key|secret(?:[_ -]?key)?|access[_ -]?token|auth[_ -]?token|token|password|passwd|pwd)"
    r"\b[\"']?[ \t]*(?:[:=]|\bis\b)[ \t]*[\"']?([^\s\"',;]{8,})"  # on one line
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(s: str) -> bool:
    s = s.replace(" ", "")
    if _IBAN_LENGTHS.get(s[:2]) != len(s):
        return False
    moved = s[4:] + s[:4]
    n = "".join(str(int(c, 36)) for c in moved)
    return int(n) % 97 == 1


def _entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _secret_value(v: str) -> bool:
    """A value worth masking after `password=`: long enough, mixed, and not a plain word or placeholder."""
    if v.lower() in ("null", "none", "true", "false", "undefined", "required", "optional", "string"):
        return False
    classes = sum(
        (any(c.islower() for c in v), any(c.isupper() for c in v), any(c.isdigit() for c in v),
         any(not c.isalnum() for c in v))
    )  # fmt: skip
    return classes >= 2 and _entropy(v) >= 2.8


class PIIDetector:
    """Finds PII and secrets in text. `kinds` limits what is looked for (all by default)."""

    def __init__(
        self, kinds: list[str] | tuple[str, ...] = PII_KINDS, names_model: str | None = None
    ) -> None:
        self.kinds = frozenset(kinds)
        self._nlp: Any = None
        self.names_status = "not asked for"
        if "person" in self.kinds:
            self._nlp, self.names_status = _load_names_model(names_model)

    def find(self, text: str) -> list[PIIMatch]:
        if not text:
            return []
        k = self.kinds
        found: list[PIIMatch] = []
        if "email" in k and "@" in text:
            found += [PIIMatch("email", m.start(), m.end()) for m in _EMAIL.finditer(text)]
        if "secret" in k and _SECRET_HINT.search(text):
            found += [PIIMatch("secret", m.start(), m.end()) for m in _SECRETS.finditer(text)]
            for m in _ASSIGNED.finditer(text):
                if _secret_value(m.group(1)):
                    found.append(PIIMatch("secret", m.start(1), m.end(1)))
        if _HAS_DIGIT.search(text):
            found += self._numbers(text)
        if self._nlp is not None:
            found += [
                PIIMatch("person", e.start_char, e.end_char)
                for e in self._nlp(text).ents
                if e.label_ == "PERSON"
            ]
        return _resolve(found) if len(found) > 1 else found

    def _numbers(self, text: str) -> list[PIIMatch]:
        k = self.kinds
        out: list[PIIMatch] = []
        if "iban" in k:
            out += [PIIMatch("iban", m.start(), m.end()) for m in _IBAN.finditer(text) if iban_ok(m.group())]
        if "national_id" in k:
            out += [PIIMatch("national_id", m.start(), m.end()) for m in _SSN.finditer(text)]
            out += [PIIMatch("national_id", m.start(), m.end()) for m in _NINO.finditer(text)]
            for m in _DNI.finditer(text):
                prefix, num, letter = m.groups()
                if len(num) == (7 if prefix else 8):
                    n = int(str("XYZ".index(prefix)) + num) if prefix else int(num)
                    if _DNI_LETTERS[n % 23] == letter:
                        out.append(PIIMatch("national_id", m.start(), m.end()))
        if "ip_address" in k:
            if "." in text:
                out += [PIIMatch("ip_address", m.start(), m.end()) for m in _IPV4.finditer(text)]
            if "::" in text or text.count(":") >= 3:
                for m in _IPV6.finditer(text):
                    try:
                        ipaddress.IPv6Address(m.group())
                    except ValueError:
                        continue
                    out.append(PIIMatch("ip_address", m.start(), m.end()))
        if "credit_card" in k or "phone" in k:
            for m in _NUMBERISH.finditer(text):
                kind = self._classify_number(m.group())
                if kind is not None and kind in k:
                    out.append(PIIMatch(kind, m.start(), m.end()))
        return out

    @staticmethod
    def _classify_number(s: str) -> str | None:
        s = s.strip()
        digits = _SEP.sub("", s.lstrip("+"))
        if not digits.isdigit():
            return None
        n = len(digits)
        if 13 <= n <= 19 and _CARD_PREFIX.match(digits) and luhn_ok(digits):
            seps = set(_SEP.findall(s))
            if seps <= {" ", "-"}:  # cards are written in groups with spaces or dashes, or not at all
                return "credit_card"
        if n < 7 or n > 15 or _DATE.match(s) or _THOUSANDS.match(s):
            return None
        if s.startswith("+") or (s.startswith("00") and n >= 10):
            return "phone"
        if n > 12:  # written without a country code, no national number is this long
            return None
        groups = [g for g in _SEP.split(s.strip("()")) if g]
        if len(groups) >= 2:
            # national formats: 555-123-4567, (555) 123 4567, 020 7946 0958, 06 12 34 56 78, 555-1234
            if all(2 <= len(g) <= 6 for g in groups[1:]) and len(groups[0]) <= 5 and n >= 7:
                if "." in s and not all(len(g) in (2, 3, 4) for g in groups):
                    return None
                return "phone"
            return None
        return "phone" if 10 <= n <= 11 else None

    def redact(self, text: str) -> tuple[str, list[PIIMatch]]:
        """The text with every finding replaced by its label ([EMAIL], [PHONE], ...), and the findings."""
        found = self.find(text)
        if not found:
            return text, found
        parts = []
        last = 0
        for f in found:
            parts.append(text[last : f.start])
            parts.append(LABELS[f.kind])
            last = f.end
        parts.append(text[last:])
        return "".join(parts), found


def _resolve(found: list[PIIMatch]) -> list[PIIMatch]:
    """Non-overlapping findings in text order; where two overlap the more specific (then longer) one stays."""
    found.sort(key=lambda f: (_PRIORITY[f.kind], -(f.end - f.start), f.start))
    kept: list[PIIMatch] = []
    for f in found:
        if all(f.end <= g.start or f.start >= g.end for g in kept):
            kept.append(f)
    kept.sort(key=lambda f: f.start)
    return kept


def _load_names_model(name: str | None) -> tuple[Any, str]:
    """A spaCy NER pipeline for person names, only if one is installed; never downloads."""
    candidates = [name] if name else ["en_core_web_sm", "en_core_web_md", "en_core_web_lg", "en_core_web_trf"]
    try:
        import importlib.util

        if importlib.util.find_spec("spacy") is None:
            return None, "person names not checked: spaCy is not installed (rule-based recognisers only)"
        for c in candidates:
            if importlib.util.find_spec(c) is not None:
                import spacy

                nlp = spacy.load(c, disable=["parser", "lemmatizer", "tagger", "attribute_ruler"])
                return nlp, f"person names checked with spaCy pipeline {c}"
    except Exception as e:  # a broken install: say so, use the rules
        return None, f"person names not checked: loading a spaCy pipeline failed ({type(e).__name__}: {e})"
    wanted = name or "en_core_web_sm"
    return None, (
        f"person names not checked: no spaCy NER pipeline installed ({wanted}); rule-based recognisers only"
    )
