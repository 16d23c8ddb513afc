"""Catalog tables (SQLAlchemy 2.0 style). Rows of datasets are not here: they live in Parquet segments."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that reads back as an aware UTC datetime on every database.

    SQLite has no time zones: SQLAlchemy stores the wall-clock digits and reads them back naive, where
    PostgreSQL's timestamptz reads back aware, so the API said "…T22:56:55" on one and "…+00:00" on the other
    (and a browser reads the first as local time). Values are written as UTC (a naive one is taken to be UTC
    already) and read back with UTC attached. The column's DDL is DateTime(timezone=True), as before.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class DatasetRecord(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    description: Mapped[str] = mapped_column(Text, default="", nullable=False)
    # Each write to any version takes the next number; a row's `ord` is (write_seq << 32) | position,
    # so rows keep the order they were added in across versions and edits.
    write_seq: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class VersionRecord(Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (Index("ix_dataset_versions_dataset_number", "dataset_id", "number", unique=True),)

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False)
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # active | frozen
    parent_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    row_count: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    content_hash: Mapped[str | None] = mapped_column(String(80), nullable=True)
    # Ordered list of segments: [{"key", "rows", "bytes", "kind": "base"|"delta"}]
    manifest: Mapped[list[Any]] = mapped_column(JSON, default=list, nullable=False)
    # How the version was made: a list of steps, oldest first ({"kind": "upload", "file", "sha256", ...}).
    provenance: Mapped[list[Any]] = mapped_column(JSON, default=list, nullable=False)
    # Facts the warnings are derived from, kept current on every write: {"cluster_ids": [...], "curated": bool}
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    # Optimistic concurrency: every manifest change bumps it and checks the old value.
    revision: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    frozen_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class JobRecord(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status", "status"), Index("ix_jobs_created", "created_at"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(80), nullable=False)
    status: Mapped[str] = mapped_column(
        String(16), nullable=False
    )  # queued running succeeded failed cancelled
    progress: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    message: Mapped[str] = mapped_column(Text, default="", nullable=False)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class JobLogRecord(Base):
    __tablename__ = "job_logs"
    __table_args__ = (Index("ix_job_logs_job", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    ts: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    level: Mapped[str] = mapped_column(String(10), default="info", nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)


class AliasRecord(Base):
    """A named pointer to a model string (`ticket-classifier` → `openai/gpt-4o`) or to another alias."""

    __tablename__ = "aliases"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    target: Mapped[str] = mapped_column(String(400), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class AliasHistoryRecord(Base):
    """One change of an alias: create, repoint or delete. Kept after the alias is deleted (no foreign key)."""

    __tablename__ = "alias_history"
    __table_args__ = (Index("ix_alias_history_alias", "alias", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alias: Mapped[str] = mapped_column(String(200), nullable=False)
    action: Mapped[str] = mapped_column(String(16), nullable=False)  # create | repoint | delete
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    old_target: Mapped[str | None] = mapped_column(String(400), nullable=True)
    new_target: Mapped[str | None] = mapped_column(String(400), nullable=True)


class LLMCacheRecord(Base):
    """A cached model response, keyed by the hash of (model, messages, parameters, sample index)."""

    __tablename__ = "llm_cache"
    __table_args__ = (Index("ix_llm_cache_model", "model"),)

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(400), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    hits: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)


class TraceRecord(Base):
    """One LLM call. `request`/`response` hold msgspec-encoded JSON text (never a secret: see
    opentracy/traces/scrub.py); `prompt_text`/`response_text` are their plain text, for search."""

    __tablename__ = "traces"
    # Columns that are mostly empty get partial indexes (only the rows that have a value are indexed), so
    # ingest does not pay for indexing NULLs; failed calls are indexed apart, by time.
    __table_args__ = (
        Index("ix_traces_started", "started_at", "id"),
        Index("ix_traces_model", "model", "started_at"),
        Index(
            "ix_traces_alias",
            "alias",
            "started_at",
            sqlite_where=text("alias IS NOT NULL"),
            postgresql_where=text("alias IS NOT NULL"),
        ),
        Index(
            "ix_traces_user",
            "user_id",
            "started_at",
            sqlite_where=text("user_id IS NOT NULL"),
            postgresql_where=text("user_id IS NOT NULL"),
        ),
        Index(
            "ix_traces_session",
            "session_id",
            "started_at",
            sqlite_where=text("session_id IS NOT NULL"),
            postgresql_where=text("session_id IS NOT NULL"),
        ),
        Index(
            "ix_traces_errors",
            "started_at",
            sqlite_where=text("is_error = 1"),
            postgresql_where=text("is_error = true"),
        ),
    )

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    model: Mapped[str] = mapped_column(String(400), nullable=False)
    provider: Mapped[str | None] = mapped_column(String(100), nullable=True)
    alias: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request: Mapped[str] = mapped_column(Text, nullable=False)
    response: Mapped[str | None] = mapped_column(Text, nullable=True)
    prompt_text: Mapped[str] = mapped_column(Text, default="", nullable=False)
    response_text: Mapped[str] = mapped_column(Text, default="", nullable=False)
    finish_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    is_error: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    input_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    output_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    user_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    session_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list, nullable=False)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict, nullable=False)
    source: Mapped[str] = mapped_column(
        String(20), default="api", nullable=False
    )  # api | proxy | import | gateway
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class TraceTagRecord(Base):
    """(tag, trace) pairs, so that a tag filter is an index lookup on SQLite and PostgreSQL alike."""

    __tablename__ = "trace_tags"
    __table_args__ = (Index("ix_trace_tags_tag", "tag", "trace_id"),)

    trace_id: Mapped[str] = mapped_column(ForeignKey("traces.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(200), primary_key=True)


# --- local models (opentracy.llm.local_models) -----------------------------------------------------


class LocalModelRecord(Base):
    """A model that runs in-process as `local/<name>`: a Hugging Face causal LM from a local path, with an
    optional LoRA adapter. The distillation jobs register their students here."""

    __tablename__ = "local_models"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # m_…
    name: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    base_model: Mapped[str] = mapped_column(String(1000), nullable=False)
    adapter: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    chat_template: Mapped[str | None] = mapped_column(Text, nullable=True)  # overrides the tokenizer's
    # Generation defaults: {"max_tokens", "temperature", "top_p", "top_k", "stop", "repetition_penalty"}
    generation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    input_price: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)  # USD per 1M tokens
    output_price: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    description: Mapped[str] = mapped_column(Text, default="", nullable=False)
    meta: Mapped[dict[str, Any]] = mapped_column(
        JSON, default=dict, nullable=False
    )  # e.g. the job that made it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


# ---------------------------------------------------------------------------------------------------
# Curation (opentracy.distillation.curation): runs, and the human review queue.


class CurationRunRecord(Base):
    """One curation run: the version it read, the version it wrote, its config and report. The per-row
    decisions (kept / dropped with rule and reason, dropped rows whole) are a Parquet artifact."""

    __tablename__ = "curation_runs"
    __table_args__ = (Index("ix_curation_runs_dataset", "dataset_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False)
    source_version_id: Mapped[str] = mapped_column(String(80), nullable=False)
    output_version_id: Mapped[str] = mapped_column(String(80), nullable=False)
    job_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    report: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    decisions_key: Mapped[str] = mapped_column(String(400), nullable=False)
    decisions_sha256: Mapped[str] = mapped_column(String(80), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class ReviewItemRecord(Base):
    """A row in a dataset's review queue (at most once per row id), and the person's decision on it."""

    __tablename__ = "review_items"
    __table_args__ = (
        Index("ix_review_items_dataset_row", "dataset_id", "row_id", unique=True),
        Index("ix_review_items_dataset_status", "dataset_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False)
    row_id: Mapped[str] = mapped_column(String(200), nullable=False)
    run_id: Mapped[str] = mapped_column(String(40), nullable=False)
    version_id: Mapped[str] = mapped_column(String(80), nullable=False)  # the version the row waits in
    # pending | approved | rejected | edited | excluded | included (the last two: the freeze policy decided)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    original: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)  # the row as queued
    edited: Mapped[dict[str, Any] | None] = mapped_column(
        JSON, nullable=True
    )  # prompt/response after an edit
    reviewer: Mapped[str | None] = mapped_column(String(200), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


# --- clustering and embeddings (issue 6) ------------------------------------------------------------


class EmbeddingShardRecord(Base):
    """One Parquet shard of cached embeddings (keys and vectors live in the artifact, not here)."""

    __tablename__ = "embedding_shards"
    __table_args__ = (Index("ix_embedding_shards_model", "model_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(String(300), nullable=False)
    key: Mapped[str] = mapped_column(String(400), nullable=False)
    rows: Mapped[int] = mapped_column(BigInteger, nullable=False)
    dims: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class ClusteringRunRecord(Base):
    """One clustering of a set of items: its inputs, config, embedder, results and artifacts."""

    __tablename__ = "clustering_runs"
    __table_args__ = (Index("ix_clustering_runs_created", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # running | succeeded | failed
    # What was clustered: {"kind": "items", ...} (the traces store adds its filter here)
    source: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    embedder: Mapped[str] = mapped_column(String(300), nullable=False)
    namer: Mapped[str | None] = mapped_column(String(300), nullable=True)
    n_items: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    n_clusters: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    n_outliers: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    previous_run_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # {"embed": s, "cluster": s, ...}, cohesion, the number of clusters chosen and why
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    # {"assignments": [key, ...], "centroids": key}: the base assignments and each incremental batch
    artifacts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class ClusterRecord(Base):
    """A cluster's lasting identity: re-runs that find the same group (by centroid) keep its id and name."""

    __tablename__ = "clusters"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str] = mapped_column(Text, default="", nullable=False)
    namer: Mapped[str] = mapped_column(String(300), nullable=False)  # keywords | llm:<model> | user
    first_run_id: Mapped[str] = mapped_column(String(40), nullable=False)
    last_run_id: Mapped[str] = mapped_column(String(40), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class RunClusterRecord(Base):
    """A cluster as one run found it: size, cohesion, keywords, samples, map position."""

    __tablename__ = "clustering_run_clusters"
    __table_args__ = (Index("ix_run_clusters_cluster", "cluster_id", "run_id"),)

    run_id: Mapped[str] = mapped_column(
        ForeignKey("clustering_runs.id", ondelete="CASCADE"), primary_key=True
    )
    cluster_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, nullable=False)  # 0 = largest
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    cohesion: Mapped[float] = mapped_column(Float, nullable=False)
    # similarity below which a newly assigned item is an outlier of this cluster
    threshold: Mapped[float] = mapped_column(Float, nullable=False)
    keywords: Mapped[list[Any]] = mapped_column(JSON, default=list, nullable=False)
    representatives: Mapped[list[Any]] = mapped_column(JSON, default=list, nullable=False)
    diverse: Mapped[list[Any]] = mapped_column(JSON, default=list, nullable=False)
    x: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    y: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    # cosine to the matched cluster of the previous run (None: a new cluster)
    matched_similarity: Mapped[float | None] = mapped_column(Float, nullable=True)


# --- generation (issue 7) ---------------------------------------------------------------------------------


class GenerationRunRecord(Base):
    """One synthetic generation run: the prompts file it read (name, format, sha256), the version it wrote,
    its config and report. Every sample (kept, or dropped with its rule and reason) is a Parquet artifact."""

    __tablename__ = "generation_runs"
    __table_args__ = (Index("ix_generation_runs_dataset", "dataset_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False)
    output_version_id: Mapped[str] = mapped_column(String(80), nullable=False)
    job_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    prompts: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    report: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    samples_key: Mapped[str] = mapped_column(String(400), nullable=False)
    samples_sha256: Mapped[str] = mapped_column(String(80), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
