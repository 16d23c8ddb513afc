"""The Distiller client against a real server: the spec's sample verbatim, versions, rows, typed errors."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import ServerThread, free_port, spec_rows

from opentracy import errors
from opentracy.client import Dataset, Distiller, Job, Row, ServerUnreachable
from opentracy.config import Settings
from opentracy.engine import Engine

# The upload sample of spec/datasets.md, character for character: it is the API contract.
SPEC_SAMPLE = """from opentracy import Distiller

d = Distiller(base_url="http://localhost:8000")
dataset = d.upload_dataset(
    name="invoice-extraction-v1",
    path="./data/invoices.jsonl",
    # jsonl rows: {"prompt": "...", "response": "...", "metadata": {...}}
)
"""
SPEC_FILE = Path(__file__).resolve().parents[2] / "shared" / "spec" / "datasets.md"


class FixedPortServer(ServerThread):
    """ServerThread on a chosen port (the spec's sample names http://localhost:8000)."""

    def __init__(self, engine: Engine, port: int) -> None:
        import uvicorn

        from opentracy.server import create_app

        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            create_app(engine), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)


def _port_8000_problem() -> str | None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", 8000))
        except OSError as e:
            return f"127.0.0.1:8000 is in use ({e})"
    try:
        with socket.create_connection(("::1", 8000), timeout=0.5):
            return "something listens on [::1]:8000, where `localhost` may resolve"
    except OSError:
        return None


def test_spec_upload_sample_runs_verbatim(engine, tmp_path, monkeypatch):
    if SPEC_FILE.exists():  # keep the copy above honest where the spec is at hand
        assert SPEC_SAMPLE in SPEC_FILE.read_text(encoding="utf-8")
    problem = _port_8000_problem()
    if problem:
        pytest.fail(f"this test runs the spec's sample, which talks to http://localhost:8000, but {problem}")
    rows = [
        {"prompt": r["prompt"], "response": r["response"], "metadata": r["metadata"]} for r in spec_rows(25)
    ]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "invoices.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENTRACY_API_KEY", raising=False)
    ns: dict = {}
    with FixedPortServer(engine, 8000):
        exec(compile(SPEC_SAMPLE, "spec/datasets.md", "exec"), ns)
        try:
            dataset = ns["dataset"]
            assert isinstance(ns["d"], Distiller)
            assert isinstance(dataset, Dataset)
            assert dataset.name == "invoice-extraction-v1"
            assert dataset.version == 1 and dataset.label == "invoice-extraction-v1-v1"
            assert dataset.status == "active"
            assert dataset.row_count == 25
            assert dataset.content_hash is None  # an active version has no hash until frozen
            assert {w.code for w in dataset.warnings} == {"too_few_rows", "not_curated"}
            assert all(isinstance(w.message, str) and w.message for w in dataset.warnings)
            got = list(dataset.rows())
            assert all(isinstance(r, Row) for r in got)
            assert [(r.prompt, r.response, r.metadata) for r in got] == [
                (r["prompt"], r["response"], r["metadata"]) for r in rows
            ]
            assert len({r.row_id for r in got}) == 25 and all(r.row_id.startswith("r_") for r in got)
            assert got[0] == Row(got[0].row_id, rows[0]["prompt"], rows[0]["response"], rows[0]["metadata"])
            step = next(p for p in dataset.provenance if p["kind"] == "upload")
            assert step["file"] == "invoices.jsonl"
            # freezing gives the content hash
            frozen = dataset.freeze()
            assert frozen.status == "frozen" and frozen.content_hash and frozen.row_count == 25
        finally:
            ns["d"].close()
    assert engine.datasets.version("invoice-extraction-v1").row_count == 25


@pytest.fixture
def tickets(client, write_jsonl):
    return client.upload_dataset("tickets", write_jsonl(spec_rows(120), "tickets.jsonl"))


