"""The command line: `opentracy serve`, `opentracy datasets …`, `opentracy jobs …`.

Dataset commands talk to a running server (`--url`, default http://localhost:8000, or OPENTRACY_URL).
Mistakes print one line on stderr and exit non-zero; no tracebacks.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from typing import Any

import click

from opentracy import __version__


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _id_col(header: str) -> Any:
    """A table column for names and ids: never wrapped or cut, so it can be copied into the next command."""
    from rich.table import Column

    return Column(header, no_wrap=True, overflow="fold")


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns opentracy errors into one-line messages with a non-zero exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        from opentracy.errors import OpentracyError

        try:
            return super().invoke(ctx)
        except OpentracyError as e:
            fail(e.message)
        except KeyboardInterrupt:
            fail("interrupted", 130)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="opentracy")
@click.option(
    "--url", envvar="OPENTRACY_URL", default="http://localhost:8000", show_default=True, help="Server URL."
)
@click.option(
    "--api-key", envvar="OPENTRACY_API_KEY", default=None, help="Bearer token, if the server needs one."
)
@click.pass_context
def main(ctx: click.Context, url: str, api_key: str | None) -> None:
    """opentracy: turn LLM traffic into training data and cheaper models."""
    ctx.obj = {"url": url, "api_key": api_key}


def _client(ctx: click.Context) -> Any:
    from opentracy.client import Distiller

    return Distiller(base_url=ctx.obj["url"], api_key=ctx.obj["api_key"])


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--log-level", default="info", show_default=True)
def serve(host: str, port: int, log_level: str) -> None:
    """Run the HTTP server (data under OPENTRACY_HOME, default ./.opentracy)."""
    from opentracy.config import Settings

    settings = Settings.from_env()
    if not _is_loopback(host) and not settings.api_key:
        fail(f"refusing to listen on {host} without an API key: set OPENTRACY_API_KEY, or serve on 127.0.0.1")
    import uvicorn

    from opentracy.server import create_app

    click.echo(
        f"opentracy {__version__} on http://{host}:{port}  (data: {settings.home}, docs: /docs)", err=True
    )
    uvicorn.run(create_app(settings=settings), host=host, port=port, log_level=log_level)


@main.command("mock-llm")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8001, show_default=True, type=int)
@click.option(
    "--script",
    "script_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="A .json list of rules, or a .py file defining reply(request) (or a list named rules).",
)
@click.option("--latency-ms", default=0, show_default=True, type=float, help="Delay before every answer.")
@click.option("--log-level", default="warning", show_default=True)
def mock_llm(host: str, port: int, script_path: str | None, latency_ms: float, log_level: str) -> None:
    """Run the scripted OpenAI-compatible server of opentracy.testing (for tests, demos and benchmarks).

    Without --script every answer is deterministic: a sentence derived from the request, a valid instance
    when a JSON schema is asked for, hashed unit-vector embeddings. A JSON script is a list of rules,
    matched in order: {"match": {"model", "contains", "path"}, "reply": {"content", "status", "headers",
    "latency_ms", "hang", "malformed", "usage", "finish_reason", "tool_calls", "json"}, "times": N}.
    """
    from opentracy.testing import load_script, serve

    script = load_script(script_path) if script_path else None
    click.echo(
        f"mock LLM on http://{host}:{port}/v1  (latency {latency_ms:g} ms, script: {script_path or 'none'})",
        err=True,
    )
    serve(host=host, port=port, script=script, latency_ms=latency_ms, log_level=log_level)


# ---------------------------------------------------------------------------------------------------
# datasets


@main.group()
def datasets() -> None:
    """Upload, inspect, version and export datasets."""


def _warnings(ds: Any) -> None:
    con = _console(stderr=True)
    for w in ds.warnings:
        con.print(f"[yellow]warning:[/yellow] {w.message}", soft_wrap=True)  # one line per warning


def _version_line(ds: Any) -> str:
    h = f"  {ds.content_hash[:19]}…" if ds.content_hash else ""
    return f"{ds.label}  {ds.status}  {ds.row_count:,} rows{h}"


@datasets.command("upload")
@click.argument("name")
@click.argument("path")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "openai", "csv", "parquet", "hf"]), default=None)
@click.option("--prompt-field", default=None, help="Source field that holds the prompt.")
@click.option("--response-field", default=None, help="Source field that holds the response.")
@click.option(
    "--metadata-field", "metadata_fields", multiple=True, help="Source fields to keep in metadata (repeat)."
)
@click.option("--split", default=None, help="Split of a Hugging Face dataset.")
@click.option("--skip-bad", is_flag=True, help="Skip bad lines (and list them) instead of failing.")
@click.option("--description", default=None)
@click.option("--no-wait", is_flag=True, help="Print the job id and return at once.")
@click.pass_context
def ds_upload(
    ctx: click.Context,
    name: str,
    path: str,
    fmt: str | None,
    prompt_field: str | None,
    response_field: str | None,
    metadata_fields: tuple[str, ...],
    split: str | None,
    skip_bad: bool,
    description: str | None,
    no_wait: bool,
) -> None:
    """Upload PATH (a file, a Hugging Face folder or Hub id) into dataset NAME."""
    c = _client(ctx)
    got = c.upload_dataset(
        name,
        path,
        format=fmt,
        prompt_field=prompt_field,
        response_field=response_field,
        metadata_fields=list(metadata_fields) or None,
        split=split,
        on_error="skip" if skip_bad else "raise",
        description=description,
        wait=not no_wait,
        progress=True,
    )
    if no_wait:
        click.echo(got.id)
        return
    click.echo(_version_line(got))
    up = next((p for p in reversed(got.provenance) if p.get("kind") == "upload"), None)
    if up and up.get("skipped"):
        click.echo(f"skipped {up['skipped']} bad record(s); see the job log for each one", err=True)
    _warnings(got)


@datasets.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ds_list(ctx: click.Context, as_json: bool) -> None:
    """All datasets with their latest version."""
    items = _client(ctx).list_datasets()
    if as_json:
        click.echo(json.dumps([_ds_json(d) for d in items], indent=2))
        return
    from rich.table import Table

    t = Table(_id_col("dataset"), "latest", "status", "rows", "content hash", "warnings")
    for d in items:
        t.add_row(
            d.name,
            d.label,
            d.status,
            f"{d.row_count:,}",
            (d.content_hash or "")[:19],
            ", ".join(w.code for w in d.warnings),
        )
    _console().print(t)


def _ds_json(d: Any) -> dict[str, Any]:
    return {
        "name": d.name,
        "version": d.version,
        "label": d.label,
        "status": d.status,
        "row_count": d.row_count,
        "content_hash": d.content_hash,
        "warnings": [w.message for w in d.warnings],
    }


@datasets.command("show")
@click.argument("name")
@click.option("--version", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ds_show(ctx: click.Context, name: str, version: str | None, as_json: bool) -> None:
    """A dataset's versions, provenance and warnings."""
    c = _client(ctx)
    ds = c.get_dataset(name, version)
    if as_json:
        click.echo(json.dumps({**_ds_json(ds), "provenance": ds.provenance}, indent=2, default=str))
        return
    from rich.table import Table

    con = _console()
    t = Table(_id_col("version"), "status", "rows", "content hash", "parent")
    for v in c.list_versions(name):
        t.add_row(v.label, v.status, f"{v.row_count:,}", (v.content_hash or "")[:23], v.parent or "")
    con.print(t)
    con.print(f"[bold]{ds.label}[/bold] provenance:")
    for step in ds.provenance:
        rest = ", ".join(
            f"{k}={v}" for k, v in step.items() if k not in ("kind", "at") and v not in (None, {}, [])
        )
        con.print(f"  {step.get('at', '')}  {step.get('kind')}  {rest}")
    _warnings(ds)


