"""Pydantic models at the boundary: what the service returns and the API serves."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class DatasetWarning(BaseModel):
    code: str
    message: str


class VersionInfo(BaseModel):
    id: str
    dataset: str
    number: int
    label: str
    status: Literal["active", "frozen"]
    parent: str | None = None
    row_count: int
    content_hash: str | None = None
    ref: str = Field(description="name-vN, plus @hash once frozen: what a job records to be reproducible")
    provenance: list[dict[str, Any]] = []
    warnings: list[DatasetWarning] = []
    segments: int = 0
    bytes: int = 0
    created_at: datetime
    updated_at: datetime
    frozen_at: datetime | None = None


class DatasetInfo(BaseModel):
    id: str
    name: str
    description: str
    created_at: datetime
    updated_at: datetime
    versions: int
    latest: VersionInfo | None = None


class RowIn(BaseModel):
    # An unknown field is refused rather than dropped: its data would be lost without a word.
    model_config = ConfigDict(extra="forbid")

    row_id: str | None = None
    prompt: str | list[dict[str, Any]]
    response: str
    metadata: dict[str, Any] = {}


class RowPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str | list[dict[str, Any]] | None = None
    response: str | None = None
    metadata: dict[str, Any] | None = None


class RowOut(BaseModel):
    row_id: str
    prompt: str | list[dict[str, Any]]
    response: str
    metadata: dict[str, Any]


class RowPage(BaseModel):
    rows: list[RowOut]
    next_cursor: str | None = None
    total: int


class DiffResult(BaseModel):
    dataset: str
    a: str
    b: str
    added: int
    removed: int
    changed: int
    unchanged: int
    added_ids: list[str] = []
    removed_ids: list[str] = []
    changed_ids: list[str] = []
    truncated: bool = False


class UploadResult(BaseModel):
    dataset: str
    version: VersionInfo
    rows_added: int
    skipped: int = 0
    skipped_items: list[dict[str, Any]] = []
    file: str | None = None
    sha256: str | None = None
    format: str
    seconds: float
