"""The command line: `opentracy serve`, `opentracy datasets …`, `opentracy jobs …`.

Dataset commands talk to a running server (`--url`, default http://localhost:8000, or OPENTRACY_URL).
Mistakes print one line on stderr and exit non-zero; no tracebacks.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from datetime import UTC
from typing import Any

import click

from opentracy import __version__


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    # Piped or captured, rich would lay tables out for 80 columns, squeezing ids (which must stay whole to be
    # copied into the next command). A terminal, or COLUMNS, says how wide to be.
    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, highlight=False, width=160 if wide else None)


def _print_table(t: Any, empty: str, console: Any = None) -> None:
    """A table; or, when it has no rows, one line on stderr that says so (an empty frame says nothing)."""
    if not t.row_count:
        click.echo(empty, err=True)
        return
    (console or _console()).print(t)


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
        for item in got.skipped:
            where = f"line {item['line']}" if "line" in item else f"row {item.get('row')}"
            click.echo(f"skipped {where}: {item['error']}", err=True)
        more = up["skipped"] - len(got.skipped)
        click.echo(
            f"skipped {up['skipped']:,} bad record(s)"
            + (
                f" ({more:,} more than listed: only the first {len(got.skipped):,} are kept)"
                if more > 0
                else ""
            ),
            err=True,
        )
    _warnings(got)


@datasets.command("list")
@click.option("-q", "--query", default=None, help="Only datasets whose name contains this.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ds_list(ctx: click.Context, query: str | None, as_json: bool) -> None:
    """All datasets with their latest version."""
    items = _client(ctx).list_datasets(q=query)
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
    _print_table(
        t,
        "no datasets"
        + (
            f" whose name contains {query!r}"
            if query
            else "; upload one: opentracy datasets upload NAME PATH"
        ),
    )


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


def _utc(t: Any) -> str:
    """A catalog time, in UTC, for people."""
    if t is None:
        return "-"
    return f"{t.astimezone(UTC) if t.tzinfo else t:%Y-%m-%d %H:%M:%S} UTC"


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
        times = {
            k: t.isoformat() if t else None
            for k, t in (("created_at", ds.created_at), ("frozen_at", ds.frozen_at))
        }
        click.echo(json.dumps({**_ds_json(ds), **times, "provenance": ds.provenance}, indent=2, default=str))
        return
    from rich.table import Table

    con = _console()
    t = Table(_id_col("version"), "status", "rows", "content hash", "parent")
    for v in c.list_versions(name):
        t.add_row(v.label, v.status, f"{v.row_count:,}", (v.content_hash or "")[:23], v.parent or "")
    con.print(t)
    when = f"created {_utc(ds.created_at)}" + (f", frozen {_utc(ds.frozen_at)}" if ds.frozen_at else "")
    con.print(f"[bold]{ds.label}[/bold] {when}")
    con.print(f"[bold]{ds.label}[/bold] provenance:")
    for step in ds.provenance:
        # an upload's options (a dict) read as the step's own fields; other values as JSON, not Python reprs
        flat = {k: v for k, v in step.items() if k != "options"} | (step.get("options") or {})
        rest = ", ".join(
            f"{k}={v if isinstance(v, str | int | float) else json.dumps(v)}"
            for k, v in flat.items()
            if k not in ("kind", "at") and v not in (None, {}, [])
        )
        con.print(f"  {step.get('at', '')}  {step.get('kind')}  {rest}", markup=False, soft_wrap=True)
    _warnings(ds)


@datasets.command("rows")
@click.argument("name")
@click.option("--version", default=None)
@click.option("--limit", default=20, show_default=True, help="Rows to show.")
@click.option("--cursor", default=None, help="Start where an earlier page ended (it prints the cursor).")
@click.option("--all", "every", is_flag=True, help="Every matching row (overrides --limit).")
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
    cursor: str | None,
    every: bool,
    query: str | None,
    tags: tuple[str, ...],
    wheres: tuple[str, ...],
    as_json: bool,
) -> None:
    """Rows of a version (filtered, a page at a time: the next page's cursor goes to stderr)."""
    where = {}
    for w in wheres:
        if "=" not in w:
            fail(f"--where takes FIELD=VALUE, got {w!r}", 2)
        k, v = w.split("=", 1)
        where[k] = v
    if limit < 1 and not every:
        fail("--limit must be at least 1 (or use --all)", 2)
    c = _client(ctx)
    if every and as_json and not (query or tags or where or cursor):  # every row: one streamed answer
        for r in c.rows(name, version):
            click.echo(json.dumps(r.to_dict(), ensure_ascii=False))
        return
    rows: list[Any] = []
    shown = 0
    total = 0
    later = cursor is not None  # a later page: its rows are some "more" of the total
    while every or shown < limit:
        want = 1000 if every else min(1000, limit - shown)
        got = c.rows_page(name, version, q=query, tags=list(tags), where=where, limit=want, cursor=cursor)
        (page, cursor), total = got, got.total
        shown += len(page)
        if as_json:  # streamed: --all may be millions of rows
            for r in page:
                click.echo(json.dumps(r.to_dict(), ensure_ascii=False))
        else:
            rows.extend(page)
        if not cursor or not page:
            break
    if not as_json:
        from rich.table import Table

        t = Table(_id_col("row_id"), "prompt", "response", "metadata", show_lines=False)
        for r in rows:
            p = (
                r.prompt
                if isinstance(r.prompt, str)
                else " | ".join(f"{m.get('role')}: {m.get('content')}" for m in r.prompt)
            )
            t.add_row(r.row_id, _clip(p, 60), _clip(r.response, 30), _clip(json.dumps(r.metadata), 40))
        _print_table(t, "no rows" + (" match" if (query or tags or where) else " in this version"))
        if rows:
            said = f"{shown:,}{' more' if later else ''} of {total:,} rows"
            click.echo(said + (" matching" if (query or tags or where) else ""), err=True)
    if cursor:
        click.echo(f"more rows: --cursor {cursor}", err=True)


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
    type=click.Choice(["jsonl", "openai", "csv", "parquet", "hf"]),
    default=None,
    help="Default: what PATH's suffix names (.jsonl, .csv, .parquet).",
)
@click.option("--version", default=None)
@click.option(
    "--test-size",
    type=float,
    default=None,
    help="hf: hold out a validation split (a fraction below 1, or a number of rows).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="hf: seed of the train/validation split."
)
@click.pass_context
def ds_export(
    ctx: click.Context,
    name: str,
    path: str,
    fmt: str | None,
    version: str | None,
    test_size: float | None,
    seed: int,
) -> None:
    """Write a version to PATH as jsonl (spec rows), openai (chat fine-tuning), csv, parquet, or hf (a Hugging
    Face `save_to_disk` folder; with --test-size, a DatasetDict of train and validation)."""
    if fmt != "hf":
        if test_size is not None:
            fail("--test-size goes with --format hf")
        dest = _client(ctx).export(name, path, format=fmt, version=version)
        click.echo(f"wrote {dest}")
        return
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        fail(f"{path} exists; a Hugging Face dataset is saved into a new or empty folder")
    size: float | int | None = test_size
    if test_size is not None and test_size >= 1:
        if not test_size.is_integer():
            fail(f"--test-size takes a fraction below 1 or a whole number of rows, not {test_size:g}", 2)
        size = int(test_size)
    hf = _client(ctx).to_hf(name, version=version, test_size=size, seed=seed)
    hf.save_to_disk(path)
    splits = {k: len(v) for k, v in hf.items()} if hasattr(hf, "items") else {"rows": len(hf)}
    click.echo(f"wrote {path} (" + ", ".join(f"{k} {n:,}" for k, n in splits.items()) + ")")


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
@click.option(
    "--status", default=None, type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"])
)
@click.option("--kind", default=None, help="Only jobs of this kind (dataset.upload, dataset.freeze, ...).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0), help="Skip the newest N.")
@click.pass_context
def jobs_list(ctx: click.Context, status: str | None, kind: str | None, limit: int, offset: int) -> None:
    """Jobs, newest first."""
    c = _client(ctx)
    got = c.list_jobs(status=status, kind=kind, limit=limit, offset=offset)
    from rich.table import Column, Table

    console = _console()

    def state(j: Any) -> str:  # a job still under way shows how far it got
        return f"{j.status} {j.progress:.0%}" if j.status in ("queued", "running") else j.status

    cells = [
        [j.id, j.kind, state(j), f"{j.created_at.astimezone(UTC):%Y-%m-%d %H:%M}" if j.created_at else ""]
        for j in got
    ]
    # The message takes what the other columns leave (each costs 3 more for its border and padding); in a
    # narrow terminal it is left out (`jobs show` has it) rather than squeezing the ids.
    widths = [
        max([len(h)] + [len(c[i]) for c in cells]) + 3
        for i, h in enumerate(("job", "kind", "status", "created (UTC)"))
    ]
    room = console.width - sum(widths) - 4
    t = Table(_id_col("job"), _id_col("kind"), _id_col("status"), Column("created (UTC)", no_wrap=True))
    if room >= 12:
        t.add_column("message", no_wrap=True, overflow="ellipsis")
    for j, c in zip(got, cells, strict=True):
        t.add_row(*c, *([_clip(j.message, room)] if room >= 12 else []))
    _print_table(
        t,
        "no jobs" + (" match" if (status or kind) else "") + (f" past the newest {offset}" if offset else ""),
        console,
    )
    if len(got) == limit:
        click.echo(f"more jobs: --offset {offset + limit}", err=True)


@jobs.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="The whole job record (params, result, error, times).")
@click.pass_context
def jobs_show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """A job's state, times, error and log (its result too, with --json)."""
    c = _client(ctx)
    if as_json:
        click.echo(json.dumps(c._json("GET", f"/v1/jobs/{job_id}"), indent=2))
        return
    j = c.get_job(job_id)
    click.echo(f"{j.id}  {j.kind}  {j.status}  {j.progress:.0%}  {j.message}")
    times = f"  created {_utc(j.created_at)}"
    if j.started_at:
        times += f", started {_utc(j.started_at)}"
    if j.finished_at:
        times += f", ended {_utc(j.finished_at)}"
        if j.started_at:
            times += f" ({(j.finished_at - j.started_at).total_seconds():.1f} s)"
    click.echo(times + (f"; {j.attempts} attempts" if j.attempts > 1 else ""))
    if j.error:
        click.echo(f"  error ({j.error.get('code', 'error')}): {j.error.get('message', '')}")
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
    _print_table(t, "no aliases; create one: opentracy aliases set NAME TARGET")


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