def test_get_and_list_datasets(client, tickets):
    assert isinstance(tickets, Dataset) and tickets.row_count == 120
    for ref in (None, 1, "1", "v1", "tickets-v1", "latest"):
        ds = client.get_dataset("tickets", ref)
        assert (ds.name, ds.version, ds.label, ds.row_count) == ("tickets", 1, "tickets-v1", 120), ref
    client.freeze("tickets")
    v2 = client.new_version("tickets")
    assert (v2.version, v2.status, v2.parent) == (2, "active", "tickets-v1")
    assert client.get_dataset("tickets").version == 2
    assert client.get_dataset("tickets", 1).status == "frozen"
    client.create_dataset("alpha", "first")
    client.create_dataset("zulu")
    listed = client.list_datasets()
    assert [(d.name, d.label) for d in listed] == [
        ("alpha", "alpha-v1"),
        ("tickets", "tickets-v2"),
        ("zulu", "zulu-v1"),
    ]
    assert listed[0].description == "first" and listed[0].row_count == 0
    assert [d.name for d in client.list_datasets(q="ul")] == ["zulu"]
    assert [v.label for v in client.list_versions("tickets")] == ["tickets-v1", "tickets-v2"]


def test_upload_without_waiting_returns_a_job(client, write_jsonl):
    job = client.upload_dataset("later", write_jsonl(spec_rows(30)), wait=False)
    assert isinstance(job, Job) and job.id.startswith("job_") and job.kind == "dataset.upload"
    done = job.wait(timeout=30)
    assert done.status == "succeeded" and done.done and done.progress == 1.0
    assert done.result["rows_added"] == 30 and done.result["version"]["label"] == "later-v1"
    assert job.refresh().status == "succeeded"
    logs = client.job_logs(job.id)
    assert any("30 rows" in line["message"] for line in logs)
    assert client.get_dataset("later").row_count == 30


def test_upload_with_skip_lists_the_skipped_lines(client, write_jsonl):
    lines = [*spec_rows(3), '{"prompt": "x", "response": 5}', "{oops", *spec_rows(5)[3:]]
    ds = client.upload_dataset("skips", write_jsonl(lines), on_error="skip")
    assert ds.row_count == 5
    assert [i["line"] for i in ds.skipped] == [4, 5]
    assert (
        "'response' must be a string" in ds.skipped[0]["error"] and "malformed JSON" in ds.skipped[1]["error"]
    )
    step = [p for p in ds.provenance if p["kind"] == "upload"][-1]
    assert step["skipped"] == 2
    clean = client.upload_dataset("clean", write_jsonl(spec_rows(3), "clean.jsonl"))
    assert (
        clean.skipped == [] and client.get_dataset("skips").skipped == []
    )  # only an upload's answer has them


