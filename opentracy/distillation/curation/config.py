"""What a curation run is told to do: the judge, each rule, the review slice. Pydantic, so the same shape
comes from Python, JSON over HTTP and the CLI, is validated once, and is recorded whole in provenance.

Each rule section also accepts a shortcut: `true` (the defaults), `false` (off), and for some a string
(`pii="redact"`, `judge="openai/gpt-4o"`, `cluster=34`).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_JUDGE_MODEL = "openai/gpt-4o-mini"
DEFAULT_THRESHOLD = 0.5
_IDENT = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True

    @model_validator(mode="before")
    @classmethod
    def _shortcut(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return {"enabled": v}
        if v is None:
            return {"enabled": False}
        return v


class Criterion(BaseModel):
    """One thing the judge rates, on a 1-5 scale (stored normalised to 0-1). `weight` counts in the overall."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    weight: float = Field(1.0, gt=0, le=100)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _IDENT.match(v) or v in ("reason", "score"):
            raise ValueError(
                f"criterion name {v!r}: use lower-case letters, digits and '_', starting with a letter "
                "(not 'reason' or 'score')"
            )
        return v


DEFAULT_CRITERIA: tuple[Criterion, ...] = (
    Criterion(
        name="helpfulness",
        description="Does the response do what the prompt asks, completely and correctly, without refusing "
        "or hedging needlessly?",
    ),
    Criterion(
        name="relevance",
        description="Does the response stay on the prompt's task and subject, with nothing unrelated?",
    ),
    Criterion(
        name="format",
        description="Is the response in the form the prompt asks for (a label, JSON, code, prose...), "
        "complete (not cut off), and clean (no stray markup or chatter)?",
    ),
)
REFERENCE_CRITERION = Criterion(
    name="correctness",
    description="Does the response agree with the reference answer in substance (wording may differ)?",
)


class JudgeConfig(_Section):
    """The LLM judge. Rows whose overall score is below `threshold` are flagged (not deleted)."""

    model: str = DEFAULT_JUDGE_MODEL
    threshold: float = Field(DEFAULT_THRESHOLD, ge=0, le=1)
    criteria: list[Criterion] = Field(default_factory=lambda: list(DEFAULT_CRITERIA))
    # A metadata key that may hold an expected answer; rows that carry one are judged against it too.
    reference_field: str | None = "expected"
    reference_weight: float = Field(1.0, gt=0, le=100)
    # What the dataset is for, told to the judge (e.g. "classify banking queries into one of 77 intents").
    task: str | None = Field(None, max_length=4000)
    max_chars: int = Field(6000, ge=100, le=200_000)  # per prompt / response shown to the judge
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(300, ge=16, le=4000)
    # Rows judged at once by this run (the gateway also bounds calls in flight per provider).
    concurrency: int = Field(32, ge=1, le=1024)
    # Rows a rule drops anyway (empty, PII, too long...) are not sent to the judge unless this is true.
    judge_dropped: bool = False

    @model_validator(mode="before")
    @classmethod
    def _model_shortcut(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"model": v}
        return v

    @field_validator("criteria", mode="before")
    @classmethod
    def _criteria(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        by_name = {c.name: c for c in DEFAULT_CRITERIA}
        out = []
        for c in v:
            if isinstance(c, str):
                if c not in by_name:
                    raise ValueError(
                        f"unknown criterion {c!r}: built-in ones are {', '.join(by_name)}; give custom ones as "
                        '{"name", "description", "weight"}'
                    )
                out.append(by_name[c])
            else:
                out.append(c)
        if not out:
            raise ValueError("the judge needs at least one criterion")
        return out

    @model_validator(mode="after")
    def _unique(self) -> JudgeConfig:
        names = [c.name for c in self.criteria]
        if len(set(names)) != len(names):
            raise ValueError(f"criteria names must be unique: {names}")
        return self


class ErrorsRule(_Section):
    """Rows with errors: a trace error, an empty response, a refusal, a truncated output."""

    trace_error: bool = (
        True  # metadata.error / metadata.status == "error" / metadata.finish_reason == "error"
    )
    empty: bool = True
    refusal: bool = True
    truncated: bool = True  # metadata.finish_reason == "length", or a response cut off mid-structure
    refusal_patterns: list[str] = Field(default_factory=list, description="extra regular expressions")

    @field_validator("refusal_patterns")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"refusal pattern {p!r} is not a valid regular expression: {e}") from None
        return v


class ClusterRule(_Section):
    """Rows outside the target cluster. `cluster_id="auto"`: the cluster most rows carry."""

    cluster_id: int | str | None = "auto"
    missing: Literal["keep", "drop"] = "keep"  # rows that carry no cluster_id
    # Optional: also drop rows whose embedding is farther than this (cosine distance) from the centre.
    max_distance: float | None = Field(None, gt=0, le=2)
    embedder: str | None = None  # a named embedder (see filters/cluster.py); library callers pass an object

    @model_validator(mode="before")
    @classmethod
    def _id_shortcut(cls, v: Any) -> Any:
        if isinstance(v, (int, str)) and not isinstance(v, bool):
            return {"cluster_id": v}
        return v