# ---------------------------------------------------------------------------------------------------
# traces


@main.group()
def traces() -> None:
    """LLM calls: list, show, import, export, and add to a dataset."""


def _trace_filters(f: Any) -> Any:
    """Click options shared by list, export and to-dataset."""
    opts = [
        click.option("--model", default=None, help="provider/model, as recorded"),
        click.option("--alias", default=None),
        click.option("--since", default=None, help="started at or after (ISO 8601)"),
        click.option("--until", default=None, help="started before (ISO 8601)"),
        click.option("--tag", "tags", multiple=True, help="holding this tag (repeat: all of them)"),
        click.option("--where", "wheres", multiple=True, help="metadata FIELD=VALUE (repeat)"),
        click.option(
            "--errors/--no-errors", "error", default=None, help="only failed / only successful calls"
        ),
        click.option("--finish-reason", default=None),
        click.option("--user", "user_id", default=None),
        click.option("--session", "session_id", default=None),
        click.option("-q", "--query", "q", default=None, help="text in the prompt or the response"),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _filters_of(kw: dict[str, Any]) -> dict[str, Any]:
    where = {}
    for w in kw.pop("wheres", ()):
        if "=" not in w:
            fail(f"--where takes FIELD=VALUE, got {w!r}", 2)
        k, v = w.split("=", 1)
        where[k] = v
    out = {k: v for k, v in kw.items() if v is not None and v != ()}
    if "tags" in out:
        out["tags"] = list(out["tags"])
    if where:
        out["where"] = where
    return out


@traces.command("list")
@_trace_filters
@click.option(
    "--sort",
    default="-started_at",
    show_default=True,
    help="started_at, latency, cost, tokens (- for descending)",
)
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSONL traces.")
@click.pass_context
def traces_list(ctx: click.Context, sort: str, limit: int, as_json: bool, **kw: Any) -> None:
    """Traces, newest first, filtered."""
    items = list(_client(ctx).list_traces(sort=sort, limit=limit, **_filters_of(kw)))
    if as_json:
        for t in items:
            click.echo(json.dumps(t, ensure_ascii=False))
        return
    from rich.table import Table

    t = Table(_id_col("trace_id"), "started", "model", "prompt", "response", "tokens", "cost $", "ms")
    for tr in items:
        msgs = tr["request"].get("messages") or []
        last = msgs[-1].get("content") if msgs else ""
        resp = ((tr.get("response") or {}).get("message") or {}).get("content") or ""
        if tr.get("error"):
            resp = f"[red]error: {tr['error']}[/red]"
        tok = f"{tr.get('input_tokens') or 0}/{tr.get('output_tokens') or 0}"
        cost = f"{tr['cost_usd']:.6f}" if tr.get("cost_usd") is not None else "?"
        ms = f"{tr['latency_ms']:.0f}" if tr.get("latency_ms") is not None else ""
        model = tr["model"] + (f" ({tr['alias']})" if tr.get("alias") else "")
        t.add_row(
            tr["trace_id"],
            tr["started_at"][:19],
            model,
            _clip(str(last), 40),
            _clip(str(resp), 30),
            tok,
            cost,
            ms,
        )
    _print_table(t, "no traces" + (" match" if any(v for v in kw.values()) else " yet"))


@traces.command("show")
@click.argument("trace_id")
@click.pass_context
def traces_show(ctx: click.Context, trace_id: str) -> None:
    """One trace, whole, as JSON."""
    click.echo(json.dumps(_client(ctx).get_trace(trace_id), indent=2, ensure_ascii=False))


@traces.command("import")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "opentracy", "openai", "otel"]),
    default="auto",
    show_default=True,
)
@click.option("--skip-bad", is_flag=True, help="Skip bad lines (and list them) instead of failing.")
@click.option("--no-wait", is_flag=True, help="Print the job id and return at once.")
@click.pass_context
def traces_import(ctx: click.Context, path: str, fmt: str, skip_bad: bool, no_wait: bool) -> None:
    """Import PATH: our JSONL, OpenAI request/response or Batch API logs, or OpenTelemetry GenAI spans
    (OTLP JSON). All or nothing unless --skip-bad."""
    got = _client(ctx).import_traces(
        path, format=fmt, on_error="skip" if skip_bad else "raise", wait=not no_wait, progress=True
    )
    if no_wait:
        click.echo(got.id)
        return
    click.echo(
        f"imported {got['inserted']:,} traces from {got['file']}"
        + (f"  ({got['duplicates']:,} already stored)" if got.get("duplicates") else "")
        + (f"  ({got['ignored']:,} lines/spans that are not LLM calls)" if got.get("ignored") else "")
    )
    for item in got.get("skipped_items") or []:
        click.echo(f"skipped line {item['line']}: {item['error']}", err=True)