def test_freeze_new_version_diff_export_to_hf(client, tickets, tmp_path):
    assert tickets.frozen_at is None and tickets.created_at is not None
    frozen = tickets.freeze()
    assert frozen.status == "frozen" and frozen.content_hash and frozen.ref.startswith("tickets-v1@")
    assert frozen.created_at == tickets.created_at and frozen.frozen_at >= frozen.created_at
    # freezing again is a Conflict; frozen data is the same when read back
    with pytest.raises(errors.Conflict):
        client.freeze("tickets", 1)
    v2 = frozen.new_version()
    assert v2.version == 2 and v2.row_count == 120 and v2.content_hash is None
    client.add_rows("tickets", [{"row_id": "extra", "prompt": "p", "response": "r"}])
    client.delete_rows("tickets", ["r_0000000"])
    client.update_row("tickets", "r_0000001", response="changed")
    d = client.diff("tickets")
    assert (d["a"], d["b"], d["added"], d["removed"], d["changed"], d["unchanged"]) == (
        "tickets-v1",
        "tickets-v2",
        1,
        1,
        1,
        118,
    )
    assert (
        d["added_ids"] == ["extra"]
        and d["removed_ids"] == ["r_0000000"]
        and d["changed_ids"] == ["r_0000001"]
    )
    assert client.diff("tickets", "v2", "v1")["added"] == 1
    # export: every format, from each version
    out = client.export("tickets", tmp_path / "out" / "v1.jsonl", version=1)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines == spec_rows(120)
    out = client.get_dataset("tickets").export(tmp_path / "v2.csv", format="csv")
    assert out.read_text().count("\n") == 121  # header + 120 rows
    out = client.export("tickets", tmp_path / "v2.openai.jsonl", format="openai")
    assert json.loads(out.read_text().splitlines()[-1])["messages"][-1] == {
        "role": "assistant",
        "content": "r",
    }
    import pyarrow.parquet as pq

    out = client.export("tickets", tmp_path / "v2.parquet", format="parquet", version="tickets-v2")
    ids = pq.read_table(out).column("row_id").to_pylist()
    assert ids[0] == "r_0000001" and ids[-1] == "extra" and len(ids) == 120
    assert not list(tmp_path.rglob("*.part"))
    with pytest.raises(errors.InvalidInput):
        client.export("tickets", tmp_path / "x.xml", format="xml")
    assert not (tmp_path / "x.xml").exists()
    # no format: the file name's suffix says which (a .parquet file used to get JSONL)
    assert pq.read_table(client.export("tickets", tmp_path / "s.parquet")).num_rows == 120
    assert (
        client.export("tickets", tmp_path / "s.CSV").read_text().startswith("row_id,prompt,response,metadata")
    )
    assert json.loads(client.export("tickets", tmp_path / "s.ndjson").read_text().splitlines()[0])["row_id"]
    with pytest.raises(
        errors.InvalidInput, match=r"cannot tell the export format from the name 'v2\.xml'; pass"
    ):
        client.export("tickets", tmp_path / "v2.xml")
    assert not (tmp_path / "v2.xml").exists()
    import gzip

    packed = client.export("tickets", tmp_path / "s.jsonl.gz")  # gzip, as the name says
    assert gzip.decompress(packed.read_bytes()) == client.export("tickets", tmp_path / "s.jsonl").read_bytes()
    # to_hf: a Dataset, or a deterministic train/validation split
    hf = frozen.to_hf()
    assert len(hf) == 120 and hf[0]["row_id"] == "r_0000000" and hf[0]["response"] == "billing"
    assert json.loads(hf[0]["metadata"]) == spec_rows(1)[0]["metadata"]
    a = client.to_hf("tickets", version=1, test_size=0.25, seed=7)
    b = client.to_hf("tickets", version=1, test_size=0.25, seed=7)
    c = client.to_hf("tickets", version=1, test_size=0.25, seed=8)
    assert set(a) == {"train", "validation"} and (len(a["train"]), len(a["validation"])) == (90, 30)
    assert (
        list(a["validation"]["row_id"]) == list(b["validation"]["row_id"]) != list(c["validation"]["row_id"])
    )
    assert sorted(list(a["train"]["row_id"]) + list(a["validation"]["row_id"])) == sorted(
        r["row_id"] for r in spec_rows(120)
    )