class LengthRule(_Section):
    """Rows above a length limit, in characters and/or (estimated) tokens."""

    max_chars: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(4096, ge=1)
    field: Literal["prompt", "response", "both"] = "both"

    @model_validator(mode="before")
    @classmethod
    def _int_shortcut(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return {"max_tokens": v}
        return v


PII_KINDS = ("email", "phone", "credit_card", "iban", "national_id", "ip_address", "secret", "person")


class PIIRule(_Section):
    """Rows with personal data or secrets: dropped, or masked in place with `action="redact"`."""

    action: Literal["drop", "redact", "flag"] = "drop"
    kinds: list[str] = Field(default_factory=lambda: list(PII_KINDS))
    fields: Literal["prompt", "response", "both"] = "both"
    # A spaCy pipeline installed by pip (e.g. "en_core_web_sm") for person names; without one, names are
    # not checked and the report says so. Nothing is downloaded.
    names_model: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _action_shortcut(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"action": v}
        return v

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        bad = [k for k in v if k not in PII_KINDS]
        if bad:
            raise ValueError(f"unknown PII kind(s) {bad}; known: {', '.join(PII_KINDS)}")
        return v


class DedupRule(_Section):
    """Exact and near duplicates (MinHash/LSH); the best-scored copy of each group stays."""

    exact: bool = True
    near: bool = True
    threshold: float = Field(0.75, gt=0, le=1, description="estimated Jaccard similarity of shingles")
    on: Literal["prompt", "prompt+response"] = "prompt+response"
    num_perm: int = Field(128, ge=16, le=1024)
    shingle: int = Field(4, ge=1, le=20, description="characters per shingle")

    @model_validator(mode="before")
    @classmethod
    def _float_shortcut(cls, v: Any) -> Any:
        if isinstance(v, float):
            return {"threshold": v}
        return v


class JudgeFlaggedRule(_Section):
    """Rows the judge scored below the threshold (those held for review stay until a reviewer decides)."""

    drop_errors: bool = False  # also drop rows the judge could not score (flagged judge_error)


class MetadataRule(BaseModel):
    """A user rule over the row: `keep_if` keeps only matching rows, `drop_if` drops matching rows.

    Expressions: `tags contains "reviewed"`, `cluster_id == 34 and not (source == "synthetic")`,
    `judge_score >= 0.7`, `lang in ["en", "fr"]`, `customer exists`, `response matches "^[a-z_]+$"`.
    Fields are metadata keys (dotted for nesting); `prompt`, `response` and `row_id` name the row's own.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = "metadata_rule"
    keep_if: str | None = None
    drop_if: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _str_shortcut(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"keep_if": v}
        return v

    @model_validator(mode="after")
    def _one(self) -> MetadataRule:
        if (self.keep_if is None) == (self.drop_if is None):
            raise ValueError("a metadata rule needs exactly one of keep_if or drop_if")
        from opentracy.distillation.curation.expr import parse

        parse(self.keep_if or self.drop_if or "")  # a syntax error fails here, before any work
        if not _IDENT.match(self.name):
            raise ValueError(f"rule name {self.name!r}: use lower-case letters, digits and '_'")
        return self


class ReviewConfig(_Section):
    """The borderline slice for humans: the rows whose judge scores sit closest to the threshold."""

    size: int = Field(50, ge=0, le=5000)
    # Rows still pending when the version is frozen: "exclude" leaves them out, "include" keeps them.
    pending: Literal["exclude", "include"] = "exclude"

    @model_validator(mode="before")
    @classmethod
    def _int_shortcut(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return {"size": v}
        return v


class CurationConfig(BaseModel):
    """The whole run. Defaults: judge with openai/gpt-4o-mini at 0.5, every rule on, 50 rows to review."""

    model_config = ConfigDict(extra="forbid")

    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    errors: ErrorsRule = Field(default_factory=ErrorsRule)
    cluster: ClusterRule = Field(default_factory=ClusterRule)
    length: LengthRule = Field(default_factory=LengthRule)
    pii: PIIRule = Field(default_factory=PIIRule)
    dedup: DedupRule = Field(default_factory=DedupRule)
    judge_flagged: JudgeFlaggedRule = Field(default_factory=JudgeFlaggedRule)
    rules: list[MetadataRule] = Field(default_factory=list)
    review: ReviewConfig = Field(default_factory=ReviewConfig)

    @field_validator("judge", mode="before")
    @classmethod
    def _judge(cls, v: Any) -> Any:
        return {"enabled": False} if v is None or v is False else v

    @model_validator(mode="after")
    def _unique_rules(self) -> CurationConfig:
        names = [r.name for r in self.rules]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"metadata rules need distinct names; repeated: {sorted(dup)}")
        return self

    @classmethod
    def build(cls, config: CurationConfig | dict[str, Any] | None = None, **overrides: Any) -> CurationConfig:
        """A config from a dict (or None) plus keyword shortcuts: judge=, threshold=, pii=, dedup=, ...

        `threshold=` sets the judge's threshold; every other keyword names a section.
        """
        from opentracy.errors import InvalidInput

        base = config.model_dump() if isinstance(config, CurationConfig) else dict(config or {})
        threshold = overrides.pop("threshold", None)
        base.update({k: v for k, v in overrides.items() if v is not None})
        if threshold is not None:
            j = base.get("judge")
            j = {"model": j} if isinstance(j, str) else dict(j) if isinstance(j, dict) else {}
            j["threshold"] = threshold
            base["judge"] = j
        try:
            return cls.model_validate(base)
        except ValueError as e:
            raise InvalidInput(f"bad curation config: {_short(e)}") from None


def _short(e: Exception) -> str:
    errs = getattr(e, "errors", None)
    if callable(errs):
        out = []
        for x in errs()[:4]:
            loc = ".".join(str(p) for p in x.get("loc", ()))
            msg = str(x.get("msg", "")).removeprefix("Value error, ")
            out.append(f"{loc}: {msg}" if loc else msg)
        return "; ".join(out)
    return str(e)