@traces.command("export")
@click.argument("path")
@_trace_filters
@click.pass_context
def traces_export(ctx: click.Context, path: str, **kw: Any) -> None:
    """Write the matching traces to PATH as JSONL (readable by `opentracy traces import`)."""
    dest = _client(ctx).export_traces(path, **_filters_of(kw))
    n = sum(1 for _ in open(dest, "rb"))
    click.echo(f"wrote {n:,} traces to {dest}")


@traces.command("to-dataset")
@click.argument("dataset")
@click.option("--id", "ids", multiple=True, help="a trace id (repeat); otherwise the filters choose")
@_trace_filters
@click.option("--limit", default=None, type=int, help="at most this many traces")
@click.option("--no-create", is_flag=True, help="fail if the dataset does not exist")
@click.pass_context
def traces_to_dataset(
    ctx: click.Context, dataset: str, ids: tuple[str, ...], limit: int | None, no_create: bool, **kw: Any
) -> None:
    """Add traces to DATASET's active version (each row keeps metadata.source_trace_id)."""
    f = _filters_of(kw)
    if not ids and not f:
        fail("say which traces: --id, or at least one filter (e.g. --model, --tag, -q)", 2)
    r = _client(ctx).traces_to_dataset(
        dataset, trace_ids=list(ids) or None, create=not no_create, limit=limit, **f
    )
    click.echo(f"added {r['added']:,} rows to {r['version']} ({r['matched']:,} traces matched)")
    for k, what in (
        ("already_present", "already in the dataset"),
        ("skipped_errors", "failed calls"),
        ("skipped_no_text", "answers without text"),
    ):
        if r.get(k):
            click.echo(f"  left out {r[k]:,} {what}", err=True)


# local models


@main.group("local-models")
def local_models() -> None:
    """Models that `local/<name>` runs in-process: a Hugging Face causal LM, optionally with a LoRA adapter."""


def _lm_json(m: Any) -> dict[str, Any]:
    return {k: getattr(m, k) for k in m.__dataclass_fields__}


@local_models.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def lm_list(ctx: click.Context, as_json: bool) -> None:
    """Registered models and those named in OPENTRACY_LOCAL_MODELS."""
    items = _client(ctx).list_local_models()
    if as_json:
        click.echo(json.dumps([_lm_json(m) for m in items], indent=2))
        return
    from rich.table import Table

    t = Table(_id_col("model"), "base model", "adapter", "$ in/out per 1M", "source")
    for m in items:
        t.add_row(m.model, m.base_model, m.adapter or "", f"{m.input_price:g} / {m.output_price:g}", m.source)
    _print_table(t, "no local models")


@local_models.command("show")
@click.argument("name")
@click.pass_context
def lm_show(ctx: click.Context, name: str) -> None:
    """One model, by name or id (m_…), as JSON."""
    click.echo(json.dumps(_lm_json(_client(ctx).get_local_model(name)), indent=2))


