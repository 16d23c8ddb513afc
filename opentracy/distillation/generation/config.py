"""What a generation run is told to do. Pydantic, so the same shape comes from Python, JSON over HTTP and the
CLI, is validated once (a mistake fails before anything is paid), and is recorded whole in provenance.

    GenerationConfig.build(teacher="openai/gpt-4o", n_samples=4, judge="openai/gpt-4o-mini", keep=2,
                           threshold=0.6, params={"temperature": 0.9}, max_cost_usd=5)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from opentracy.distillation.curation.config import ErrorsRule, JudgeConfig
from opentracy.errors import InvalidInput

SEED_FORMATS = ("txt", "jsonl", "csv")
# Metadata keys a generated row gets from the run; a seed's own metadata may not set them.
RESERVED_META = ("teacher_model", "judge_score", "judge", "sample", "generation")
# Parameters the run sets itself (one answer per call, `sample` is the seed unless a seed is given).
_FORBIDDEN_PARAMS = {"model", "messages", "n", "stream", "stream_options", "response_format", "tools"}


class DedupeConfig(BaseModel):
    """Samples of the same prompt that say the same thing are collapsed before judging (the first stays):
    the curation dedup filter (exact text, then MinHash near duplicates) on the responses."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    near: bool = True
    threshold: float = Field(0.85, gt=0, le=1, description="estimated Jaccard similarity of shingles")

    @model_validator(mode="before")
    @classmethod
    def _shortcut(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return {"enabled": v}
        if v is None:
            return {"enabled": False}
        if isinstance(v, (int, float)):
            return {"threshold": v}
        return v


class SeedOptions(BaseModel):
    """How the prompts file is read."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["txt", "jsonl", "csv"] | None = None  # None: from the file name's extension
    prompt_field: str = "prompt"
    system_field: str = "system"
    metadata_field: str = "metadata"  # JSONL: an object merged into the row's metadata
    # `Write a docstring for this function:\n{code}`: {names} are filled from each line's fields / columns
    # (a text file's one column is `prompt`). `{{` and `}}` are literal braces.
    template: str | None = Field(None, max_length=100_000)
    system: str | None = Field(None, max_length=100_000, description="system prompt for every seed")
    # Fields of a CSV / JSONL line kept in the row's metadata besides `metadata` (None: every other field).
    metadata_fields: list[str] | None = None


class GenerationConfig(BaseModel):
    """The whole run. Defaults: 4 samples at temperature 1.0, judged by openai/gpt-4o-mini, the best one per
    prompt kept when it scores at least 0.5."""

    model_config = ConfigDict(extra="forbid")

    teacher: str
    n_samples: int = Field(4, ge=1, le=64)
    params: dict[str, Any] = Field(default_factory=lambda: {"temperature": 1.0})
    judge: JudgeConfig | None = Field(default_factory=JudgeConfig)
    # "best": the best sample per prompt; an integer k: the top k; "all": every sample that passes.
    keep: Literal["best", "all"] | int = "best"
    threshold: float | None = Field(None, ge=0, le=1, description="default: the judge's (0.5)")
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig)
    # Empty, refused and truncated answers are dropped before judging (the curation error rules).
    errors: ErrorsRule = Field(default_factory=ErrorsRule)
    max_cost_usd: float | None = Field(None, gt=0, description="spending cap for teacher + judge")
    expected_output_tokens: int = Field(300, ge=1, le=200_000, description="for the estimate")
    concurrency: int = Field(32, ge=1, le=1024, description="teacher / judge calls in flight")
    seeds: SeedOptions = Field(default_factory=SeedOptions)
    # When the dataset exists: "append" writes its next version as the latest rows plus the new ones;
    # "replace" writes a next version holding only the new rows.
    mode: Literal["append", "replace"] = "append"
    description: str | None = Field(None, max_length=2000)

    @field_validator("teacher")
    @classmethod
    def _teacher(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("name the teacher model, e.g. openai/gpt-4o")
        return v

    @field_validator("judge", mode="before")
    @classmethod
    def _judge(cls, v: Any) -> Any:
        if v is None or v is False:
            return None
        if isinstance(v, str):
            return {"model": v}
        return v

    @field_validator("keep", mode="before")
    @classmethod
    def _keep(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())
        if isinstance(v, bool):
            raise ValueError('keep is "best", "all" or a number of samples per prompt')
        if isinstance(v, int) and v < 1:
            raise ValueError("keep: a number of samples per prompt must be at least 1")
        return v

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(set(v) & _FORBIDDEN_PARAMS)
        if bad:
            raise ValueError(f"teacher params may not set {bad}: the run sets them itself")
        return {k: x for k, x in v.items() if x is not None}

    @model_validator(mode="after")
    def _coherent(self) -> GenerationConfig:
        if self.judge is None and self.keep != "all":
            raise ValueError(
                f'keep={self.keep!r} ranks samples by the judge\'s score: give a judge, or keep="all"'
            )
        if self.judge is None and self.threshold is not None:
            raise ValueError("a threshold needs a judge")
        if self.judge is not None and self.threshold is not None and self.judge.threshold != self.threshold:
            self.judge = self.judge.model_copy(
                update={"threshold": self.threshold}
            )  # one threshold, recorded once
        if isinstance(self.keep, int) and self.keep > self.n_samples:
            raise ValueError(f"keep={self.keep} is more than n_samples={self.n_samples}")
        return self

    @property
    def keep_per_prompt(self) -> int | None:
        """Samples kept per prompt at most (None: every one that passes)."""
        if self.keep == "best":
            return 1
        return None if self.keep == "all" else int(self.keep)

    @property
    def cut(self) -> float | None:
        """The score below which a sample is dropped (None without a judge)."""
        if self.judge is None:
            return None
        return self.threshold if self.threshold is not None else self.judge.threshold

    @classmethod
    def build(
        cls, config: GenerationConfig | dict[str, Any] | None = None, **overrides: Any
    ) -> GenerationConfig:
        """A config from a dict (or None) plus keyword shortcuts (any top-level field; `temperature=` and
        `max_tokens=` go into the teacher's params; `system=` / `prompt_template=` / `format=` /
        `prompt_field=` into the seed options). Keywords left at None change nothing."""
        base = config.model_dump() if isinstance(config, GenerationConfig) else dict(config or {})
        params = dict(base.get("params") or {"temperature": 1.0})
        seeds = dict(base.get("seeds") or {})
        for k in ("temperature", "max_tokens", "top_p"):
            v = overrides.pop(k, None)
            if v is not None:
                params[k] = v
        for k, dest in (("system", "system"), ("prompt_template", "template"), ("format", "format"),
                        ("prompt_field", "prompt_field"), ("metadata_fields", "metadata_fields")):  # fmt: skip
            v = overrides.pop(k, None)
            if v is not None:
                seeds[dest] = v
        if "params" in overrides and overrides["params"] is not None:
            params.update(overrides.pop("params"))
        overrides.pop("params", None)
        judge = overrides.pop("judge", None)  # None: the default judge (or the config's); False: no judge
        base.update({k: v for k, v in overrides.items() if v is not None})
        base["params"], base["seeds"] = params, seeds
        if judge is not None:
            base["judge"] = judge
        try:
            return cls.model_validate(base)
        except ValueError as e:
            raise InvalidInput(f"bad generation config: {_short(e)}") from None


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