@datasets.command("rows")
@click.argument("name")
@click.option("--version", default=None)
@click.option("--limit", default=20, show_default=True)
@click.option("-q", "--query", default=None, help="Text search in prompt and response.")
@click.option("--tag", "tags", multiple=True)
@click.option("--where", "wheres", multiple=True, help="metadata FIELD=VALUE (repeat).")
@click.option("--json", "as_json", is_flag=True, help="Print JSONL rows.")
@click.pass_context
def ds_rows(
    ctx: click.Context,
    name: str,
    version: str | None,
    limit: int,
    query: str | None,
    tags: tuple[str, ...],
    wheres: tuple[str, ...],
    as_json: bool,
) -> None:
    """Rows of a version (filtered, paginated)."""
    where = {}
    for w in wheres:
        if "=" not in w:
            fail(f"--where takes FIELD=VALUE, got {w!r}", 2)
        k, v = w.split("=", 1)
        where[k] = v
    it = _client(ctx).rows(name, version, q=query, tags=list(tags), where=where, page_size=min(limit, 1000))
    rows = [r for _, r in zip(range(limit), it, strict=False)]
    if as_json:
        for r in rows:
            click.echo(json.dumps(r.to_dict(), ensure_ascii=False))
        return
    from rich.table import Table

    t = Table(_id_col("row_id"), "prompt", "response", "metadata", show_lines=False)
    for r in rows:
        p = (
            r.prompt
            if isinstance(r.prompt, str)
            else " | ".join(f"{m.get('role')}: {m.get('content')}" for m in r.prompt)
        )
        t.add_row(r.row_id, _clip(p, 60), _clip(r.response, 30), _clip(json.dumps(r.metadata), 40))
    _console().print(t)