@local_models.command("register")
@click.argument("name")
@click.argument("base_model")
@click.option("--adapter", default=None, help="A LoRA adapter folder saved by peft.")
@click.option("--chat-template-file", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option(
    "--generation", default=None, help='Defaults as JSON, e.g. \'{"temperature": 0, "max_tokens": 256}\'.'
)
@click.option("--input-price", type=float, default=0.0, show_default=True, help="USD per million tokens.")
@click.option("--output-price", type=float, default=0.0, show_default=True, help="USD per million tokens.")
@click.option("--description", default="")
@click.pass_context
def lm_register(
    ctx: click.Context,
    name: str,
    base_model: str,
    adapter: str | None,
    chat_template_file: str | None,
    generation: str | None,
    input_price: float,
    output_price: float,
    description: str,
) -> None:
    """Make local/NAME run BASE_MODEL (a model folder on the server's machine)."""
    try:
        gen = json.loads(generation) if generation else None
    except ValueError as e:
        fail(f"--generation is not valid JSON: {e}")
    template = None
    if chat_template_file:
        with open(chat_template_file, encoding="utf-8") as f:
            template = f.read()
    m = _client(ctx).register_local_model(
        name,
        base_model,
        adapter=adapter,
        chat_template=template,
        generation=gen,
        input_price=input_price,
        output_price=output_price,
        description=description,
    )
    click.echo(f"{m.model} → {m.base_model}{f' + {m.adapter}' if m.adapter else ''}  ({m.id})")


@local_models.command("delete")
@click.argument("name")
@click.pass_context
def lm_delete(ctx: click.Context, name: str) -> None:
    """Forget a registered model (its files stay where they are)."""
    _client(ctx).delete_local_model(name)
    click.echo(f"deleted local/{name}")


# ---------------------------------------------------------------------------------------------------
# curation and review


def _report_lines(run: dict[str, Any]) -> list[str]:
    rep = run["report"]
    j = rep.get("judge") or {}
    lines = [
        f"{run['source']} → {run['output']}: {rep['rows_in']:,} rows in, {rep['rows_out']:,} out, "
        f"{rep['dropped_total']:,} dropped, {rep.get('held_for_review', 0):,} held for review"
    ]
    for rule, n in sorted(rep.get("dropped", {}).items(), key=lambda x: -x[1]):
        lines.append(f"  dropped {n:>7,}  {rule}")
    for flag, n in sorted(rep.get("flagged", {}).items(), key=lambda x: -x[1]):
        lines.append(f"  flagged {n:>7,}  {flag}")
    if j.get("skipped"):
        lines.append(f"  judge skipped: {j.get('skipped_reason')}")
    elif j.get("model"):
        lines.append(
            f"  judge {j['model']}: {j['rows_judged']:,} rows, mean {j.get('mean_score')}, "
            f"{j['below_threshold']:,} below {j['threshold']}, {j['errors']:,} errors; {j['calls']:,} calls "
            f"({j['cached']:,} cached), {j['input_tokens'] + j['output_tokens']:,} tokens, ${j['cost_usd']:.4f}"
        )
        lines.append(
            "  scores " + " ".join(f"{i / 10:.1f}:{c}" for i, c in enumerate(j.get("histogram", [])))
        )
    return lines


@main.command("curate")
@click.argument("name")
@click.option(
    "--version", default=None, help="Version to curate (default: the latest; an active one is frozen first)."
)
@click.option(
    "--config", "config_path", default=None, type=click.Path(dir_okay=False), help="A JSON curation config."
)
@click.option("--judge", default=None, help="Judge model (provider/model or an alias).")
@click.option("--no-judge", is_flag=True, help="Rule filters only.")
@click.option("--threshold", type=float, default=None, help="Judge score below which rows are flagged (0-1).")
@click.option("--pii", type=click.Choice(["drop", "redact", "flag", "off"]), default=None)
@click.option("--dedup", "dedup_threshold", type=float, default=None, help="Near-duplicate similarity (0-1).")
@click.option("--no-dedup", is_flag=True)
@click.option("--cluster", default=None, help="Target cluster id, 'auto' (the majority) or 'off'.")
@click.option("--max-tokens", type=int, default=None, help="Drop rows longer than this (estimated tokens).")
@click.option(
    "--keep-if", "keep_if", multiple=True, help="Keep only rows matching, e.g. 'tags contains \"reviewed\"'."
)
@click.option("--drop-if", "drop_if", multiple=True, help="Drop rows matching an expression.")
@click.option("--review-size", type=int, default=None, help="Borderline rows to hold for review (0: none).")
@click.option("--pending", type=click.Choice(["exclude", "include"]), default=None,
              help="Rows still pending review at freeze time: exclude (default) or include.")  # fmt: skip
@click.option("--no-wait", is_flag=True, help="Print the job id and return at once.")
@click.pass_context
def curate_cmd(
    ctx: click.Context,
    name: str,
    version: str | None,
    config_path: str | None,
    judge: str | None,
    no_judge: bool,
    threshold: float | None,
    pii: str | None,
    dedup_threshold: float | None,
    no_dedup: bool,
    cluster: str | None,
    max_tokens: int | None,
    keep_if: tuple[str, ...],
    drop_if: tuple[str, ...],
    review_size: int | None,
    pending: str | None,
    no_wait: bool,
) -> None:
    """Curate dataset NAME: LLM judge, rule filters, review selection; writes the next version."""
    from opentracy.errors import InvalidInput

    config: dict[str, Any] = {}
    if config_path:
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            raise InvalidInput(f"cannot read the config: {e}", file=config_path) from None
    c = _client(ctx)
    rules = [{"name": f"keep_if_{i + 1}", "keep_if": e} for i, e in enumerate(keep_if)]
    rules += [{"name": f"drop_if_{i + 1}", "drop_if": e} for i, e in enumerate(drop_if)]
    review: Any = None
    if review_size is not None or pending is not None:
        review = dict(config.get("review") or {})
        if review_size is not None:
            review["size"] = review_size
        if pending is not None:
            review["pending"] = pending
    cl: Any = None
    if cluster is not None:
        cl = False if cluster == "off" else (int(cluster) if cluster.lstrip("-").isdigit() else cluster)
    got = c.curate(
        name,
        version=version,
        config=config,
        judge=False if no_judge else judge,
        threshold=threshold,
        pii=False if pii == "off" else pii,
        dedup=False if no_dedup else dedup_threshold,
        cluster=cl,
        length={"max_tokens": max_tokens} if max_tokens else None,
        rules=(list(config.get("rules") or []) + rules) or None,
        review=review,
        wait=not no_wait,
        progress=True,
    )
    if no_wait:
        click.echo(got.id)
        return
    click.echo(_version_line(got))
    for line in _report_lines(c.curation_report(name)):
        click.echo(line)
    _warnings(got)


@main.group()
def curation() -> None:
    """Curation runs: reports and the rows each run dropped."""


@curation.command("runs")
@click.argument("name")
@click.pass_context
def curation_runs(ctx: click.Context, name: str) -> None:
    """Every curation run of NAME."""
    from rich.table import Table

    t = Table(_id_col("run"), "source", "output", "in", "out", "dropped", "judge", "cost $", "created")
    for r in _client(ctx).curation_runs(name):
        rep, j = r["report"], r["report"].get("judge") or {}
        t.add_row(
            r["id"], r["source"], r["output"], f"{rep['rows_in']:,}", f"{rep['rows_out']:,}",
            f"{rep['dropped_total']:,}", "skipped" if j.get("skipped") else str(j.get("model")),
            f"{j.get('cost_usd', 0):.4f}", r["created_at"][:19],
        )  # fmt: skip
    _print_table(t, f"no curation runs of {name}")


@curation.command("report")
@click.argument("name")
@click.option("--run", "run_id", default="latest", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def curation_report(ctx: click.Context, name: str, run_id: str, as_json: bool) -> None:
    """The report of a run: rows in and out, dropped per rule, flags, judge scores and cost."""
    run = _client(ctx).curation_report(name, run_id)
    if as_json:
        click.echo(json.dumps(run, indent=2))
        return
    for line in _report_lines(run):
        click.echo(line)


@curation.command("dropped")
@click.argument("name")
@click.option("--run", "run_id", default="latest", show_default=True)
@click.option("--rule", default=None, help="Only rows this rule dropped (e.g. pii, near_duplicate).")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSONL.")
@click.pass_context
def curation_dropped(
    ctx: click.Context, name: str, run_id: str, rule: str | None, limit: int, as_json: bool
) -> None:
    """Rows a run dropped, with the rule and the reason."""
    it = _client(ctx).dropped_rows(name, run_id=run_id, rule=rule, page_size=min(limit, 1000))
    rows = [r for _, r in zip(range(limit), it, strict=False)]
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, ensure_ascii=False))
        return
    from rich.table import Table

    t = Table(_id_col("row_id"), "rule", "reason", "prompt", "response")
    for r in rows:
        p = r["prompt"] if isinstance(r["prompt"], str) else json.dumps(r["prompt"])
        t.add_row(r["row_id"], r["rule"], _clip(r["reason"], 50), _clip(p, 40), _clip(r["response"], 25))
    _print_table(t, "no dropped rows" + (f" for rule {rule!r}" if rule else ""))