def test_row_writes(client, tickets):
    v = client.add_rows(
        "tickets",
        [
            {"row_id": "n1", "prompt": "p1", "response": "r1", "metadata": {"tags": ["new"]}},
            {"prompt": "p2", "response": "r2"},
        ],
    )
    assert isinstance(v, Dataset) and v.row_count == 122
    assert client.get_row("tickets", "n1") == Row("n1", "p1", "r1", {"tags": ["new"]})
    row = client.update_row("tickets", "r_0000003", response="technical", metadata={"tags": ["reviewed"]})
    assert row == Row("r_0000003", spec_rows(4)[3]["prompt"], "technical", {"tags": ["reviewed"]})
    got = client.update_rows(
        "tickets", [{"row_id": "r_0000004", "response": "a"}, {"row_id": "n1", "prompt": "p1b"}]
    )
    assert [(r.row_id, r.prompt, r.response) for r in got] == [
        ("r_0000004", spec_rows(5)[4]["prompt"], "a"),
        ("n1", "p1b", "r1"),
    ]
    v = client.delete_rows("tickets", ["r_0000005", "r_0000006"])
    assert v.row_count == 120
    rows = list(client.get_dataset("tickets").rows())  # unfiltered: one streamed answer
    assert len(rows) == 120 and len({r.row_id for r in rows}) == 120
    paged, cursor = [], None  # the same rows, many small pages
    while True:
        page, cursor = client.rows_page("tickets", limit=7, cursor=cursor)
        paged += page
        if not cursor:
            break
    assert paged == rows
    assert client.rows_page("tickets", limit=7).total == 120  # the pair, and how many rows match in all
    assert client.rows_page("tickets", limit=7, q="p1B").total == 1
    assert list(client.rows("tickets", where={"cluster_id": "34"}, page_size=7)) == [
        r for r in rows if r.metadata.get("cluster_id") == 34
    ]
    assert rows[3].response == "technical" and rows[4].response == "a"
    assert "r_0000005" not in {r.row_id for r in rows}
    assert rows[-2].row_id == "n1" and rows[-1].prompt == "p2"
    # filters through the client
    assert [r.row_id for r in client.rows("tickets", tags=["reviewed"])] == ["r_0000003"]
    assert [r.row_id for r in client.rows("tickets", q="p1B")] == ["n1"]
    assert len(list(client.rows("tickets", where={"cluster_id": "34"}))) == 117


def test_errors_are_typed_and_carry_the_server_message(client, tickets, server, write_jsonl, tmp_path):
    with pytest.raises(errors.NotFound) as e:
        client.get_dataset("nope")
    raw = httpx.get(f"{server.url}/v1/datasets/nope").json()["error"]["message"]
    assert e.value.message == raw == str(e.value) and e.value.status_code == 404
    with pytest.raises(errors.NotFound, match="tickets-v7"):
        client.get_dataset("tickets", 7)
    with pytest.raises(errors.NotFound, match="r_nope"):
        client.get_row("tickets", "r_nope")
    with pytest.raises(errors.NotFound):
        client.get_job("job_nope")
    with pytest.raises(errors.InvalidInput, match="vX"):
        client.get_dataset("tickets", "vX")
    with pytest.raises(errors.InvalidInput, match="bad name"):
        client.create_dataset("bad name")
    with pytest.raises(errors.InvalidInput, match="confirm"):
        client.delete_dataset("tickets", confirm="not-it")
    # a frozen version refuses writes, naming itself and the way out
    client.freeze("tickets")
    for write in (
        lambda: client.add_rows("tickets", [{"prompt": "p", "response": "r"}], version=1),
        lambda: client.update_row("tickets", "r_0000001", response="x", version=1),
        lambda: client.delete_rows("tickets", ["r_0000001"], version=1),
    ):
        with pytest.raises(errors.Conflict) as e:
            write()
        assert (
            "tickets-v1" in e.value.message
            and "new-version" in e.value.message
            and e.value.status_code == 409
        )
    with pytest.raises(errors.NotFound, match="no active version"):
        client.add_rows("tickets", [{"prompt": "p", "response": "r"}])
    client.new_version("tickets")
    with pytest.raises(errors.Conflict, match="tickets-v2"):
        client.new_version("tickets")
    # a bad file: the job's InvalidInput, naming the file and the line
    bad = write_jsonl([*spec_rows(3), "{not json"], "bad.jsonl")
    with pytest.raises(errors.InvalidInput) as e:
        client.upload_dataset("tickets", bad)
    assert "bad.jsonl" in e.value.message and "line 4" in e.value.message
    assert e.value.details.get("line") == 4
    assert client.get_dataset("tickets").row_count == 120


def test_missing_local_file_is_not_taken_for_a_hub_id(client, tmp_path, monkeypatch):
    from opentracy.datasets import formats

    def no_hub(*a, **kw):  # tests never touch the network
        raise AssertionError(f"asked the Hugging Face Hub for {a}")

    monkeypatch.setattr(formats, "hub_batches", no_hub)
    monkeypatch.chdir(tmp_path)
    for path in (
        tmp_path / "missing.jsonl",
        "./data/invoices.jsonl",
        "data/invoices.jsonl",
        "missing.arrow",
        "x/y.csv",
    ):
        with pytest.raises(errors.InvalidInput, match="no such file") as e:
            client.upload_dataset("tickets", path)
        assert str(path) in e.value.message


