"""The Distiller HTTP client.

    from opentracy import Distiller

    d = Distiller(base_url="http://localhost:8000")
    dataset = d.upload_dataset(name="invoice-extraction-v1", path="./data/invoices.jsonl")
    for row in dataset.rows():
        print(row.row_id, row.prompt, row.response, row.metadata)

Long operations (upload, freeze) run as jobs on the server; the client waits for them with a progress bar
and returns the result, or returns the `Job` at once with `wait=False`.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from opentracy import errors
from opentracy.datasets.suffixes import export_format, gzipped
from opentracy.names import check_dataset_name

DEFAULT_URL = "http://localhost:8000"
_ERRORS: dict[str, type[errors.OpentracyError]] = {
    "not_found": errors.NotFound,
    "conflict": errors.Conflict,
    "invalid_input": errors.InvalidInput,
    "unauthorized": errors.Unauthorized,
    "integrity_error": errors.IntegrityError,
    "cancelled": errors.Cancelled,
}


class ServerUnreachable(errors.OpentracyError):
    code = "unreachable"


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        err = resp.json().get("error", {})
    except ValueError:
        err = {}
    code = err.get("code", "error")
    message = err.get("message") or f"HTTP {resp.status_code}: {resp.text[:200]}"
    cls = _ERRORS.get(code, errors.OpentracyError)
    e = cls.__new__(cls)
    errors.OpentracyError.__init__(e, message, **(err.get("details") or {}))
    e.status_code = resp.status_code
    raise e


@dataclass(frozen=True)
class Row:
    row_id: str
    prompt: str | list[dict[str, Any]]
    response: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _from(cls, d: dict[str, Any]) -> Row:
        return cls(d["row_id"], d["prompt"], d["response"], d.get("metadata") or {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "row_id": self.row_id,
            "prompt": self.prompt,
            "response": self.response,
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class DatasetWarning:
    code: str
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class Job:
    """A long operation on the server (upload, freeze, curation…): its state, result or error, and times."""

    id: str
    kind: str
    status: str
    progress: float
    message: str
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    _client: Distiller = field(repr=False)
    attempts: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")

    def refresh(self) -> Job:
        return self._client.get_job(self.id)

    def wait(self, progress: bool | None = None, timeout: float | None = None) -> Job:
        return self._client.wait_job(self.id, progress=progress, timeout=timeout)

    def cancel(self) -> Job:
        return self._client.cancel_job(self.id)


def _when(text: str | None) -> datetime | None:
    """A server time: UTC, aware (a server before 2026-12 sent SQLite's times without their offset)."""
    if not text:
        return None
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@dataclass
class Dataset:
    """A dataset at one version. `rows()` yields its rows in order, a page at a time."""

    name: str
    version: int
    label: str
    status: str
    row_count: int
    content_hash: str | None
    warnings: list[DatasetWarning]
    description: str = ""
    ref: str = ""
    parent: str | None = None
    provenance: list[dict[str, Any]] = field(default_factory=list)
    # What the upload that returned this Dataset left out (`on_error="skip"`): {"line" (or "row"): n,
    # "error": why}, the first 1,000; the upload step in `provenance` has the full count.
    skipped: list[dict[str, Any]] = field(default_factory=list)
    created_at: datetime | None = None  # when this version was started (UTC)
    frozen_at: datetime | None = None  # when it was frozen; None while active
    _client: Distiller | None = field(default=None, repr=False)

    @classmethod
    def _from(cls, client: Distiller, v: dict[str, Any], description: str = "") -> Dataset:
        return cls(
            name=v["dataset"],
            version=v["number"],
            label=v["label"],
            status=v["status"],
            row_count=v["row_count"],
            content_hash=v.get("content_hash"),
            warnings=[DatasetWarning(w["code"], w["message"]) for w in v.get("warnings", [])],
            description=description,
            ref=v.get("ref", v["label"]),
            parent=v.get("parent"),
            provenance=v.get("provenance", []),
            created_at=_when(v.get("created_at")),
            frozen_at=_when(v.get("frozen_at")),
            _client=client,
        )

    @property
    def _c(self) -> Distiller:
        if self._client is None:
            raise errors.OpentracyError("this Dataset is not attached to a client")
        return self._client

    def rows(
        self,
        *,
        q: str | None = None,
        tags: list[str] | None = None,
        where: dict[str, str] | None = None,
        page_size: int = 1000,
    ) -> Iterator[Row]:
        return self._c.rows(self.name, self.version, q=q, tags=tags, where=where, page_size=page_size)

    def refresh(self) -> Dataset:
        return self._c.get_dataset(self.name, self.version)

    def freeze(self, wait: bool = True) -> Dataset:
        return self._c.freeze(self.name, self.version, wait=wait)  # type: ignore[return-value]

    def new_version(self) -> Dataset:
        return self._c.new_version(self.name, parent=self.version)

    def export(self, path: str | os.PathLike[str], format: str | None = None) -> Path:
        return self._c.export(self.name, path, format=format, version=self.version)

    def to_hf(self, *, test_size: float | int | None = None, seed: int = 0) -> Any:
        return self._c.to_hf(self.name, version=self.version, test_size=test_size, seed=seed)


class RowsPage(tuple[list[Row], str | None]):
    """`rows, next_cursor = d.rows_page(...)`, and `.total`: the rows matching the filters, in all pages."""

    total: int

    def __new__(cls, rows: list[Row], next_cursor: str | None, total: int) -> RowsPage:
        page = super().__new__(cls, (rows, next_cursor))
        page.total = total
        return page


@dataclass(frozen=True)
class Alias:
    """A named pointer to a model. `resolved` is the model string at the end of its chain; `history` (oldest
    first: action, at, by, reason, old_target, new_target) is filled by `get_alias`."""

    name: str
    target: str
    created_at: str
    updated_at: str
    resolved: str | None = None
    history: list[dict[str, Any]] | None = None

    @classmethod
    def _from(cls, d: dict[str, Any]) -> Alias:
        return cls(
            d["name"], d["target"], d["created_at"], d["updated_at"], d.get("resolved"), d.get("history")
        )


@dataclass(frozen=True)
class LocalModelInfo:
    """A model `local/<name>` runs in-process: `source` is "catalog" (registered) or "config"
    (OPENTRACY_LOCAL_MODELS); prices are USD per million tokens."""

    name: str
    base_model: str
    adapter: str | None
    source: str
    id: str | None = None
    generation: dict[str, Any] | None = None
    chat_template: str | None = None
    input_price: float = 0.0
    output_price: float = 0.0
    description: str = ""
    meta: dict[str, Any] | None = None
    created_at: str | None = None

    @property
    def model(self) -> str:
        return f"local/{self.name}"

    @classmethod
    def _from(cls, d: dict[str, Any]) -> LocalModelInfo:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__ if k in d})