@main.group()
def review() -> None:
    """The human review queue: list, approve, reject, edit, export, finish."""


@review.command("list")
@click.argument("name")
@click.option(
    "--status",
    default="pending",
    show_default=True,
    help="pending, approved, rejected, edited, excluded, included or all.",
)
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def review_list(ctx: click.Context, name: str, status: str, limit: int, as_json: bool) -> None:
    """Queued rows, closest to the judge threshold first, and the queue's progress."""
    c = _client(ctx)
    items = c.review_queue(name, status=None if status == "all" else status, limit=limit)
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    from rich.table import Table

    t = Table(_id_col("row_id"), "status", "score", "prompt", "response", "reviewer")
    for it in items:
        o = it["original"]
        p = o["prompt"] if isinstance(o["prompt"], str) else json.dumps(o["prompt"])
        score = "" if it["score"] is None else f"{it['score']:.2f}"
        t.add_row(
            it["row_id"], it["status"], score, _clip(p, 50), _clip(o["response"], 30), it["reviewer"] or ""
        )
    _print_table(t, "no rows" + (f" {status}" if status != "all" else "") + " in the review queue")
    pr = c.review_progress(name)
    click.echo(
        f"{pr['decided']:,} of {pr['total']:,} decided ({pr['fraction_done']:.0%}); {pr['pending']:,} pending",
        err=True,
    )


def _review_decision(ctx: click.Context, name: str, row_id: str, decision: str, by: str | None, note: str | None,
                     **text: Any) -> None:  # fmt: skip
    it = _client(ctx).review(name, row_id, decision, reviewer=by or _whoami(), note=note, **text)
    click.echo(f"{it['row_id']}  {it['status']}  by {it['reviewer']}")


@review.command("approve")
@click.argument("name")
@click.argument("row_id")
@click.option("--by", default=None, help="Reviewer (default: $USER).")
@click.option("--note", default=None)
@click.pass_context
def review_approve(ctx: click.Context, name: str, row_id: str, by: str | None, note: str | None) -> None:
    """Keep a queued row (tagged `reviewed`)."""
    _review_decision(ctx, name, row_id, "approve", by, note)


@review.command("reject")
@click.argument("name")
@click.argument("row_id")
@click.option("--by", default=None, help="Reviewer (default: $USER).")
@click.option("--note", default=None)
@click.pass_context
def review_reject(ctx: click.Context, name: str, row_id: str, by: str | None, note: str | None) -> None:
    """Remove a queued row from the version (it stays in the parent version and the queue's record)."""
    _review_decision(ctx, name, row_id, "reject", by, note)


@review.command("edit")
@click.argument("name")
@click.argument("row_id")
@click.option("--response", default=None, help="The corrected response.")
@click.option("--prompt", default=None, help="The corrected prompt.")
@click.option("--by", default=None, help="Reviewer (default: $USER).")
@click.option("--note", default=None)
@click.pass_context
def review_edit(ctx: click.Context, name: str, row_id: str, response: str | None, prompt: str | None,
                by: str | None, note: str | None) -> None:  # fmt: skip
    """Correct a queued row (the original stays in the queue's record)."""
    _review_decision(ctx, name, row_id, "edit", by, note, response=response, prompt=prompt)


@review.command("export")
@click.argument("name")
@click.argument("path")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default=None,
    help="Default: what PATH's suffix names.",
)
@click.option("--include-pending", is_flag=True)
@click.pass_context
def review_export(ctx: click.Context, name: str, path: str, fmt: str | None, include_pending: bool) -> None:
    """Write the decisions (with judge scores and the original and edited text) to PATH."""
    dest = _client(ctx).export_review(name, path, format=fmt, include_pending=include_pending)
    click.echo(f"wrote {dest}")


@review.command("finish")
@click.argument("name")
@click.option("--pending", type=click.Choice(["exclude", "include"]), default=None,
              help="Rows still pending: exclude or include (default: the policy the curation run recorded).")  # fmt: skip
@click.option("--no-freeze", is_flag=True, help="Close the review without freezing the version.")
@click.pass_context
def review_finish(ctx: click.Context, name: str, pending: str | None, no_freeze: bool) -> None:
    """Close the review of the active version and freeze it."""
    ds = _client(ctx).finish_review(name, pending=pending, freeze=not no_freeze, progress=True)
    click.echo(_version_line(ds))
    _warnings(ds)


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


# --- synthetic generation (issue 7) -------------------------------------------------------------------


def _money(v: Any) -> str:
    return "unknown" if v is None else f"${v:.4f}"


def _estimate_lines(e: dict[str, Any]) -> list[str]:
    lines = [
        f"estimate: {e['prompts']:,} prompts x {e['n_samples']} samples = {e['samples']:,} teacher calls"
    ]
    for role in ("teacher", "judge"):
        x = e.get(role)
        if x:
            hi = f" (at most {_money(x['cost_usd_max'])})" if x.get("cost_usd_max") is not None else ""
            lines.append(
                f"  {role} {x['model']}: {x['calls']:,} calls, ~{x['input_tokens']:,} in / ~{x['output_tokens']:,} "
                f"out tokens, {_money(x['cost_usd'])}{hi}"
            )
    total = f"  total {_money(e['cost_usd'])}"
    if e.get("max_cost_usd") is not None:
        total += f" (cap ${e['max_cost_usd']}: {'within' if e.get('within_cap') else 'over; the cap will stop it'})"
    lines.append(total)
    a = e.get("assumptions") or {}
    lines.append(
        f"  assuming {a.get('teacher_output_tokens')} output tokens an answer; duplicates and cached answers cost less"
    )
    return lines


def _generation_lines(run: dict[str, Any]) -> list[str]:
    r = run["report"]
    s = r["samples"]
    lines = [
        f"generation {run['id']} → {run['output']}: {r['prompts']:,} prompts, {s['requested']:,} samples asked, "
        f"{s['generated']:,} generated, {r['kept']:,} kept",
    ]
    if r["dropped"]:
        lines.append("  dropped: " + ", ".join(f"{k} {v:,}" for k, v in r["dropped"].items()))
    t = r["teacher"]
    lines.append(f"  teacher {t['model']}: {t['calls']:,} answers ({t['cached']:,} cached), {t['errors']:,} failed, "
                 f"{t['input_tokens'] + t['output_tokens']:,} tokens, {_money(t['cost_usd'])}")  # fmt: skip
    j = r.get("judge")
    if j:
        lines.append(f"  judge {j['model']}: {j['calls']:,} scores ({j['cached']:,} cached), {j['errors']:,} failed, "
                     f"mean {j.get('mean_score')}, {j['input_tokens'] + j['output_tokens']:,} tokens, "
                     f"{_money(j['cost_usd'])}")  # fmt: skip
    lines.append(
        f"  cost {_money(r['cost_usd'])} ({_money(r['cached_cost_usd'])} of it answered by the cache)"
    )
    if r.get("stopped_by"):
        lines.append(f"  stopped by the spending cap (${r['max_cost_usd']}) in the {r['stopped_in']} phase; the "
                     f"{r['prompts_generated']:,} prompts started were finished")  # fmt: skip
    return lines