def _clip(s: str, n: int) -> str:
    s = s.replace("\n", " ")
    return s if len(s) <= n else s[: n - 1] + "…"


@datasets.command("freeze")
@click.argument("name")
@click.option("--version", default="active", show_default=True)
@click.pass_context
def ds_freeze(ctx: click.Context, name: str, version: str) -> None:
    """Make a version immutable and record its content hash."""
    ds = _client(ctx).freeze(name, version, progress=True)
    click.echo(_version_line(ds))
    _warnings(ds)


@datasets.command("new-version")
@click.argument("name")
@click.option("--parent", default=None, help="Frozen version to start from (default: the latest).")
@click.pass_context
def ds_new_version(ctx: click.Context, name: str, parent: str | None) -> None:
    """Start the next active version from a frozen one (no rows are copied)."""
    ds = _client(ctx).new_version(name, parent)
    click.echo(_version_line(ds))


@datasets.command("diff")
@click.argument("name")
@click.argument("a", required=False)
@click.argument("b", required=False)
@click.option("--limit", default=20, show_default=True, help="Row ids to list per kind.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ds_diff(ctx: click.Context, name: str, a: str | None, b: str | None, limit: int, as_json: bool) -> None:
    """Rows added, removed and changed from version A (default: B's parent) to B (default: latest)."""
    d = _client(ctx).diff(name, a, b, limit=limit)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(
        f"{d['a']} → {d['b']}: +{d['added']:,} added, -{d['removed']:,} removed, ~{d['changed']:,} changed, {d['unchanged']:,} unchanged"
    )
    for kind, sign in (("added", "+"), ("removed", "-"), ("changed", "~")):
        for rid in d[f"{kind}_ids"][:limit]:
            click.echo(f"  {sign} {rid}")


@datasets.command("export")
@click.argument("name")
@click.argument("path")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "openai", "csv", "parquet"]),
    default="jsonl",
    show_default=True,
)
@click.option("--version", default=None)
@click.pass_context
def ds_export(ctx: click.Context, name: str, path: str, fmt: str, version: str | None) -> None:
    """Write a version to PATH as jsonl (spec rows), openai (chat fine-tuning), csv or parquet."""
    dest = _client(ctx).export(name, path, format=fmt, version=version)
    click.echo(f"wrote {dest}")


@datasets.command("delete")
@click.argument("name")
@click.option("--confirm", default=None, help="Repeat the dataset's name to delete without a prompt.")
@click.pass_context
def ds_delete(ctx: click.Context, name: str, confirm: str | None) -> None:
    """Delete a dataset and all its versions (asks you to type its name)."""
    if confirm is None:
        if not sys.stdin.isatty():
            fail(f"deleting {name!r} removes every version; pass --confirm {name} to do it")
        confirm = click.prompt(f"This deletes every version of {name!r}. Type its name to confirm")
    _client(ctx).delete_dataset(name, confirm=confirm)
    click.echo(f"deleted {name}")


# ---------------------------------------------------------------------------------------------------
# jobs


@main.group()
def jobs() -> None:
    """Long operations: list, show, cancel."""


@jobs.command("list")
@click.option("--status", default=None)
@click.pass_context
def jobs_list(ctx: click.Context, status: str | None) -> None:
    c = _client(ctx)
    page = c._json("GET", "/v1/jobs", params={k: v for k, v in {"status": status}.items() if v})
    from rich.table import Table

    t = Table(_id_col("job"), _id_col("kind"), _id_col("status"), "progress", "message", "created")
    for j in page["items"]:
        t.add_row(
            j["id"],
            j["kind"],
            j["status"],
            f"{j['progress']:.0%}",
            _clip(j["message"], 50),
            j["created_at"][:19],
        )
    _console().print(t)


@jobs.command("show")
@click.argument("job_id")
@click.pass_context
def jobs_show(ctx: click.Context, job_id: str) -> None:
    c = _client(ctx)
    j = c.get_job(job_id)
    click.echo(f"{j.id}  {j.kind}  {j.status}  {j.progress:.0%}  {j.message}")
    for line in c.job_logs(job_id):
        click.echo(f"  {line['ts'][:19]}  {line['level']:5s}  {line['message']}")


@jobs.command("cancel")
@click.argument("job_id")
@click.pass_context
def jobs_cancel(ctx: click.Context, job_id: str) -> None:
    j = _client(ctx).cancel_job(job_id)
    click.echo(f"{j.id}  {j.status}")


# ---------------------------------------------------------------------------------------------------
# aliases


@main.group()
def aliases() -> None:
    """Named pointers to models (ticket-classifier → openai/gpt-4o), with their history."""


def _whoami() -> str | None:
    return os.environ.get("USER") or os.environ.get("USERNAME") or None