def test_unreachable_server_is_a_clear_error(tmp_path, write_jsonl):
    url = f"http://127.0.0.1:{free_port()}"
    with Distiller(base_url=url, progress=False) as d:
        for call in (
            lambda: d.get_dataset("x"),
            lambda: d.list_datasets(),
            lambda: d.upload_dataset("x", write_jsonl(spec_rows(2))),
            lambda: d.export("x", tmp_path / "x.jsonl"),
        ):
            t0 = time.monotonic()
            with pytest.raises(ServerUnreachable) as e:
                call()
            assert url in str(e.value) and isinstance(e.value, errors.OpentracyError)
            assert time.monotonic() - t0 < 10
    assert not (tmp_path / "x.jsonl").exists()


def test_api_key(tmp_path, db_url, monkeypatch, write_jsonl):
    monkeypatch.delenv("OPENTRACY_API_KEY", raising=False)
    eng = Engine(Settings.from_env(home=tmp_path / "k", database_url=db_url, api_key="s3cret")).start()
    try:
        with ServerThread(eng) as srv:
            with Distiller(base_url=srv.url, progress=False) as anon, pytest.raises(errors.Unauthorized):
                anon.list_datasets()
            with (
                Distiller(base_url=srv.url, api_key="wrong", progress=False) as wrong,
                pytest.raises(errors.Unauthorized),
            ):
                wrong.upload_dataset("x", write_jsonl(spec_rows(2)))
            with Distiller(base_url=srv.url, api_key="s3cret", progress=False) as ok:
                assert ok.upload_dataset("x", write_jsonl(spec_rows(2))).row_count == 2
            monkeypatch.setenv("OPENTRACY_API_KEY", "s3cret")  # the client reads the standard variable too
            with Distiller(base_url=srv.url, progress=False) as env:
                assert [d.name for d in env.list_datasets()] == ["x"]
    finally:
        eng.close()


def test_hugging_face_folder_upload(client, tmp_path, monkeypatch):
    import tempfile

    import datasets

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the client converts the folder
    rows = [
        {"prompt": f"q{i}", "response": f"a{i}", "metadata": {"cluster_id": 34, "tags": ["hf"]}}
        for i in range(12)
    ]
    folder = tmp_path / "hf_saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    ds = client.upload_dataset("from-hf", folder)
    assert ds.row_count == 12
    got = list(ds.rows())
    assert [(r.prompt, r.response) for r in got] == [(r["prompt"], r["response"]) for r in rows]
    assert got[0].metadata == {"cluster_id": 34, "tags": ["hf"]}
    step = next(p for p in ds.provenance if p["kind"] == "upload")
    assert step["format"] == "parquet" and "hf_saved" in step["file"]
    # a DatasetDict: the split is chosen by name
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(rows[:8]),
            "test": datasets.Dataset.from_list(rows[8:]),
        }
    )
    dd.save_to_disk(str(tmp_path / "hf_dict"))
    test = client.upload_dataset("from-hf-test", tmp_path / "hf_dict", split="test")
    assert [r.prompt for r in test.rows()] == ["q8", "q9", "q10", "q11"]
    assert client.upload_dataset("from-hf-train", tmp_path / "hf_dict").row_count == 8
    with pytest.raises(errors.InvalidInput, match="validation"):
        client.upload_dataset("from-hf-x", tmp_path / "hf_dict", split="validation")
    # the client's temporary parquet is gone
    assert list(scratch.iterdir()) == []