@main.command("generate")
@click.argument("name")
@click.argument("prompts", type=click.Path(dir_okay=False))
@click.option("--teacher", required=True, help="Teacher model (provider/model or an alias).")
@click.option(
    "-n", "--samples", "n_samples", type=int, default=4, show_default=True, help="Answers per prompt."
)
@click.option("--judge", default=None, help="Judge model (default openai/gpt-4o-mini).")
@click.option(
    "--no-judge", is_flag=True, help="Keep every answer that passes the error and duplicate checks."
)
@click.option("--keep", default=None, help="best (default), all, or a number of answers per prompt.")
@click.option(
    "--threshold", type=float, default=None, help="Judge score below which answers are dropped (0-1)."
)
@click.option("--temperature", type=float, default=None)
@click.option("--max-tokens", type=int, default=None, help="Teacher max_tokens.")
@click.option("--system", default=None, help="System prompt for every seed.")
@click.option("--template", default=None, help="Prompt template with {column} variables.")
@click.option("--format", "fmt", type=click.Choice(["txt", "jsonl", "csv"]), default=None)
@click.option("--prompt-field", default=None, help="Field / column holding the prompt (default: prompt).")
@click.option("--max-cost", type=float, default=None, help="Spending cap in USD (teacher + judge).")
@click.option("--mode", type=click.Choice(["append", "replace"]), default=None,
              help="When NAME exists: append to its latest rows (default) or replace them, in its next version.")  # fmt: skip
@click.option("--no-dedupe", is_flag=True, help="Judge identical answers separately.")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False), help="A JSON config.")
@click.option("--estimate", "estimate_only", is_flag=True, help="Print the cost estimate and stop.")
@click.option("--no-wait", is_flag=True, help="Print the job id and return at once.")
@click.pass_context
def generate_cmd(
    ctx: click.Context,
    name: str,
    prompts: str,
    teacher: str,
    n_samples: int,
    judge: str | None,
    no_judge: bool,
    keep: str | None,
    threshold: float | None,
    temperature: float | None,
    max_tokens: int | None,
    system: str | None,
    template: str | None,
    fmt: str | None,
    prompt_field: str | None,
    max_cost: float | None,
    mode: str | None,
    no_dedupe: bool,
    config_path: str | None,
    estimate_only: bool,
    no_wait: bool,
) -> None:
    """Generate dataset NAME from the seed prompts in PROMPTS: the teacher answers each prompt N times, the
    judge keeps the best."""
    from opentracy.errors import InvalidInput

    config: dict[str, Any] = {}
    if config_path:
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            raise InvalidInput(f"cannot read the config: {e}", file=config_path) from None
    opts: dict[str, Any] = dict(
        keep=keep, threshold=threshold, temperature=temperature, max_tokens=max_tokens, system=system,
        prompt_template=template, format=fmt, prompt_field=prompt_field, max_cost_usd=max_cost, mode=mode,
        dedupe=False if no_dedupe else None,
    )  # fmt: skip
    c = _client(ctx)
    j: Any = False if no_judge else judge
    if estimate_only:
        est = c.estimate_generation(prompts, teacher, n_samples, j, config=config, **opts)
        for line in _estimate_lines(est):
            click.echo(line)
        return
    got = c.generate_dataset(name, prompts, teacher, n_samples, j, config=config, wait=not no_wait, progress=True,
                             **opts)  # fmt: skip
    if no_wait:
        click.echo(got.id)
        return
    click.echo(_version_line(got))
    for line in _generation_lines(c.generation_report(name)):
        click.echo(line)
    _warnings(got)


@main.group()
def generation() -> None:
    """Generation runs: reports and every sample with its outcome."""


@generation.command("runs")
@click.argument("name")
@click.pass_context
def generation_runs(ctx: click.Context, name: str) -> None:
    """Every generation run of NAME."""
    from rich.table import Table

    t = Table(
        _id_col("run"),
        "output",
        "prompts",
        "asked",
        "kept",
        "teacher",
        "judge",
        "cost $",
        "stopped",
        "created",
    )
    for r in _client(ctx).generation_runs(name):
        rep = r["report"]
        t.add_row(
            r["id"], r["output"], f"{rep['prompts']:,}", f"{rep['samples']['requested']:,}", f"{rep['kept']:,}",
            rep["teacher"]["model"], (rep.get("judge") or {}).get("model") or "-",
            f"{rep['cost_usd_priced']:.4f}", rep.get("stopped_by") or "", r["created_at"][:19],
        )  # fmt: skip
    _print_table(t, f"no generation runs of {name}")


@generation.command("report")
@click.argument("name")
@click.option("--run", "run_id", default="latest", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def generation_report(ctx: click.Context, name: str, run_id: str, as_json: bool) -> None:
    """The report of a run: samples asked, generated, kept, dropped per rule; tokens and cost."""
    run = _client(ctx).generation_report(name, run_id)
    if as_json:
        click.echo(json.dumps(run, indent=2))
        return
    for line in _generation_lines(run):
        click.echo(line)


@generation.command("samples")
@click.argument("name")
@click.option("--run", "run_id", default="latest", show_default=True)
@click.option("--outcome", type=click.Choice(["kept", "dropped"]), default=None)
@click.option(
    "--rule", default=None, help="e.g. below_threshold, not_selected, near_duplicate, teacher_error."
)
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSONL.")
@click.pass_context
def generation_samples(ctx: click.Context, name: str, run_id: str, outcome: str | None, rule: str | None, limit: int,
                       as_json: bool) -> None:  # fmt: skip
    """Samples of a run, with their outcome and reason."""
    it = _client(ctx).generation_samples(
        name, run_id=run_id, outcome=outcome, rule=rule, page_size=min(limit, 1000)
    )
    rows = [r for _, r in zip(range(limit), it, strict=False)]
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, ensure_ascii=False))
        return
    from rich.table import Table

    t = Table("line", "sample", "outcome", "reason", "score", "response")
    for r in rows:
        score = "" if r["score"] is None else f"{r['score']:.2f}"
        t.add_row(str(r["seed_line"]), str(r["sample"]), r["outcome"], _clip(r["reason"] or "", 50), score,
                  _clip(r["response"] or "", 40))  # fmt: skip
    _print_table(t, "no samples" + (" match" if (outcome or rule) else ""))


# --- clusters and the demo (issue 6) -----------------------------------------------------------------
# `clusters` commands talk to the server like the others; with --local they run the same API in this
# process on the data directory (OPENTRACY_HOME), no server needed (what `opentracy demo` suggests).


def _local_option(f: Any) -> Any:
    return click.option(
        "--local", is_flag=True, help="Work on the data directory in this process (no server needed)."
    )(f)