class _ReadCounter:
    """A file wrapper that reports how much has been read (for the upload progress bar)."""

    def __init__(self, f: BinaryIO, on_read: Any) -> None:
        self._f = f
        self._on_read = on_read

    def read(self, n: int = -1) -> bytes:
        # httpx asks for 64 KiB at a time; larger reads mean fewer round trips through both HTTP stacks.
        b = self._f.read(n if n is None or n < 0 else max(n, 1 << 20))
        self._on_read(len(b))
        return b

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(1 << 20):
            yield chunk

    def fileno(self) -> int:
        # Lets httpx learn the file's size, so that the body goes with a Content-Length: sent chunked
        # instead, every 1 MiB read is copied once more to frame it.
        return self._f.fileno()


class Distiller:
    """Client of an opentracy server."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        progress: bool | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENTRACY_API_KEY") or None
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        # Progress bars by default when a person is watching (stderr is a terminal).
        self.progress = sys.stderr.isatty() if progress is None else progress

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Distiller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.ConnectError:
            raise ServerUnreachable(
                f"cannot reach the opentracy server at {self.base_url}: is `opentracy serve` running?"
            ) from None
        _raise_for(resp)
        return resp

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        resp = self._request(method, path, **kw)
        return resp.json() if resp.content else None

    def _progress_bar(self, show: bool | None) -> Any:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

        # On stderr: stdout carries results (a version line, a job id) that scripts read.
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"),
            console=Console(stderr=True),
            disable=not (self.progress if show is None else show),
            transient=False,
        )

    # -- jobs --------------------------------------------------------------------------------------
    def _job(self, d: dict[str, Any]) -> Job:
        return Job(
            d["id"],
            d["kind"],
            d["status"],
            d["progress"],
            d["message"],
            d.get("result"),
            d.get("error"),
            self,
            attempts=d.get("attempts", 0),
            created_at=_when(d.get("created_at")),
            started_at=_when(d.get("started_at")),
            finished_at=_when(d.get("finished_at")),
        )

    def get_job(self, job_id: str, *, wait: float = 0) -> Job:
        """A job's status; with `wait` (seconds, at most 30) the server answers as soon as the job ends, or
        after `wait` seconds."""
        params = {"wait": wait} if wait else None
        return self._job(self._json("GET", f"/v1/jobs/{job_id}", params=params))

    def list_jobs(
        self, *, status: str | None = None, kind: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[Job]:
        """Jobs, newest first: `status` queued, running, succeeded, failed or cancelled; `kind` such as
        dataset.upload or dataset.freeze; `limit` (at most 500) from `offset`."""
        params = {"status": status, "kind": kind, "limit": limit, "offset": offset}
        page = self._json("GET", "/v1/jobs", params={k: v for k, v in params.items() if v is not None})
        return [self._job(d) for d in page["items"]]

    def cancel_job(self, job_id: str) -> Job:
        return self._job(self._json("POST", f"/v1/jobs/{job_id}/cancel"))

    def job_logs(self, job_id: str) -> list[dict[str, Any]]:
        return self._json("GET", f"/v1/jobs/{job_id}/logs")["items"]

    def wait_job(self, job_id: str, *, progress: bool | None = None, timeout: float | None = None) -> Job:
        """Wait for a job to end, showing its progress; raises the job's error if it failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.get_job(job_id)
        with self._progress_bar(progress) as bar:
            task = bar.add_task(job.kind, total=1.0, note=job.message)
            while not job.done:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
                # Long polling: the server answers when the job ends, or after a second with its progress.
                asked = time.monotonic()
                job = self.get_job(job_id, wait=max(0.05, min(1.0, left if left is not None else 1.0)))
                if not job.done and time.monotonic() - asked < 0.05:
                    time.sleep(0.2)  # a server that does not hold answers: do not ask in a tight loop
                bar.update(task, completed=job.progress, note=job.message)
            bar.update(task, completed=1.0 if job.status == "succeeded" else job.progress, note=job.status)
        if job.status == "failed" and job.error:
            cls = _ERRORS.get(job.error.get("code", ""), errors.OpentracyError)
            e = cls.__new__(cls)
            errors.OpentracyError.__init__(
                e, job.error.get("message", "job failed"), **(job.error.get("details") or {})
            )
            raise e
        if job.status == "cancelled":
            raise errors.Cancelled(f"job {job_id} was cancelled")
        return job

    # -- datasets ----------------------------------------------------------------------------------
    def create_dataset(self, name: str, description: str = "") -> Dataset:
        d = self._json("POST", "/v1/datasets", json={"name": name, "description": description})
        return Dataset._from(self, d["latest"], d["description"])

    def get_dataset(self, name: str, version: int | str | None = None) -> Dataset:
        """A dataset at a version (default: its latest version)."""
        if version is None:
            d = self._json("GET", f"/v1/datasets/{name}")
            if d["latest"] is None:
                raise errors.NotFound(f"dataset {name!r} has no versions")
            return Dataset._from(self, d["latest"], d["description"])
        v = self._json("GET", f"/v1/datasets/{name}/versions/{version}")
        return Dataset._from(self, v)

    def list_datasets(self, q: str | None = None) -> list[Dataset]:
        out: list[Dataset] = []
        offset = 0
        while True:
            page = self._json(
                "GET", "/v1/datasets", params={"limit": 200, "offset": offset, **({"q": q} if q else {})}
            )
            out += [Dataset._from(self, d["latest"], d["description"]) for d in page["items"] if d["latest"]]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return out

    def list_versions(self, name: str) -> list[Dataset]:
        return [Dataset._from(self, v) for v in self._json("GET", f"/v1/datasets/{name}/versions")["items"]]

    def delete_dataset(self, name: str, *, confirm: str) -> None:
        """Delete a dataset and every version of it; `confirm` must repeat its name."""
        self._request("DELETE", f"/v1/datasets/{name}", params={"confirm": confirm})

    def upload_dataset(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        format: str | None = None,
        prompt_field: str | None = None,
        response_field: str | None = None,
        metadata_fields: list[str] | None = None,
        split: str | None = None,
        on_error: str = "raise",
        description: str | None = None,
        wait: bool = True,
        progress: bool | None = None,
    ) -> Dataset | Job:
        """Upload a file (JSONL, OpenAI chat JSONL, CSV, Parquet) or a Hugging Face dataset (a folder from
        `save_to_disk`, a folder of parquet/arrow files, or a Hub id) into a dataset.

        The file's content is streamed to the server; the server never reads a path you name. Returns the
        `Dataset` once the rows are committed, or the `Job` at once with `wait=False`.
        """
        # What the server would refuse only once the whole file had arrived, refused before sending it.
        check_dataset_name(name)
        if on_error not in ("raise", "skip"):
            raise errors.InvalidInput(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        p = Path(path)
        tmp: Path | None = None
        hub_id = not p.exists() and format in (None, "hf") and _looks_like_hub_id(path)
        if p.is_dir() or (p.suffix == ".arrow" and p.is_file()) or hub_id:
            tmp, split_used = _hf_to_parquet(path, split)
            p, format, split = tmp, "parquet", None
            display = f"{Path(str(path)).name}[{split_used}].parquet"
        else:
            if not p.exists():
                raise errors.InvalidInput("no such file", file=str(path))
            display = p.name
        data = {
            k: v
            for k, v in {
                "format": format,
                "prompt_field": prompt_field,
                "response_field": response_field,
                "split": split,
                "on_error": on_error,
                "description": description,
            }.items()
            if v is not None
        }
        if metadata_fields is not None:
            data["metadata_fields"] = json.dumps(list(metadata_fields))
        try:
            size = p.stat().st_size
            with self._progress_bar(progress) as bar, open(p, "rb") as f:
                task = bar.add_task(f"sending {display}", total=size, note="")
                counted = _ReadCounter(f, lambda n: bar.advance(task, n))
                resp = self._request(
                    "POST",
                    f"/v1/datasets/{name}/upload",
                    files={"file": (display, counted, "application/octet-stream")},
                    data=data,
                    timeout=httpx.Timeout(None, connect=10.0),
                )
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        job = self._job(resp.json())
        if not wait:
            return job
        job = self.wait_job(job.id, progress=progress)
        result = job.result or {}
        ds = Dataset._from(self, result["version"])
        ds.skipped = list(result.get("skipped_items") or [])
        return ds

    def freeze(
        self, name: str, version: int | str = "active", *, wait: bool = True, progress: bool | None = None
    ) -> Dataset | Job:
        """Freeze a version (default: the active one): it becomes immutable and gets its content hash."""
        job = self._job(self._json("POST", f"/v1/datasets/{name}/versions/{version}/freeze"))
        if not wait:
            return job
        job = self.wait_job(job.id, progress=progress)
        return Dataset._from(self, job.result)  # type: ignore[arg-type]

    def new_version(self, name: str, parent: int | str | None = None) -> Dataset:
        """Start the next active version from a frozen parent (default: the latest version)."""
        v = self._json("POST", f"/v1/datasets/{name}/versions", json={"parent": parent})
        return Dataset._from(self, v)

    def diff(
        self, name: str, a: int | str | None = None, b: int | str | None = None, *, limit: int = 1000
    ) -> dict[str, Any]:
        """Rows added, removed and changed from version a (default: b's parent) to b (default: latest)."""
        params = {k: v for k, v in {"a": a, "b": b, "limit": limit}.items() if v is not None}
        return self._json("GET", f"/v1/datasets/{name}/diff", params=params)

    def rows(
        self,
        name: str,
        version: int | str | None = None,
        *,
        q: str | None = None,
        tags: list[str] | None = None,
        where: dict[str, str] | None = None,
        page_size: int = 1000,
    ) -> Iterator[Row]:
        """Every row of a version (default: the latest) that matches, in order. Without a filter the rows
        come in one streamed answer (the JSONL export, ~5x faster than pages); with one, a page at a time."""
        if not (q or tags or where):
            yield from self._stream_rows(name, version)
            return
        cursor = None
        while True:
            rows, cursor = self.rows_page(
                name, version, q=q, tags=tags, where=where, limit=page_size, cursor=cursor
            )
            yield from rows
            if not cursor:
                return

    def _stream_rows(self, name: str, version: int | str | None) -> Iterator[Row]:
        ver = version if version is not None else "latest"
        url = f"/v1/datasets/{name}/versions/{ver}/export"
        try:
            with self._stream_get(url, {"format": "jsonl"}) as resp:
                # Split on b"\n" only: httpx's iter_lines also splits on U+2028 and the like, which JSON
                # text may hold raw inside a string.
                rest = b""
                for chunk in resp.iter_bytes(1 << 20):
                    lines = (rest + chunk).split(b"\n")
                    rest = lines.pop()
                    for line in lines:
                        if line:
                            yield Row._from(json.loads(line))
                if rest.strip():
                    raise errors.OpentracyError(f"the rows of {name} ended part way through a line")
        except (httpx.RemoteProtocolError, httpx.ReadError) as e:
            raise errors.OpentracyError(
                f"the server stopped sending the rows of {name} part way ({e}); see its log"
            ) from None

    def rows_page(
        self,
        name: str,
        version: int | str | None = None,
        *,
        q: str | None = None,
        tags: list[str] | None = None,
        where: dict[str, str] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RowsPage:
        """One page of rows (at most 1,000) and the cursor of the next page (None after the last), as a pair;
        `.total` is how many rows match. `q` searches prompt and response, `tags` must all be present, `where`
        matches metadata fields."""
        ver = version if version is not None else "latest"
        params: dict[str, Any] = {"limit": limit}
        if q:
            params["q"] = q
        if tags:
            params["tag"] = list(tags)
        for k, v in (where or {}).items():
            params[f"meta.{k}"] = v
        if cursor:
            params["cursor"] = cursor
        page = self._json("GET", f"/v1/datasets/{name}/versions/{ver}/rows", params=params)
        rows = [Row._from(r) for r in page["rows"]]
        return RowsPage(rows, page.get("next_cursor"), page["total"])

    def get_row(self, name: str, row_id: str, version: int | str = "latest") -> Row:
        r = self._json("GET", f"/v1/datasets/{name}/versions/{version}/rows/{row_id}")
        return Row._from(r)

    def add_rows(self, name: str, rows: list[dict[str, Any]], version: int | str = "active") -> Dataset:
        v = self._json("POST", f"/v1/datasets/{name}/versions/{version}/rows", json={"rows": rows})
        return Dataset._from(self, v)

    def update_row(
        self,
        name: str,
        row_id: str,
        *,
        prompt: Any = None,
        response: str | None = None,
        metadata: dict[str, Any] | None = None,
        version: int | str = "active",
    ) -> Row:
        body = {
            k: v
            for k, v in {"prompt": prompt, "response": response, "metadata": metadata}.items()
            if v is not None
        }
        r = self._json("PATCH", f"/v1/datasets/{name}/versions/{version}/rows/{row_id}", json=body)
        return Row._from(r)

    def update_rows(self, name: str, rows: list[dict[str, Any]], version: int | str = "active") -> list[Row]:
        got = self._json("PATCH", f"/v1/datasets/{name}/versions/{version}/rows", json={"rows": rows})[
            "items"
        ]
        return [Row._from(r) for r in got]

    def delete_rows(self, name: str, row_ids: list[str], version: int | str = "active") -> Dataset:
        v = self._json(
            "POST", f"/v1/datasets/{name}/versions/{version}/rows/delete", json={"row_ids": list(row_ids)}
        )
        return Dataset._from(self, v)

    def export(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        format: str | None = None,
        version: int | str | None = None,
    ) -> Path:
        """Download a version as jsonl (spec rows), openai (chat fine-tuning JSONL), csv or parquet; without
        `format`, the one the file name's suffix names (.jsonl, .csv, .parquet)."""
        ver = version if version is not None else "latest"
        fmt = export_format(path, format)
        return self._download(f"/v1/datasets/{name}/versions/{ver}/export", {"format": fmt}, path)

    def _download(self, url: str, params: dict[str, Any], path: str | os.PathLike[str]) -> Path:
        """Stream a GET answer into `path` (written whole or not at all)."""
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        try:
            with self._stream_get(url, params) as resp:
                size = resp.headers.get("content-length")
                opened = gzip.open(tmp, "wb", compresslevel=6) if gzipped(dest) else open(tmp, "wb")
                with self._progress_bar(None) as bar, opened as f:
                    # A streamed export has no length ahead: the bar then counts what has arrived.
                    task = bar.add_task(
                        f"downloading {dest.name}",
                        total=int(size) if size and size.isdigit() else None,
                        note="",
                    )
                    got = 0
                    for chunk in resp.iter_bytes(1 << 20):
                        f.write(chunk)
                        got += len(chunk)
                        bar.update(task, advance=len(chunk), note=f"{got / 1e6:,.1f} MB")
                    bar.update(task, total=got, completed=got)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    @contextlib.contextmanager
    def _stream_get(self, url: str, params: dict[str, Any]) -> Iterator[httpx.Response]:
        """A GET answer to read as it arrives; an error answer raises its typed error."""
        try:
            with self._http.stream("GET", url, params=params) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    _raise_for(resp)
                yield resp
        except httpx.ConnectError:
            raise ServerUnreachable(f"cannot reach the opentracy server at {self.base_url}") from None

    def to_hf(
        self,
        name: str,
        *,
        version: int | str | None = None,
        test_size: float | int | None = None,
        seed: int = 0,
    ) -> Any:
        """The version as a Hugging Face `datasets.Dataset`, or a train/validation `DatasetDict` with
        `test_size` (deterministic for a seed)."""
        import pyarrow.parquet as pq

        from opentracy.datasets.export import to_hf

        with tempfile.TemporaryDirectory() as d:
            path = self.export(name, Path(d) / "rows.parquet", format="parquet", version=version)
            return to_hf(pq.read_table(path), test_size=test_size, seed=seed)

    # -- aliases -----------------------------------------------------------------------------------
    def set_alias(self, name: str, target: str, reason: str | None = None, *, by: str | None = None) -> Alias:
        """Point `name` at a model string (`openai/gpt-4o`) or another alias; recorded in its history."""
        body = {"target": target, "reason": reason, "by": by}
        return Alias._from(self._json("PUT", f"/v1/aliases/{name}", json=body))

    def get_alias(self, name: str) -> Alias:
        return Alias._from(self._json("GET", f"/v1/aliases/{name}"))

    def list_aliases(self) -> list[Alias]:
        return [Alias._from(d) for d in self._json("GET", "/v1/aliases")["items"]]

    def delete_alias(self, name: str, reason: str | None = None, *, by: str | None = None) -> None:
        params = {k: v for k, v in {"reason": reason, "by": by}.items() if v is not None}
        self._request("DELETE", f"/v1/aliases/{name}", params=params)

    def alias_history(self, name: str) -> list[dict[str, Any]]:
        """Every change of the name, oldest first (kept after the alias is deleted)."""
        return self._json("GET", f"/v1/aliases/{name}/history")["items"]

    # -- traces ------------------------------------------------------------------------------------
    def log_traces(
        self, traces: dict[str, Any] | list[dict[str, Any]], *, on_error: str = "raise"
    ) -> dict[str, Any]:
        """Store one trace or a list of them (schema: model, messages or request, response, usage, tags,
        metadata…). Returns {"inserted", "duplicates", "trace_ids", "skipped", ...}."""
        body = traces if isinstance(traces, list) else [traces]
        return self._json("POST", "/v1/traces", json=body, params={"on_error": on_error})

    def get_trace(self, trace_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/traces/{trace_id}")

    def list_traces(
        self,
        *,
        model: str | None = None,
        provider: str | None = None,
        alias: str | None = None,
        since: Any = None,
        until: Any = None,
        tags: list[str] | None = None,
        where: dict[str, str] | None = None,
        error: bool | None = None,
        finish_reason: str | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        source: str | None = None,
        q: str | None = None,
        sort: str = "-started_at",
        limit: int | None = None,
        page_size: int = 200,
    ) -> Iterator[dict[str, Any]]:
        """Traces matching every filter given, newest first by default (`sort`: started_at, latency, cost,
        tokens; prefix - for descending), fetched a page at a time; `limit` stops early."""
        params = _trace_params(
            model=model, provider=provider, alias=alias, since=since, until=until, tags=tags, where=where,
            error=error, finish_reason=finish_reason, user_id=user_id, session_id=session_id, source=source, q=q,
        )  # fmt: skip
        params["sort"] = sort
        cursor, n = None, 0
        while True:
            size = page_size if limit is None else max(1, min(page_size, limit - n))
            page = self._json(
                "GET",
                "/v1/traces",
                params={**params, "limit": size, **({"cursor": cursor} if cursor else {})},
            )
            for t in page["items"]:
                yield t
                n += 1
                if limit is not None and n >= limit:
                    return
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def count_traces(self, **filters: Any) -> int:
        return self._json("GET", "/v1/traces/count", params=_trace_params(**filters))["count"]

    def import_traces(
        self,
        path: str | os.PathLike[str],
        *,
        format: str = "auto",
        on_error: str = "raise",
        wait: bool = True,
        progress: bool | None = None,
    ) -> dict[str, Any] | Job:
        """Import a file of traces (our JSONL, OpenAI request/response or Batch API logs, OpenTelemetry
        GenAI spans as OTLP JSON). All or nothing unless on_error="skip". Returns the import result, or the
        job with wait=False."""
        p = Path(path)
        if not p.is_file():
            raise errors.InvalidInput("no such file", file=str(path))
        with self._progress_bar(progress) as bar, open(p, "rb") as f:
            task = bar.add_task(f"sending {p.name}", total=p.stat().st_size, note="")
            counted = _ReadCounter(f, lambda n: bar.advance(task, n))
            resp = self._request(
                "POST",
                "/v1/traces/import",
                files={"file": (p.name, counted, "application/octet-stream")},
                data={"format": format, "on_error": on_error},
                timeout=httpx.Timeout(None, connect=10.0),
            )
        job = self._job(resp.json())
        if not wait:
            return job
        return self.wait_job(job.id, progress=progress).result or {}

    def export_traces(self, path: str | os.PathLike[str], **filters: Any) -> Path:
        """Write the matching traces, oldest first, as JSONL that `import_traces` reads back."""
        return self._download("/v1/traces/export", _trace_params(**filters), path)

    def traces_to_dataset(
        self,
        dataset: str,
        *,
        trace_ids: list[str] | None = None,
        create: bool = True,
        limit: int | None = None,
        **filters: Any,
    ) -> dict[str, Any]:
        """Append traces — by ids, or every trace matching the filters (model=, tags=, where=, q=, since=…)
        — to the dataset's active version (creating the dataset if needed). Each row keeps
        metadata.source_trace_id."""
        body: dict[str, Any] = {"dataset": dataset, "create": create, "limit": limit}
        if trace_ids is not None:
            body["trace_ids"] = list(trace_ids)
        if filters or trace_ids is None:
            f = dict(filters)
            if "where" in f:
                f["meta"] = f.pop("where") or {}
            for k in ("since", "until"):
                if f.get(k) is not None and not isinstance(f[k], str):
                    f[k] = f[k].isoformat()
            body["filter"] = f
        return self._json("POST", "/v1/traces/to-dataset", json=body)

    # -- local models ------------------------------------------------------------------------------
    def register_local_model(
        self,
        name: str,
        base_model: str,
        *,
        adapter: str | None = None,
        chat_template: str | None = None,
        generation: dict[str, Any] | None = None,
        input_price: float = 0.0,
        output_price: float = 0.0,
        description: str = "",
        meta: dict[str, Any] | None = None,
    ) -> LocalModelInfo:
        """Make `local/<name>` run a Hugging Face model (a path on the server) with an optional LoRA adapter."""
        body = {
            "name": name,
            "base_model": base_model,
            "adapter": adapter,
            "chat_template": chat_template,
            "generation": generation,
            "input_price": input_price,
            "output_price": output_price,
            "description": description,
            "meta": meta,
        }
        return LocalModelInfo._from(self._json("POST", "/v1/local-models", json=body))

    def get_local_model(self, name: str) -> LocalModelInfo:
        return LocalModelInfo._from(self._json("GET", f"/v1/local-models/{name}"))

    def list_local_models(self) -> list[LocalModelInfo]:
        return [LocalModelInfo._from(d) for d in self._json("GET", "/v1/local-models")["items"]]

    def delete_local_model(self, name: str) -> None:
        self._request("DELETE", f"/v1/local-models/{name}")

    # -- curation ----------------------------------------------------------------------------------
    def curate(
        self,
        name: str,
        *,
        version: int | str | None = None,
        config: dict[str, Any] | None = None,
        judge: str | bool | dict[str, Any] | None = None,
        threshold: float | None = None,
        errors: bool | dict[str, Any] | None = None,
        cluster: int | str | bool | dict[str, Any] | None = None,
        length: int | bool | dict[str, Any] | None = None,
        pii: str | bool | dict[str, Any] | None = None,
        dedup: float | bool | dict[str, Any] | None = None,
        judge_flagged: bool | dict[str, Any] | None = None,
        rules: list[str | dict[str, Any]] | None = None,
        review: int | bool | dict[str, Any] | None = None,
        wait: bool = True,
        progress: bool | None = None,
    ) -> Dataset | Job:
        """Curate a dataset (its latest version, or `version`): LLM judge, rule filters, review selection.

        The curated rows become the next version (an active latest version is frozen first, so the raw rows
        stay reachable). Keywords are shortcuts into `config` (see opentracy.distillation.curation.config):
        `judge="openai/gpt-4o-mini"` or `False`, `threshold=0.6`, `pii="redact"`, `dedup=0.85`,
        `cluster=34`, `length=2048` (tokens), `rules=['tags contains "reviewed"']`, `review=50`.
        Returns the new version's `Dataset` once done, or the `Job` with `wait=False`."""
        from opentracy.distillation.curation.config import CurationConfig

        shortcuts = {
            "judge": judge,
            "threshold": threshold,
            "errors": errors,
            "cluster": cluster,
            "length": length,
            "pii": pii,
            "dedup": dedup,
            "judge_flagged": judge_flagged,
            "rules": rules,
            "review": review,
        }
        cfg = CurationConfig.build(config, **shortcuts).model_dump(mode="json")
        body = {"config": cfg, "version": version}
        job = self._job(self._json("POST", f"/v1/datasets/{name}/curate", json=body))
        if not wait:
            return job
        job = self.wait_job(job.id, progress=progress)
        return Dataset._from(self, job.result["version"])  # type: ignore[index]

    def curation_runs(self, name: str) -> list[dict[str, Any]]:
        """Every curation run of a dataset: source and output versions, config, report."""
        return self._json("GET", f"/v1/datasets/{name}/curation/runs")["items"]

    def curation_report(self, name: str, run_id: str = "latest") -> dict[str, Any]:
        """A run (default: the latest) with its config and report (rows in/out, dropped per rule, judge
        histogram, cost)."""
        return self._json("GET", f"/v1/datasets/{name}/curation/runs/{run_id}")

    def dropped_rows(
        self, name: str, *, run_id: str = "latest", rule: str | None = None, page_size: int = 500
    ) -> Iterator[dict[str, Any]]:
        """Rows a curation run dropped, whole, each with its `rule` and `reason`."""
        offset = 0
        while True:
            params: dict[str, Any] = {
                "limit": page_size,
                "offset": offset,
                **({"rule": rule} if rule else {}),
            }
            page = self._json("GET", f"/v1/datasets/{name}/curation/runs/{run_id}/dropped", params=params)
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    def review_queue(
        self, name: str, *, status: str | None = "pending", limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Rows in the review queue (closest to the judge threshold first), by status (None: all)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset, **({"status": status} if status else {})}
        return self._json("GET", f"/v1/datasets/{name}/review", params=params)["items"]

    def review_progress(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/datasets/{name}/review/progress")

    def review(
        self,
        name: str,
        row_id: str,
        decision: str,
        *,
        reviewer: str | None = None,
        note: str | None = None,
        prompt: Any = None,
        response: str | None = None,
    ) -> dict[str, Any]:
        """Decide on a queued row: "approve", "reject" or "edit" (with a new response and/or prompt).
        `reviewer` defaults to $USER."""
        who = reviewer or os.environ.get("USER") or os.environ.get("USERNAME")
        body = {
            "decision": decision,
            "reviewer": who or "",
            "note": note,
            "prompt": prompt,
            "response": response,
        }
        return self._json("POST", f"/v1/datasets/{name}/review/{row_id}", json=body)

    def approve(
        self, name: str, row_id: str, *, reviewer: str | None = None, note: str | None = None
    ) -> dict[str, Any]:
        return self.review(name, row_id, "approve", reviewer=reviewer, note=note)

    def reject(
        self, name: str, row_id: str, *, reviewer: str | None = None, note: str | None = None
    ) -> dict[str, Any]:
        return self.review(name, row_id, "reject", reviewer=reviewer, note=note)

    def edit(
        self,
        name: str,
        row_id: str,
        *,
        response: str | None = None,
        prompt: Any = None,
        reviewer: str | None = None,
        note: str | None = None,
    ) -> dict[str, Any]:
        return self.review(
            name, row_id, "edit", reviewer=reviewer, note=note, prompt=prompt, response=response
        )

    def export_review(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        format: str | None = None,
        include_pending: bool = False,
    ) -> Path:
        """Write the review decisions as data (jsonl or csv; without `format`, as the file name's suffix
        says), e.g. to train a judge on human labels."""
        fmt = export_format(path, format, allowed=("jsonl", "csv"))
        params = {"format": fmt, "include_pending": str(include_pending).lower()}
        return self._download(f"/v1/datasets/{name}/review/export", params, path)

    def finish_review(
        self, name: str, *, pending: str | None = None, freeze: bool = True, progress: bool | None = None
    ) -> Dataset:
        """Close the active version's review: rows still pending are excluded or included (`pending`, default:
        the policy the curation run recorded); then freeze the version (`freeze=True`)."""
        got = self._json(
            "POST", f"/v1/datasets/{name}/review/finish", json={"pending": pending, "freeze": freeze}
        )
        if got.get("job"):
            job = self.wait_job(got["job"]["id"], progress=progress)
            return Dataset._from(self, job.result)  # type: ignore[arg-type]
        return self.get_dataset(name, "active")

    # -- synthetic generation (issue 7) ------------------------------------------------------------
    def _generation_request(
        self, prompts_path: str | os.PathLike[str], config: dict[str, Any] | None, **options: Any
    ) -> tuple[Path, dict[str, str]]:
        from opentracy.distillation.generation.config import GenerationConfig

        p = Path(prompts_path)
        if not p.is_file():
            raise errors.InvalidInput("no such file", file=str(prompts_path))
        cfg = GenerationConfig.build(config, **options).model_dump(mode="json")
        return p, {"config": json.dumps(cfg)}

    def generate_dataset(
        self,
        name: str,
        prompts_path: str | os.PathLike[str],
        teacher: str,
        n_samples: int = 4,
        judge: str | bool | dict[str, Any] | None = None,
        *,
        keep: str | int | None = None,
        threshold: float | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        params: dict[str, Any] | None = None,
        system: str | None = None,
        prompt_template: str | None = None,
        format: str | None = None,
        prompt_field: str | None = None,
        metadata_fields: list[str] | None = None,
        max_cost_usd: float | None = None,
        dedupe: bool | float | dict[str, Any] | None = None,
        mode: str | None = None,
        concurrency: int | None = None,
        description: str | None = None,
        config: dict[str, Any] | None = None,
        wait: bool = True,
        progress: bool | None = None,
    ) -> Dataset | Job:
        """Generate a dataset from seed prompts: `teacher` answers each prompt `n_samples` times, identical and
        near-identical answers are collapsed, `judge` (default openai/gpt-4o-mini; False: none, with
        keep="all") scores the rest, and the best per prompt (`keep="best"`, or the top k with `keep=k`, or
        "all") scoring at least `threshold` become rows.

        `prompts_path`: a text file (one prompt a line), JSONL (`prompt`, optional `system` and `metadata`)
        or CSV (a `prompt` column; other columns become metadata); `prompt_template="... {column} ..."`
        builds prompts from the columns instead. The file's content is sent to the server (it never reads a
        path you name). `max_cost_usd` caps teacher + judge spending: the job then stops cleanly and keeps the
        prompts it finished. A new dataset is created, or an existing one gets its next version (`mode`:
        "append" the new rows to its latest rows, or "replace" them). Returns the `Dataset` once done, or the
        `Job` with `wait=False`; `generation_report(name)` has the report."""
        p, data = self._generation_request(
            prompts_path, config, teacher=teacher, n_samples=n_samples, judge=judge, keep=keep,
            threshold=threshold, temperature=temperature, max_tokens=max_tokens, params=params, system=system,
            prompt_template=prompt_template, format=format, prompt_field=prompt_field,
            metadata_fields=metadata_fields, max_cost_usd=max_cost_usd, dedupe=dedupe, mode=mode,
            concurrency=concurrency, description=description,
        )  # fmt: skip
        with open(p, "rb") as f:
            resp = self._request(
                "POST",
                f"/v1/datasets/{name}/generate",
                files={"file": (p.name, f, "application/octet-stream")},
                data=data,
                timeout=httpx.Timeout(None, connect=10.0),
            )
        job = self._job(resp.json())
        if not wait:
            return job
        job = self.wait_job(job.id, progress=progress)
        return Dataset._from(self, job.result["version"])  # type: ignore[index]

    def estimate_generation(
        self,
        prompts_path: str | os.PathLike[str],
        teacher: str,
        n_samples: int = 4,
        judge: str | bool | dict[str, Any] | None = None,
        *,
        config: dict[str, Any] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """What `generate_dataset` with the same arguments would cost, without running it: prompts × samples
        × expected tokens × price, for the teacher and the judge (`cost_usd`; `cost_usd_max` when max_tokens
        bounds the answers). Also checks the prompts file and the options."""
        p, data = self._generation_request(
            prompts_path, config, teacher=teacher, n_samples=n_samples, judge=judge, **options
        )
        with open(p, "rb") as f:
            return self._json(
                "POST",
                "/v1/generation/estimate",
                files={"file": (p.name, f, "application/octet-stream")},
                data=data,
                timeout=httpx.Timeout(None, connect=10.0),
            )

    def generation_runs(self, name: str) -> list[dict[str, Any]]:
        """Every generation run that wrote a version of `name`: prompts file, config, report."""
        return self._json("GET", f"/v1/datasets/{name}/generation/runs")["items"]

    def generation_report(self, name: str, run_id: str = "latest") -> dict[str, Any]:
        """A generation run (default: the latest) with its report: samples asked, generated, kept, dropped per
        rule; tokens and cost of the teacher and the judge; whether the spending cap stopped it."""
        return self._json("GET", f"/v1/datasets/{name}/generation/runs/{run_id}")

    def generation_samples(
        self,
        name: str,
        *,
        run_id: str = "latest",
        outcome: str | None = None,
        rule: str | None = None,
        page_size: int = 500,
    ) -> Iterator[dict[str, Any]]:
        """Every sample of a run (`outcome="dropped"` / `rule="below_threshold"` to filter), with its reason."""
        offset = 0
        while True:
            params: dict[str, Any] = {"limit": page_size, "offset": offset}
            if outcome:
                params["outcome"] = outcome
            if rule:
                params["rule"] = rule
            page = self._json("GET", f"/v1/datasets/{name}/generation/runs/{run_id}/samples", params=params)
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    # -- clusters (issue 6) ----------------------------------------------------------------------------
    def cluster_traces(
        self,
        config: dict[str, Any] | None = None,
        *,
        text: str = "last_user",
        limit: int | None = None,
        wait: bool = True,
        progress: bool | None = None,
        **filters: Any,
    ) -> ClusteringRun | Job:
        """Cluster the traces matching the filters (model=, tags=, since=, until=, where=, q=, …; all traces
        by default) by their prompt (`text`: "last_user" message, every "user" turn, or "all" messages):
        embed, cluster, name. `config`: embedder, n_clusters, target_cohesion, min_cluster_size,
        assign_outliers, naming_model, … Runs as a job; returns the run once done (or the Job, wait=False)."""
        body = {"filter": _filter_body(filters), "config": config or {}, "text": text, "limit": limit}
        job = self._job(self._json("POST", "/v1/clusters/runs", json=body))
        if not wait:
            return job
        job = self.wait_job(job.id, progress=progress)
        return ClusteringRun._from(self, job.result or {})

    def clustering_runs(self, limit: int = 20) -> list[ClusteringRun]:
        return [
            ClusteringRun._from(self, r)
            for r in self._json("GET", "/v1/clusters/runs", params={"limit": limit})["items"]
        ]

    def clustering_run(self, run_id: str = "latest") -> ClusteringRun:
        return ClusteringRun._from(self, self._json("GET", f"/v1/clusters/runs/{run_id}"))

    def list_clusters(self, run_id: str | None = None) -> list[Cluster]:
        """The clusters of a run (default: the latest), largest first."""
        got = self._json("GET", "/v1/clusters", params={"run_id": run_id} if run_id else {})
        return [Cluster._from(self, c) for c in got["items"]]

    def get_cluster(self, cluster_id: str, run_id: str | None = None) -> Cluster:
        params = {"run_id": run_id} if run_id else {}
        return Cluster._from(self, self._json("GET", f"/v1/clusters/{cluster_id}", params=params))

    def cluster_members(
        self, cluster_id: str, *, run_id: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Items of a cluster (trace ids and texts), closest to its centre first."""
        params: dict[str, Any] = {"limit": limit, "offset": offset, **({"run_id": run_id} if run_id else {})}
        return self._json("GET", f"/v1/clusters/{cluster_id}/members", params=params)["items"]

    def cluster_outliers(
        self, run_id: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit, "offset": offset, **({"run_id": run_id} if run_id else {})}
        return self._json("GET", "/v1/clusters/outliers", params=params)["items"]

    def cluster_map(self, run_id: str | None = None, *, limit: int = 20_000) -> list[dict[str, Any]]:
        """2-D map positions of a run's items ({item_id, cluster_id, x, y}), a sample of at most `limit`."""
        params: dict[str, Any] = {"limit": limit, **({"run_id": run_id} if run_id else {})}
        return self._json("GET", "/v1/clusters/map", params=params)["items"]

    def rename_cluster(self, cluster_id: str, name: str, description: str | None = None) -> Cluster:
        body = {"name": name, "description": description}
        return Cluster._from(self, self._json("PATCH", f"/v1/clusters/{cluster_id}", json=body))

    def assign_traces(self, run_id: str = "latest", *, limit: int | None = 10_000) -> dict[str, Any]:
        """Put traces stored since a run (matching its filter) into its clusters without re-running it."""
        return self._json("POST", f"/v1/clusters/runs/{run_id}/assign", json={"limit": limit})

    def ingest_embedding_stats(self) -> dict[str, Any]:
        return self._json("GET", "/v1/clusters/ingest")

    def promote_cluster(
        self,
        cluster_id: str,
        name: str,
        rows: str | list[str] = "all",
        *,
        n: int | None = None,
        run_id: str | None = None,
        seed: int = 0,
        description: str = "",
    ) -> Dataset:
        """Make dataset `name` from a cluster's traces (or append them to its active version): rows="all",
        "sample" (n at random, `seed`), "closest" (the n nearest the centre) or a list of trace ids. Each row
        keeps metadata.source_trace_id and metadata.cluster_id; the version's provenance names the run."""
        body = {
            "dataset": name,
            "rows": list(rows) if isinstance(rows, list | tuple) else rows,
            "n": n,
            "run_id": run_id,
            "seed": seed,
            "description": description,
        }
        got = self._json("POST", f"/v1/clusters/{cluster_id}/promote", json=body)
        return Dataset._from(self, got["version_info"])


def _trace_params(**f: Any) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for k, v in f.items():
        if v is None:
            continue
        if k == "tags":
            params["tag"] = list(v)
        elif k == "where":
            for mk, mv in v.items():
                params[f"meta.{mk}"] = mv
        elif k in ("since", "until") and not isinstance(v, str):
            params[k] = v.isoformat()
        elif isinstance(v, bool):
            params[k] = "true" if v else "false"
        else:
            params[k] = v
    return params


_FILE_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".parquet", ".pq", ".arrow")


def _looks_like_hub_id(path: str | os.PathLike[str]) -> bool:
    """`owner/name` is a Hub id; a missing local path (`./data/x.jsonl`, `/abs/x.csv`) is not."""
    s = str(path)
    if s.startswith(".") or s.lower().endswith(_FILE_SUFFIXES):
        return False
    return re.fullmatch(r"[\w.-]+/[\w.-]+", s) is not None


def _hf_to_parquet(path: str | os.PathLike[str], split: str | None) -> tuple[Path, str]:
    """Read a Hugging Face dataset locally (folder or Hub id) and write the chosen split as Parquet."""
    import pyarrow.parquet as pq

    from opentracy.datasets import formats

    p = Path(path)
    if p.is_file():  # one Arrow file
        split_used = split or "train"
        schema, batches = formats.arrow_file_batches([p])
    elif p.exists():
        split_used, schema, batches = formats.hf_batches(p, split)
    else:
        split_used, schema, batches = formats.hub_batches(str(path), split)
    fd, name = tempfile.mkstemp(suffix=".parquet", prefix="opentracy-hf-")
    os.close(fd)
    with pq.ParquetWriter(name, schema, compression="zstd") as w:
        for rb, _ in batches:
            w.write_batch(rb)
    return Path(name), split_used


# --- clusters (issue 6) ---------------------------------------------------------------------------------


def _filter_body(filters: dict[str, Any]) -> dict[str, Any]:
    """Client keyword filters as a TraceFilter body (where= is meta; times as ISO 8601)."""
    f = {k: v for k, v in filters.items() if v is not None}
    if "where" in f:
        f["meta"] = f.pop("where") or {}
    for k in ("since", "until"):
        if k in f and not isinstance(f[k], str):
            f[k] = f[k].isoformat()
    if isinstance(f.get("tags"), str):
        f["tags"] = [f["tags"]]
    return f


@dataclass
class Cluster:
    """A named cluster of a run: size, cohesion, keywords, sample prompts, map position."""

    id: str
    name: str
    description: str
    namer: str
    size: int
    share: float
    cohesion: float
    keywords: list[str]
    samples: list[str]  # the most representative prompts, closest to the centre first
    diverse: list[str]
    run_id: str
    x: float
    y: float
    new: bool
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    _client: Distiller | None = field(default=None, repr=False)

    @classmethod
    def _from(cls, client: Distiller, d: dict[str, Any]) -> Cluster:
        return cls(
            id=d["id"],
            name=d["name"],
            description=d.get("description", ""),
            namer=d.get("namer", ""),
            size=d["size"],
            share=d.get("share", 0.0),
            cohesion=d.get("cohesion", 0.0),
            keywords=list(d.get("keywords") or []),
            samples=[s["text"] for s in d.get("representatives") or []],
            diverse=[s["text"] for s in d.get("diverse") or []],
            run_id=d["run_id"],
            x=d.get("x", 0.0),
            y=d.get("y", 0.0),
            new=bool(d.get("new")),
            raw=d,
            _client=client,
        )

    def members(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        assert self._client is not None
        return self._client.cluster_members(self.id, run_id=self.run_id, limit=limit, offset=offset)

    def promote(self, name: str, rows: str | list[str] = "all", **kw: Any) -> Dataset:
        assert self._client is not None
        return self._client.promote_cluster(self.id, name, rows, run_id=self.run_id, **kw)


@dataclass
class ClusteringRun:
    """One clustering run: what it clustered (`source`: the trace filter and text mode), how, and results."""

    id: str
    status: str
    n_items: int
    n_clusters: int
    n_outliers: int
    outlier_share: float
    embedder: str
    namer: str | None
    source: dict[str, Any]
    config: dict[str, Any]
    metrics: dict[str, Any]
    job_id: str | None
    created_at: str
    _client: Distiller | None = field(default=None, repr=False)

    @classmethod
    def _from(cls, client: Distiller, d: dict[str, Any]) -> ClusteringRun:
        return cls(
            id=d["id"],
            status=d["status"],
            n_items=d["n_items"],
            n_clusters=d["n_clusters"],
            n_outliers=d["n_outliers"],
            outlier_share=d.get("outlier_share", 0.0),
            embedder=d.get("embedder", ""),
            namer=d.get("namer"),
            source=d.get("source") or {},
            config=d.get("config") or {},
            metrics=d.get("metrics") or {},
            job_id=d.get("job_id"),
            created_at=str(d.get("created_at", "")),
            _client=client,
        )

    def clusters(self) -> list[Cluster]:
        assert self._client is not None
        return self._client.list_clusters(self.id)