def test_streamed_rows_keep_chat_prompts_versions_and_refuse_an_altered_segment(client, engine, write_jsonl):
    import os

    from conftest import segment_files

    from opentracy.errors import IntegrityError

    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    client.upload_dataset(
        "mix",
        write_jsonl(
            [
                {"row_id": "a", "prompt": chat, "response": "hello", "metadata": {"tags": ["x"]}},
                {"row_id": "b", "prompt": "plain\nwith a newline \u2028 and \u00e9", "response": ""},
            ],
            "mix.jsonl",
        ),
    )
    client.freeze("mix")
    client.new_version("mix")
    client.update_row("mix", "b", response="edited")
    want_v1 = [
        Row("a", chat, "hello", {"tags": ["x"]}),
        Row("b", "plain\nwith a newline \u2028 and \u00e9", "", {}),
    ]
    assert list(client.rows("mix", 1)) == want_v1
    assert [r.response for r in client.rows("mix")] == ["hello", "edited"]
    assert list(client.rows("mix", 1, where={"nope": "1"})) == []
    engine.datasets.create("empty")
    assert list(client.rows("empty")) == []
    # an altered segment: the error the pages give, before any row
    for seg in segment_files(engine):
        data = bytearray(seg.read_bytes())
        data[len(data) // 2] ^= 0xFF
        seg.write_bytes(bytes(data))
        os.utime(seg, ns=(seg.stat().st_atime_ns, seg.stat().st_mtime_ns + 1_000_000))
    with pytest.raises(IntegrityError, match="altered or corrupted"):
        list(client.rows("mix", 1))


def test_server_times_are_read_as_utc_even_without_an_offset() -> None:
    from datetime import UTC, datetime

    from opentracy.client import _when

    # an older server sent SQLite's times without their offset; they were UTC all along
    assert _when("2026-12-01T22:56:55.456939") == datetime(2026, 12, 1, 22, 56, 55, 456939, tzinfo=UTC)
    assert _when("2026-12-01T23:56:55+01:00") == datetime(2026, 12, 1, 22, 56, 55, tzinfo=UTC)
    assert _when(None) is None and _when("") is None


def test_upload_refuses_a_bad_name_or_option_before_sending_the_file(write_jsonl):
    # The server refused these only once the whole file had arrived (a 1 GB file sent for nothing). Nothing
    # listens on this port: a request would fail with a connection error, not with the answer below.
    path = write_jsonl(spec_rows(3))
    with Distiller(base_url=f"http://127.0.0.1:{free_port()}", progress=False) as d:
        with pytest.raises(errors.InvalidInput, match=r"^bad dataset name 'my data': use letters"):
            d.upload_dataset("my data", path)
        with pytest.raises(errors.InvalidInput, match="on_error must be 'raise' or 'skip', not 'ignore'"):
            d.upload_dataset("ok", path, on_error="ignore")


def test_upload_body_goes_with_a_content_length(write_jsonl):
    # Sent chunked (httpx does that when it cannot tell a file's size), every block of the file was copied
    # once more to frame it: ~half the client's CPU on a 435 MB upload. A bare socket server reads the
    # request as it comes over the wire and answers with an error.
    path = write_jsonl(spec_rows(50))
    got: dict[str, bytes] = {}
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve_one() -> None:
        conn, _ = srv.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, body = data.split(b"\r\n\r\n", 1)
            got["head"] = head.lower()
            length = int(
                dict(line.split(b": ", 1) for line in head.lower().split(b"\r\n")[1:]).get(
                    b"content-length", b"0"
                )
            )
            while len(body) < length:
                body += conn.recv(65536)
            got["body"] = body
            msg = b'{"error": {"type": "invalid_input", "message": "seen"}}'
            conn.sendall(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(msg)).encode()
                + b"\r\nconnection: close\r\n\r\n"
                + msg
            )

    t = threading.Thread(target=serve_one, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{srv.getsockname()[1]}"
    with Distiller(base_url=url, progress=False) as d, pytest.raises(errors.OpentracyError):
        d.upload_dataset("sized", path)
    t.join(10)
    srv.close()
    assert b"transfer-encoding" not in got["head"], got["head"]
    assert b"content-length:" in got["head"]
    assert path.read_bytes() in got["body"]  # the file's bytes, unframed