class _LocalClient:
    """A Distiller over the app in this process (the same routes and code as the server)."""

    def __init__(self) -> None:
        from starlette.testclient import TestClient

        from opentracy.client import Distiller
        from opentracy.config import Settings
        from opentracy.server import create_app

        settings = Settings.from_env()
        self._http = TestClient(
            create_app(settings=settings), base_url="http://local", raise_server_exceptions=False
        )
        if settings.api_key:
            self._http.headers["Authorization"] = f"Bearer {settings.api_key}"
        self._http.__enter__()  # runs the app's startup: the engine starts, resumes its jobs
        self.client = Distiller(base_url="http://local")
        self.client._http.close()
        self.client._http = self._http

    def close(self) -> None:
        self._http.__exit__(None, None, None)  # shutdown: the engine closes


def _cclient(ctx: click.Context, local: bool) -> Any:
    if not local:
        return _client(ctx)
    lc = _LocalClient()
    ctx.call_on_close(lc.close)
    return lc.client


@main.group()
def clusters() -> None:
    """Traces grouped by task: run a clustering, list and show clusters, rename, assign new traces, promote
    a cluster to a dataset."""


def _cluster_table(items: list[Any], limit: int | None = None, samples: int = 2) -> Any:
    from rich.table import Table

    t = Table(_id_col("cluster"), "name", "traces", "cohesion", "sample prompts", show_lines=samples > 1)
    for c in items[:limit] if limit else items:
        t.add_row(
            c.id,
            c.name,
            f"{c.size:,}",
            f"{c.cohesion:.2f}",
            "\n".join(_clip(x, 80) for x in _sample_texts(c)[:samples]),
        )
    return t


def _wide_console() -> Any:
    """Tables of prompts need room: a terminal's own width, else 150 columns (piped output)."""
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 150)


def _sample_texts(c: Any) -> list[str]:
    """Representative prompts of a client `Cluster` or a core `ClusterInfo`."""
    return list(c.samples) if hasattr(c, "samples") else [s.text for s in c.representatives]


def _run_line(r: Any) -> str:
    src = r.source or {}
    what = f"{r.n_items:,} traces" if src.get("kind") == "traces" else f"{r.n_items:,} items"
    f = src.get("filter") or {}
    flt = f"  filter {json.dumps(f)}" if f else ""
    return (
        f"{r.id}  {r.n_clusters} clusters over {what}, {r.outlier_share:.1%} unclustered, "
        f"named by {r.namer}{flt}"
    )


@clusters.command("run")
@_trace_filters
@click.option("--text", type=click.Choice(["last_user", "user", "all"]), default="last_user", show_default=True,
              help="What of each trace is clustered: its last user message, every user turn, or all messages.")  # fmt: skip
@click.option("--limit", type=int, default=None, help="At most this many traces (the oldest first).")
@click.option(
    "--config", "config_path", default=None, type=click.Path(dir_okay=False), help="A JSON ClusteringConfig."
)
@click.option("--embedder", default=None, help="minilm (default), static, st:<model> or provider/model.")
@click.option("--n-clusters", type=int, default=None, help="Force the number of clusters.")
@click.option("--target-cohesion", type=float, default=None, help="Finer clusters when higher (0-1).")
@click.option("--min-cluster-size", type=int, default=None)
@click.option("--assign-outliers", is_flag=True, help="Give every outlier its nearest cluster.")
@click.option(
    "--naming-model",
    default=None,
    help="Name clusters with this LLM (default: OPENTRACY_NAMING_MODEL, else keywords).",
)
@click.option("--fresh", is_flag=True, help="Do not match the previous run's clusters (new ids).")
@click.option("--no-wait", is_flag=True, help="Print the job id and return at once.")
@_local_option
@click.pass_context
def clusters_run(ctx: click.Context, text: str, limit: int | None, config_path: str | None, embedder: str | None,
                 n_clusters: int | None, target_cohesion: float | None, min_cluster_size: int | None,
                 assign_outliers: bool, naming_model: str | None, fresh: bool, no_wait: bool, local: bool,
                 **filters: Any) -> None:  # fmt: skip
    """Cluster the traces matching the filters (all traces by default) by their prompt, as a job."""
    from opentracy.errors import InvalidInput

    config: dict[str, Any] = {}
    if config_path:
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            raise InvalidInput(f"cannot read the config: {e}", file=config_path) from None
    for k, v in (("embedder", embedder), ("n_clusters", n_clusters), ("target_cohesion", target_cohesion),
                 ("min_cluster_size", min_cluster_size), ("naming_model", naming_model)):  # fmt: skip
        if v is not None:
            config[k] = v
    if assign_outliers:
        config["assign_outliers"] = True
    if fresh:
        config["previous_run"] = None
    c = _cclient(ctx, local)
    got = c.cluster_traces(config, text=text, limit=limit, wait=not no_wait, progress=None if not local else True,
                           **_filters_of(filters))  # fmt: skip
    if no_wait:
        click.echo(got.id)
        return
    click.echo(_run_line(got))
    _wide_console().print(_cluster_table(c.list_clusters(got.id), limit=20))


@clusters.command("runs")
@click.option("--limit", default=20, show_default=True)
@_local_option
@click.pass_context
def clusters_runs(ctx: click.Context, limit: int, local: bool) -> None:
    """Clustering runs, newest first."""
    for r in _cclient(ctx, local).clustering_runs(limit):
        click.echo(f"{r.created_at[:19]}  {_run_line(r)}")


@clusters.command("list")
@click.option("--run", "run_id", default=None, help="A run id (default: the latest run).")
@click.option("--limit", type=int, default=None, help="Show the largest N.")
@click.option("--samples", default=2, show_default=True, help="Sample prompts per cluster.")
@click.option("--json", "as_json", is_flag=True)
@_local_option
@click.pass_context
def clusters_list(ctx: click.Context, run_id: str | None, limit: int | None, samples: int, as_json: bool,
                  local: bool) -> None:  # fmt: skip
    """A run's clusters, largest first: size, cohesion, name, sample prompts."""
    c = _cclient(ctx, local)
    items = c.list_clusters(run_id)
    if as_json:
        click.echo(
            json.dumps([x.raw for x in items[:limit] if limit] if limit else [x.raw for x in items], indent=2)
        )
        return
    click.echo(_run_line(c.clustering_run(run_id or "latest")), err=True)
    _wide_console().print(_cluster_table(items, limit=limit, samples=samples))