@aliases.command("set")
@click.argument("name")
@click.argument("target")
@click.option("--reason", default=None, help="Why: kept in the alias's history.")
@click.option("--by", default=None, help="Who (default: $USER): kept in the alias's history.")
@click.pass_context
def aliases_set(ctx: click.Context, name: str, target: str, reason: str | None, by: str | None) -> None:
    """Point NAME at TARGET: a model string provider/model, or another alias."""
    a = _client(ctx).set_alias(name, target, reason, by=by or _whoami())
    via = f"  (resolves to {a.resolved})" if a.resolved and a.resolved != a.target else ""
    click.echo(f"{a.name} → {a.target}{via}")


@aliases.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def aliases_list(ctx: click.Context, as_json: bool) -> None:
    """All aliases and what they point at."""
    items = _client(ctx).list_aliases()
    if as_json:
        click.echo(json.dumps([_alias_json(a) for a in items], indent=2))
        return
    from rich.table import Table

    t = Table(_id_col("alias"), _id_col("target"), "updated")
    for a in items:
        t.add_row(a.name, a.target, a.updated_at[:19])
    _console().print(t)


def _alias_json(a: Any) -> dict[str, Any]:
    d = {"name": a.name, "target": a.target, "created_at": a.created_at, "updated_at": a.updated_at}
    if a.resolved is not None:
        d["resolved"] = a.resolved
    if a.history is not None:
        d["history"] = a.history
    return d


@aliases.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def aliases_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """An alias, the model it resolves to, and its history (who pointed it where, when, why)."""
    a = _client(ctx).get_alias(name)
    if as_json:
        click.echo(json.dumps(_alias_json(a), indent=2))
        return
    resolved = a.resolved or "(does not resolve: see `opentracy aliases show` of its target)"
    via = f"  (resolves to {resolved})" if a.resolved != a.target else ""
    click.echo(f"{a.name} → {a.target}{via}")
    for h in a.history or []:
        change = {
            "create": f"created → {h['new_target']}",
            "repoint": f"{h['old_target']} → {h['new_target']}",
            "delete": f"deleted (was {h['old_target']})",
        }.get(h["action"], h["action"])
        who = f"  by {h['by']}" if h.get("by") else ""
        why = f"  — {h['reason']}" if h.get("reason") else ""
        click.echo(f"  {h['at'][:19]}  {change}{who}{why}")


@aliases.command("delete")
@click.argument("name")
@click.option("--reason", default=None, help="Why: kept in the alias's history.")
@click.option("--by", default=None, help="Who (default: $USER): kept in the alias's history.")
@click.pass_context
def aliases_delete(ctx: click.Context, name: str, reason: str | None, by: str | None) -> None:
    """Delete an alias (its history stays)."""
    _client(ctx).delete_alias(name, reason, by=by or _whoami())
    click.echo(f"deleted {name}")


# --- embeddings (issue 6) ---------------------------------------------------------------------------
# Local commands: they work on the data directory (OPENTRACY_HOME), not through the server.


@main.group()
def embeddings() -> None:
    """Local embedding models (built here from pip-installed weights, never downloaded)."""


@embeddings.command("build")
@click.option("--static", "static", is_flag=True, help="Also distil the static (model2vec) model.")
@click.option("--force", is_flag=True, help="Rebuild even if a build exists.")
def embeddings_build(static: bool, force: bool) -> None:
    """Build the int8 ONNX export of all-MiniLM-L6-v2 (the default embedder) into the data directory."""
    from opentracy.config import Settings
    from opentracy.embeddings.build import build_onnx, build_static, manifest

    home = Settings.from_env().home
    out = build_onnx(home, force=force, log=click.echo)
    click.echo(f"{out}  model.onnx sha256 {manifest(out)['files']['model.onnx'][:16]}…")
    if static:
        out = build_static(home, force=force, log=click.echo)
        click.echo(f"{out}  sha256 {manifest(out)['files']['model/model.safetensors'][:16]}…")


@embeddings.command("info")
def embeddings_info() -> None:
    """Built models and cached vectors per model."""
    from opentracy.config import Settings
    from opentracy.embeddings.build import ONNX_NAME, STATIC_NAME, built, manifest

    settings = Settings.from_env()
    for name in (ONNX_NAME, STATIC_NAME):
        d = built(settings.home, name)
        if d is None:
            click.echo(f"{name}: not built")
        else:
            m = manifest(d)
            click.echo(f"{name}: {d} (built in {m.get('seconds')} s with {m.get('versions')})")
    from opentracy.embeddings.cache import EmbeddingCache
    from opentracy.store.artifacts import ArtifactStore
    from opentracy.store.catalog import Catalog

    catalog = Catalog(settings.database_url)
    try:
        cache = EmbeddingCache(catalog, ArtifactStore(settings.artifacts_url))
        for model, n in sorted(cache.models().items()):
            click.echo(f"cached: {n:,} vectors of {model}")
    finally:
        catalog.dispose()


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))
