"""The command line against a real server: every datasets/jobs command, tables, --json, one-line errors."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from click.testing import CliRunner, Result
from conftest import free_port, spec_rows

from opentracy.cli import main
from opentracy.client import Distiller
from opentracy.errors import InvalidInput

# 80 columns: what a pipe or a CI log gets. Ids in tables must survive it whole.
CLEAN_ENV = {"OPENTRACY_API_KEY": None, "OPENTRACY_URL": None, "COLUMNS": "80"}


def run(url: str, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["--url", url, *args], input=input, env=CLEAN_ENV)


def ok(url: str, *args: str) -> Result:
    r = run(url, *args)
    assert r.exit_code == 0, (args, r.output, r.exception)
    return r


def assert_one_line_error(r: Result, *fragments: str) -> str:
    """A mistake: exit code not 0, one `error:` line on stderr, no traceback anywhere."""
    assert r.exit_code != 0, r.output
    assert isinstance(r.exception, SystemExit), repr(r.exception)  # not an uncaught exception
    assert "Traceback" not in r.output and "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    errs = [x for x in lines if x.startswith("error:")]
    assert len(errs) == 1, r.stderr
    assert lines[-1] == errs[0], r.stderr
    assert "error:" not in r.stdout
    for f in fragments:
        assert f in errs[0], (f, errs[0])
    return errs[0]


@pytest.fixture
def tickets(server, write_jsonl):
    path = write_jsonl(spec_rows(300), "tickets.jsonl")
    r = ok(server.url, "datasets", "upload", "tickets", str(path))
    # stdout carries the result only (progress bars and warnings go to stderr)
    assert r.stdout == "tickets-v1  active  300 rows\n"
    warnings = [x for x in r.stderr.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1, r.stderr  # 300 rows: enough to distill, but not curated
    assert "curation" in warnings[0] and "before training" in warnings[0]  # one line per warning
    return "tickets"


def test_upload_list_show_rows(server, tickets, write_jsonl):
    r = ok(server.url, "datasets", "list")
    assert "tickets" in r.stdout and "tickets-v1" in r.stdout and "300" in r.stdout and "active" in r.stdout
    assert json.loads(ok(server.url, "datasets", "list", "-q", "nomatch", "--json").stdout) == []
    items = json.loads(ok(server.url, "datasets", "list", "-q", "ick", "--json").stdout)
    assert items == [
        {
            "name": "tickets",
            "version": 1,
            "label": "tickets-v1",
            "status": "active",
            "row_count": 300,
            "content_hash": None,
            "warnings": items[0]["warnings"],
        }
    ]
    assert any("200 rows" in w or "curation" in w for w in items[0]["warnings"])

    r = ok(server.url, "datasets", "show", "tickets")
    assert "tickets-v1" in r.stdout and "upload" in r.stdout and "tickets.jsonl" in r.stdout
    shown = json.loads(ok(server.url, "datasets", "show", "tickets", "--json").stdout)
    assert shown["label"] == "tickets-v1" and shown["row_count"] == 300
    assert [p["kind"] for p in shown["provenance"]] == ["upload"]

    r = ok(server.url, "datasets", "rows", "tickets", "--limit", "5")
    assert "r_0000000" in r.stdout and "r_0000004" in r.stdout and "r_0000005" not in r.stdout
    assert "row_id" in r.stdout and "prompt" in r.stdout  # a table with a header
    r = ok(server.url, "datasets", "rows", "tickets", "--limit", "5", "--json")
    assert [json.loads(x) for x in r.stdout.splitlines()] == spec_rows(5)
    # a page at a time: the next page's cursor goes to stderr
    more = [x for x in r.stderr.splitlines() if x.startswith("more rows: --cursor ")]
    assert len(more) == 1, r.stderr
    r = ok(
        server.url, "datasets", "rows", "tickets", "--limit", "5", "--json", "--cursor", more[0].split()[-1]
    )
    assert [json.loads(x)["row_id"] for x in r.stdout.splitlines()] == [f"r_{i:07d}" for i in range(5, 10)]
    r = ok(server.url, "datasets", "rows", "tickets", "--all", "--json")
    assert [json.loads(x) for x in r.stdout.splitlines()] == spec_rows(300) and "more rows" not in r.stderr
    r = ok(server.url, "datasets", "rows", "tickets", "--all", "--json", "--where", "cluster_id=34")  # paged
    assert [json.loads(x) for x in r.stdout.splitlines()] == spec_rows(300) and "more rows" not in r.stderr
    r = ok(server.url, "datasets", "rows", "tickets", "--limit", "1500", "--json")
    assert len(r.stdout.splitlines()) == 300 and "more rows" not in r.stderr
    r = ok(server.url, "datasets", "rows", "tickets", "--limit", "299")
    assert "more rows: --cursor" in r.stderr and "r_0000298" in r.stdout and "r_0000299" not in r.stdout
    assert r.stderr.splitlines()[0] == "299 of 300 rows"  # a table says how many there are in all
    cursor = r.stderr.split()[-1]
    r = ok(server.url, "datasets", "rows", "tickets", "--cursor", cursor, "-q", "question")
    assert r.stderr.splitlines() == ["1 more of 300 rows matching"] and "r_0000299" in r.stdout
    assert_one_line_error(run(server.url, "datasets", "rows", "tickets", "--limit", "0"), "--limit")
    lines = ok(
        server.url,
        "datasets",
        "rows",
        "tickets",
        "--json",
        "--limit",
        "1000",
        "-q",
        "question 12",
        "--where",
        "cluster_id=34",
        "--tag",
        "ticket_classifier",
    ).stdout.splitlines()
    assert [json.loads(x)["row_id"] for x in lines] == ["r_0000012", *[f"r_{i:07d}" for i in range(120, 130)]]
    # more rows than one page
    lines = ok(
        server.url, "datasets", "rows", "tickets", "--json", "--limit", "250", "--version", "v1"
    ).stdout.splitlines()
    assert [json.loads(x)["row_id"] for x in lines] == [f"r_{i:07d}" for i in range(250)]
    r = run(server.url, "datasets", "rows", "tickets", "--where", "no-equals-sign")
    assert_one_line_error(r, "FIELD=VALUE")
    # a second upload appends to the active version
    more = [r | {"row_id": f"m_{i}"} for i, r in enumerate(spec_rows(5))]
    r = ok(server.url, "datasets", "upload", "tickets", str(write_jsonl(more, "more.jsonl")))
    assert r.stdout == "tickets-v1  active  305 rows\n"
    # --no-wait prints the job id alone
    more = [r | {"row_id": f"w_{i}"} for i, r in enumerate(spec_rows(5))]
    r = ok(server.url, "datasets", "upload", "tickets", str(write_jsonl(more, "wait.jsonl")), "--no-wait")
    job_id = r.stdout.strip()
    assert job_id.startswith("job_") and "\n" not in job_id
    with Distiller(base_url=server.url, progress=False) as c:
        assert c.wait_job(job_id, timeout=30).status == "succeeded"
        assert c.get_dataset("tickets").row_count == 310


def test_version_commands_and_export(server, tickets, tmp_path):
    r = ok(server.url, "datasets", "freeze", "tickets")
    assert "tickets-v1  frozen  300 rows" in r.stdout and "sha256:" in r.stdout
    shown = ok(server.url, "datasets", "show", "tickets").stdout
    assert re.search(
        r"tickets-v1 created \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, frozen \d{4}-\d\d-\d\d ", shown
    ), shown
    times = json.loads(ok(server.url, "datasets", "show", "tickets", "--json").stdout)
    assert times["created_at"] <= times["frozen_at"]
    r = ok(server.url, "datasets", "new-version", "tickets")
    assert "tickets-v2  active  300 rows" in r.stdout
    shown = ok(server.url, "datasets", "show", "tickets").stdout
    assert re.search(r"tickets-v2 created \d{4}-", shown) and "frozen 2" not in shown, shown
    with Distiller(base_url=server.url, progress=False) as c:
        c.add_rows("tickets", [{"row_id": "new1", "prompt": "p", "response": "r"}])
        c.delete_rows("tickets", ["r_0000000"])
        c.update_row("tickets", "r_0000001", response="changed")
    r = ok(server.url, "datasets", "diff", "tickets")
    assert "tickets-v1 → tickets-v2: +1 added, -1 removed, ~1 changed, 298 unchanged" in r.stdout
    assert "+ new1" in r.stdout and "- r_0000000" in r.stdout and "~ r_0000001" in r.stdout
    d = json.loads(ok(server.url, "datasets", "diff", "tickets", "v2", "v1", "--json").stdout)
    assert (d["a"], d["b"], d["added"], d["removed"], d["changed"]) == ("tickets-v2", "tickets-v1", 1, 1, 1)

    out = tmp_path / "v1.jsonl"
    r = ok(server.url, "datasets", "export", "tickets", str(out), "--version", "1")
    assert str(out) in r.stdout
    assert [json.loads(x) for x in out.read_text().splitlines()] == spec_rows(300)
    ok(server.url, "datasets", "export", "tickets", str(tmp_path / "v2.csv"), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "v2.csv").read_text())))
    assert len(rows) == 300 and rows[0]["row_id"] == "r_0000001" and rows[0]["response"] == "changed"
    ok(server.url, "datasets", "export", "tickets", str(tmp_path / "v2.chat.jsonl"), "--format", "openai")
    first = json.loads((tmp_path / "v2.chat.jsonl").read_text().splitlines()[0])
    assert first["messages"][-1] == {"role": "assistant", "content": "changed"}
    ok(server.url, "datasets", "export", "tickets", str(tmp_path / "v2.parquet"), "--format", "parquet")
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "v2.parquet").num_rows == 300
    ok(server.url, "datasets", "export", "tickets", str(tmp_path / "by-suffix.parquet"))  # no --format
    assert pq.read_table(tmp_path / "by-suffix.parquet").num_rows == 300
    r = run(server.url, "datasets", "export", "tickets", str(tmp_path / "v2.txt"))
    assert_one_line_error(r, "cannot tell the export format from the name 'v2.txt'")
    import datasets as hf_datasets

    hf = tmp_path / "v1-hf"
    r = ok(server.url, "datasets", "export", "tickets", str(hf), "--format", "hf", "--version", "1",
           "--test-size", "0.1", "--seed", "7")  # fmt: skip
    assert r.stdout.strip() == f"wrote {hf} (train 270, validation 30)"
    saved = hf_datasets.load_from_disk(str(hf))
    assert set(saved) == {"train", "validation"} and saved["validation"].num_rows == 30
    again = tmp_path / "again"
    ok(server.url, "datasets", "export", "tickets", str(again), "--format", "hf", "--version", "1",
       "--test-size", "0.1", "--seed", "7")  # fmt: skip
    assert hf_datasets.load_from_disk(str(again))["validation"]["row_id"] == saved["validation"]["row_id"]
    r = ok(server.url, "datasets", "export", "tickets", str(tmp_path / "whole"), "--format", "hf")
    assert r.stdout.strip() == f"wrote {tmp_path / 'whole'} (rows 300)"
    assert hf_datasets.load_from_disk(str(tmp_path / "whole")).num_rows == 300
    assert_one_line_error(
        run(server.url, "datasets", "export", "tickets", str(hf), "--format", "hf"), "exists", "empty folder"
    )
    assert_one_line_error(
        run(
            server.url,
            "datasets",
            "export",
            "tickets",
            str(tmp_path / "x.csv"),
            "--format",
            "csv",
            "--test-size",
            "5",
        ),
        "--test-size goes with --format hf",
    )
    for bad, says in (("0", "test_size must be"), ("300", "from 1 to 299"), ("1.5", "whole number")):
        args = [
            "datasets",
            "export",
            "tickets",
            str(tmp_path / f"hf-{bad}"),
            "--format",
            "hf",
            "--test-size",
            bad,
        ]
        assert_one_line_error(run(server.url, *args), says)

    r = ok(server.url, "datasets", "delete", "tickets", "--confirm", "tickets")
    assert "deleted tickets" in r.stdout
    assert_one_line_error(run(server.url, "datasets", "show", "tickets"), "tickets")
    assert json.loads(ok(server.url, "datasets", "list", "--json").stdout) == []


def test_jobs_list_and_show(server, tickets, write_jsonl):
    with Distiller(base_url=server.url, progress=False) as c:
        jobs = c._json("GET", "/v1/jobs")["items"]
    assert len(jobs) == 1
    job_id = jobs[0]["id"]
    r = ok(server.url, "jobs", "list")
    assert job_id in r.stdout and "dataset.upload" in r.stdout and "succeeded" in r.stdout
    assert "message" not in r.stdout  # 80 columns: no room for it without squeezing the ids
    r = ok(server.url, "jobs", "list", "--status", "failed")
    assert job_id not in r.stdout
    r = ok(server.url, "jobs", "show", job_id)
    first, times, *logs = r.stdout.splitlines()
    assert first.startswith(f"{job_id}  dataset.upload  succeeded  100%")
    assert re.fullmatch(
        r"  created [-\d: ]+ UTC, started [-\d: ]+ UTC, ended [-\d: ]+ UTC \(\d+\.\d s\)", times
    ), times
    assert any("300 rows" in line for line in logs) and "succeeded" in logs[-1]
    record = json.loads(ok(server.url, "jobs", "show", job_id, "--json").stdout)
    assert record["id"] == job_id and record["result"]["rows_added"] == 300 and record["error"] is None
    assert record["created_at"] <= record["started_at"] <= record["finished_at"]
    with Distiller(base_url=server.url, progress=False) as c:  # a job that fails shows why
        bad = c.upload_dataset(
            "tickets", write_jsonl([{"prompt": "x", "response": 5}], "bad.jsonl"), wait=False
        )
        assert c.get_job(bad.id, wait=10).status == "failed"
        assert bad.refresh().finished_at >= bad.refresh().created_at
    r = ok(server.url, "jobs", "show", bad.id)
    err = [x for x in r.stdout.splitlines() if x.startswith("  error")]
    assert err and "invalid_input" in err[0] and "bad.jsonl, line 1" in err[0], r.stdout
    assert_one_line_error(run(server.url, "jobs", "show", "job_nope"), "job_nope")
    # newest first, filtered by kind and status, a page at a time
    r = ok(server.url, "jobs", "list", "--limit", "1")
    assert bad.id in r.stdout and job_id not in r.stdout and "more jobs: --offset 1" in r.stderr
    r = ok(server.url, "jobs", "list", "--limit", "1", "--offset", "1")
    assert job_id in r.stdout and bad.id not in r.stdout
    assert bad.id not in ok(server.url, "jobs", "list", "--status", "succeeded").stdout
    assert "dataset.upload" not in ok(server.url, "jobs", "list", "--kind", "dataset.freeze").stdout
    r = CliRunner().invoke(main, ["--url", server.url, "jobs", "list"], env={**CLEAN_ENV, "COLUMNS": "140"})
    assert "bad.jsonl, line 1" in r.stdout  # room for the message
    assert run(server.url, "jobs", "list", "--status", "done").exit_code == 2
    with Distiller(base_url=server.url, progress=False) as c:
        assert [j.id for j in c.list_jobs()] == [bad.id, job_id]
        assert [j.id for j in c.list_jobs(status="failed")] == [bad.id]
        assert [j.id for j in c.list_jobs(limit=1, offset=1)] == [job_id]
        with pytest.raises(InvalidInput, match="no job status 'done'"):
            c.list_jobs(status="done")
    r = ok(server.url, "jobs", "cancel", job_id)  # a finished job stays as it ended
    assert r.stdout.strip() == f"{job_id}  succeeded"


def test_api_key_option(tmp_path, db_url, write_jsonl):
    from conftest import ServerThread

    from opentracy.config import Settings
    from opentracy.engine import Engine

    eng = Engine(Settings.from_env(home=tmp_path / "k", database_url=db_url, api_key="s3cret")).start()
    try:
        with ServerThread(eng) as srv:
            assert_one_line_error(run(srv.url, "datasets", "list"), "API key")
            assert_one_line_error(run(srv.url, "--api-key", "nope", "datasets", "list"), "API key")
            path = str(write_jsonl(spec_rows(3)))
            ok(srv.url, "--api-key", "s3cret", "datasets", "upload", "keyed", path)
            r = CliRunner().invoke(
                main,
                ["--url", srv.url, "datasets", "list", "--json"],
                env={**CLEAN_ENV, "OPENTRACY_API_KEY": "s3cret"},
            )
            assert r.exit_code == 0, r.output
            assert [d["name"] for d in json.loads(r.stdout)] == ["keyed"]
    finally:
        eng.close()


def test_upload_skip_bad_lists_each_skipped_line(server, write_jsonl):
    bad = write_jsonl(
        [*spec_rows(2), '{"prompt": "x", "response": 5}', *spec_rows(4)[2:], "{oops"], "bad.jsonl"
    )
    r = ok(server.url, "datasets", "upload", "lenient", str(bad), "--skip-bad")
    assert r.stdout == "lenient-v1  active  4 rows\n"
    skipped = [x for x in r.stderr.splitlines() if x.startswith("skipped")]
    assert skipped[0].startswith("skipped line 3: ") and "'response' must be a string" in skipped[0]
    assert skipped[1].startswith("skipped line 6: ") and "malformed JSON" in skipped[1]
    assert skipped[2] == "skipped 2 bad record(s)"


def test_mistakes_are_one_line_errors(server, tickets, write_jsonl):
    assert_one_line_error(run(server.url, "datasets", "show", "nope"), "error: no dataset named 'nope'")
    assert_one_line_error(run(server.url, "datasets", "rows", "nope"), "nope")
    assert_one_line_error(run(server.url, "datasets", "show", "tickets", "--version", "9"), "tickets-v9")
    assert_one_line_error(run(server.url, "datasets", "show", "tickets", "--version", "vX"), "vX")
    # a bad file names the file and the line, and changes nothing
    bad = write_jsonl([*spec_rows(2), '{"prompt": "x", "response": 5}'], "bad.jsonl")
    assert_one_line_error(run(server.url, "datasets", "upload", "tickets", str(bad)), "bad.jsonl", "line 3")
    broken = write_jsonl([*spec_rows(4), "{oops"], "broken.jsonl")
    assert_one_line_error(
        run(server.url, "datasets", "upload", "tickets", str(broken)), "broken.jsonl", "line 5"
    )
    assert_one_line_error(
        run(server.url, "datasets", "upload", "tickets", "./no/such/file.jsonl"), "no such file"
    )
    assert_one_line_error(run(server.url, "datasets", "upload", "bad name", str(bad)), "bad name")
    # writes that clash with the versioning rules
    ok(server.url, "datasets", "freeze", "tickets")
    assert_one_line_error(
        run(server.url, "datasets", "freeze", "tickets", "--version", "1"), "tickets-v1", "frozen"
    )
    assert_one_line_error(
        run(server.url, "datasets", "freeze", "tickets"), "no active version", "new-version"
    )
    ok(server.url, "datasets", "new-version", "tickets")
    assert_one_line_error(run(server.url, "datasets", "new-version", "tickets"), "tickets-v2", "active")
    assert_one_line_error(run(server.url, "datasets", "diff", "tickets", "9"), "tickets-v9")
    assert_one_line_error(run(server.url, "datasets", "export", "nope", "out.jsonl"), "nope")
    shown = json.loads(ok(server.url, "datasets", "show", "tickets", "--json").stdout)
    assert shown["row_count"] == 300 and shown["label"] == "tickets-v2"


def test_unreachable_server(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    for args in (
        ("datasets", "list"),
        ("datasets", "show", "x"),
        ("jobs", "list"),
        ("datasets", "export", "x", str(tmp_path / "x.jsonl")),
    ):
        assert_one_line_error(run(url, *args), url)


def test_delete_needs_confirmation(server, tickets):
    r = run(server.url, "datasets", "delete", "tickets")  # stdin is not a terminal here
    assert_one_line_error(r, "--confirm tickets")
    assert_one_line_error(run(server.url, "datasets", "delete", "tickets", "--confirm", "other"), "confirm")
    assert json.loads(ok(server.url, "datasets", "show", "tickets", "--json").stdout)["row_count"] == 300


@pytest.fixture
def fake_uvicorn(monkeypatch, tmp_path):
    """Record what `serve` would run instead of serving (a bug must fail the test, not hang it)."""
    import uvicorn

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    monkeypatch.setenv("OPENTRACY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OPENTRACY_DATABASE_URL", raising=False)
    monkeypatch.delenv("OPENTRACY_API_KEY", raising=False)
    return calls


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com"])
def test_serve_refuses_a_public_host_without_an_api_key(fake_uvicorn, host):
    r = CliRunner().invoke(main, ["serve", "--host", host], env={"OPENTRACY_API_KEY": None})
    line = assert_one_line_error(r, "OPENTRACY_API_KEY")
    assert host in line
    assert fake_uvicorn == []


def test_serve_on_loopback_or_with_a_key(fake_uvicorn):
    r = CliRunner().invoke(main, ["serve", "--port", "8123"], env={"OPENTRACY_API_KEY": None})
    assert r.exit_code == 0, r.output
    assert fake_uvicorn[-1]["host"] == "127.0.0.1" and fake_uvicorn[-1]["port"] == 8123
    r = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0"], env={"OPENTRACY_API_KEY": "s3cret"})
    assert r.exit_code == 0, r.output
    assert fake_uvicorn[-1]["host"] == "0.0.0.0"


def test_an_empty_list_says_so_on_stderr(server, tickets):
    # It printed an empty table frame, which says nothing.
    for args, said in [
        (
            ("datasets", "list", "-q", "nothing-like-this"),
            "no datasets whose name contains 'nothing-like-this'",
        ),
        (("datasets", "rows", "tickets", "-q", "no such words"), "no rows match"),
        (("jobs", "list", "--kind", "no.such.kind"), "no jobs match"),
        (("aliases", "list"), "no aliases; create one: opentracy aliases set NAME TARGET"),
        (("traces", "list"), "no traces yet"),
    ]:
        r = ok(server.url, *args)
        assert r.stdout == "" and r.stderr.strip() == said, (args, r.stdout, r.stderr)
    r = ok(server.url, "datasets", "list")
    assert "tickets" in r.stdout and r.stderr == ""


def test_show_prints_an_uploads_options_as_fields(server, tmp_path):
    # They printed as a Python dict: options={'prompt_field': 'q', ...}.
    (tmp_path / "t.csv").write_text("q,a,src\nhi,yo,web\n")
    ok(server.url, "datasets", "upload", "m", str(tmp_path / "t.csv"), "--prompt-field", "q",
       "--response-field", "a", "--metadata-field", "src")  # fmt: skip
    step = [x for x in ok(server.url, "datasets", "show", "m").stdout.splitlines() if "  upload  " in x]
    assert len(step) == 1 and "{" not in step[0], step
    assert 'prompt_field=q, response_field=a, metadata_fields=["src"]' in step[0] and "file=t.csv" in step[0]