@clusters.command("show")
@click.argument("cluster_id")
@click.option("--run", "run_id", default=None)
@click.option("--members", "n_members", default=10, show_default=True, help="Members to list, closest first.")
@click.option("--json", "as_json", is_flag=True)
@_local_option
@click.pass_context
def clusters_show(ctx: click.Context, cluster_id: str, run_id: str | None, n_members: int, as_json: bool,
                  local: bool) -> None:  # fmt: skip
    """A cluster: name, description, namer, size, cohesion, keywords, samples and members."""
    c = _cclient(ctx, local)
    cl = c.get_cluster(cluster_id, run_id)
    members = c.cluster_members(cluster_id, run_id=cl.run_id, limit=n_members) if n_members else []
    if as_json:
        click.echo(json.dumps({**cl.raw, "members": members}, indent=2, default=str))
        return
    click.echo(
        f"{cl.id}  {cl.name}  ({cl.size:,} traces, {cl.share:.1%} of run {cl.run_id}, cohesion {cl.cohesion:.3f})"
    )
    click.echo(f"  {cl.description}")
    click.echo(f"  named by {cl.namer}; keywords: {', '.join(cl.keywords)}")
    click.echo("  representative:")
    for x in cl.samples:
        click.echo(f"    - {_clip(x, 100)}")
    if cl.diverse:
        click.echo("  diverse:")
        for x in cl.diverse:
            click.echo(f"    - {_clip(x, 100)}")
    if members:
        click.echo(f"  members (closest first, {len(members)} of {cl.size:,}):")
        for m in members:
            click.echo(f"    {m['item_id']}  {m['similarity']:.3f}  {_clip(m['text'], 80)}")


@clusters.command("rename")
@click.argument("cluster_id")
@click.argument("name")
@click.option("--description", default=None)
@_local_option
@click.pass_context
def clusters_rename(
    ctx: click.Context, cluster_id: str, name: str, description: str | None, local: bool
) -> None:
    """Rename a cluster (kept across re-runs)."""
    cl = _cclient(ctx, local).rename_cluster(cluster_id, name, description)
    click.echo(f"{cl.id}  {cl.name}")


@clusters.command("assign")
@click.option("--run", "run_id", default="latest", show_default=True)
@click.option("--limit", default=10_000, show_default=True, help="Traces per call (repeated until done).")
@_local_option
@click.pass_context
def clusters_assign(ctx: click.Context, run_id: str, limit: int, local: bool) -> None:
    """Put traces stored since a run (matching its filter) into its clusters, without re-running it."""
    c = _cclient(ctx, local)
    total = {"new": 0, "assigned": 0, "outliers": 0, "no_text": 0}
    while True:
        r = c.assign_traces(run_id, limit=limit)
        total["assigned"] += r["assigned"]
        total["outliers"] += r["outliers"]
        total["no_text"] = max(total["no_text"], r["skipped_no_text"])
        if r["remaining"] <= 0 or r["assigned"] + r["outliers"] == 0:
            break
        click.echo(f"{total['assigned'] + total['outliers']:,} done, {r['remaining']:,} to go", err=True)
    click.echo(
        f"{r['run_id']}: {total['assigned']:,} traces assigned to clusters, {total['outliers']:,} outliers"
        + (f", {total['no_text']:,} without prompt text left out" if total["no_text"] else "")
    )


@clusters.command("promote")
@click.argument("cluster_id")
@click.argument("dataset")
@click.option("--rows", "mode", type=click.Choice(["all", "sample", "closest"]), default=None,
              help="all (default), sample (N at random) or closest (the N nearest the centre).")  # fmt: skip
@click.option("-n", "--n", "n", type=int, default=None, help="How many rows, with --rows sample or closest.")
@click.option("--trace", "trace_ids", multiple=True, help="Promote these traces of the cluster (repeat).")
@click.option("--run", "run_id", default=None, help="A run id (default: the cluster's latest run).")
@click.option("--seed", default=0, show_default=True, help="Seed of --rows sample.")
@click.option("--description", default="")
@_local_option
@click.pass_context
def clusters_promote(ctx: click.Context, cluster_id: str, dataset: str, mode: str | None, n: int | None,
                     trace_ids: tuple[str, ...], run_id: str | None, seed: int, description: str,
                     local: bool) -> None:  # fmt: skip
    """Make DATASET from a cluster's traces (or append them to its active version), with lineage."""
    if trace_ids and mode:
        fail("give --rows or --trace, not both", 2)
    rows: Any = list(trace_ids) if trace_ids else (mode or ("closest" if n else "all"))
    ds = _cclient(ctx, local).promote_cluster(
        cluster_id, dataset, rows, n=n, run_id=run_id, seed=seed, description=description
    )
    click.echo(_version_line(ds))
    step = next((p for p in reversed(ds.provenance) if p.get("kind") == "cluster"), {})
    skipped = step.get("skipped_errors", 0) + step.get("skipped_no_text", 0)
    click.echo(
        f"{step.get('added', 0):,} rows added from {step.get('cluster_id')} ({step.get('cluster_name')})"
        + (f"; {step['already_present']:,} already there" if step.get("already_present") else "")
        + (f"; {skipped:,} traces without an answer left out" if skipped else "")
    )
    _warnings(ds)


@main.command("demo")
@click.option("--split", type=click.Choice(["test", "train", "all"]), default="test", show_default=True,
              help="Banking77 split: test (3,080 messages), train (10,003) or all (13,083).")  # fmt: skip
@click.option("--limit", type=int, default=None, help="Use N messages spread over the split (faster).")
@click.option("--top", default=15, show_default=True, help="Clusters to show.")
@click.option("--naming-model", default=None, help="Name clusters with this LLM instead of keywords.")
def demo(split: str, limit: int | None, top: int, naming_model: str | None) -> None:
    """The fast path on shipped data, no API key, no server: Banking77 → traces → named clusters."""
    import time

    from opentracy.clustering.demo import run_demo, slug
    from opentracy.config import Settings
    from opentracy.engine import Engine

    t0 = time.perf_counter()
    err = _console(stderr=True)

    def say(m: str) -> None:
        err.print(f"[dim]{m}[/dim]", soft_wrap=True)

    last = [-1.0]

    def progress(f: float, m: str) -> None:
        if f - last[0] >= 0.1 or f >= 1.0:
            last[0] = f
            say(f"  {f:4.0%}  {m}")

    with Engine(Settings.from_env()) as engine:
        r = run_demo(engine, split=split, limit=limit, naming_model=naming_model, say=say, progress=progress)
    run, items = r.run, r.clusters
    con = _wide_console()
    con.print(_cluster_table(items, limit=top))
    more = f"; {len(items) - top} more: opentracy clusters list --local" if len(items) > top else ""
    con.print(
        f"{run.n_clusters} clusters over {run.n_items:,} traces, {run.outlier_share:.1%} left unclustered, "
        f"named by {run.namer}{more}",
        soft_wrap=True,
    )
    con.print(
        f"done in {time.perf_counter() - t0:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in r.seconds.items() if k != 'total')})",
        soft_wrap=True,
    )
    if items:
        pick = items[0]
        con.print("\nPromote a cluster to a dataset (its 50 traces closest to the centre):", soft_wrap=True)
        click.echo(f"  opentracy clusters promote {pick.id} {slug(pick.name)} --rows closest -n 50 --local")


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))
