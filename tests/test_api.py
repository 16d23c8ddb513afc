"""The HTTP API, driven through a real uvicorn server: errors, rows, upload jobs, diff, export, auth."""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ServerThread, spec_rows

from opentracy.config import Settings
from opentracy.engine import Engine

TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
def tickets(engine, write_jsonl):
    """Dataset `tickets`: 300 spec rows in an active v1."""
    engine.datasets.upload("tickets", write_jsonl(spec_rows(300), "tickets.jsonl"))
    return "tickets"


def jsonl_bytes(rows: list) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def assert_error(resp: httpx.Response, status: int, code: str) -> str:
    """The one error shape: {"error": {"code", "message"[, "details"]}}; returns the message."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) - {"details"} == {"code", "message"}, err
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"], err
    return err["message"]


def wait_job(http: httpx.Client, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = http.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        job = r.json()
        if job["status"] in TERMINAL:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']} after {timeout} s"
        time.sleep(0.05)


def upload(http: httpx.Client, name: str, content: bytes, fname: str = "rows.jsonl", **fields: str) -> dict:
    r = http.post(
        f"/v1/datasets/{name}/upload",
        files={"file": (fname, content, "application/octet-stream")},
        data=fields,
    )
    assert r.status_code == 202, r.text
    return r.json()


def freeze(http: httpx.Client, name: str, version: str = "active") -> dict:
    r = http.post(f"/v1/datasets/{name}/versions/{version}/freeze")
    assert r.status_code == 202, r.text
    job = wait_job(http, r.json()["id"])
    assert job["status"] == "succeeded", job
    return job["result"]


def version(http: httpx.Client, name: str, ref: str = "latest") -> dict:
    r = http.get(f"/v1/datasets/{name}/versions/{ref}")
    assert r.status_code == 200, r.text
    return r.json()


def all_rows(http: httpx.Client, name: str, ref: str = "latest", **params) -> list[dict]:
    out: list[dict] = []
    cursor = None
    while True:
        q = {**params, "limit": 1000, **({"cursor": cursor} if cursor else {})}
        r = http.get(f"/v1/datasets/{name}/versions/{ref}/rows", params=q)
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["rows"]
        cursor = page["next_cursor"]
        if not cursor:
            return out


# ---------------------------------------------------------------------------------------------------
# errors


def test_not_found_has_one_json_shape(http, tickets):
    msg = assert_error(http.get("/v1/datasets/nope"), 404, "not_found")
    assert "nope" in msg
    msg = assert_error(http.get("/v1/datasets/tickets/versions/9"), 404, "not_found")
    assert "tickets-v9" in msg
    assert_error(http.get("/v1/datasets/tickets/versions/9/rows"), 404, "not_found")
    msg = assert_error(http.get("/v1/datasets/tickets/versions/1/rows/r_nope"), 404, "not_found")
    assert "r_nope" in msg
    assert_error(
        http.patch("/v1/datasets/tickets/versions/1/rows/r_nope", json={"response": "x"}), 404, "not_found"
    )
    assert_error(http.delete("/v1/datasets/tickets/versions/1/rows/r_nope"), 404, "not_found")
    msg = assert_error(http.get("/v1/jobs/job_nope"), 404, "not_found")
    assert "job_nope" in msg
    assert_error(http.get("/v1/jobs/job_nope/logs"), 404, "not_found")
    assert_error(http.post("/v1/jobs/job_nope/cancel"), 404, "not_found")
    assert_error(http.get("/v1/datasets/nope/diff"), 404, "not_found")
    assert_error(http.get("/v1/datasets/nope/versions/1/export"), 404, "not_found")
    assert_error(http.delete("/v1/datasets/nope", params={"confirm": "nope"}), 404, "not_found")
    # an unknown route answers in the same shape
    assert_error(http.get("/v1/no-such-thing"), 404, "not_found")
    # and a wrong method too
    r = http.put("/v1/datasets")
    assert r.status_code == 405 and set(r.json()["error"]) >= {"code", "message"}


def test_conflicts(http, tickets):
    freeze(http, "tickets")
    # a write to the frozen version names it and says how to start a new one
    writes = [
        http.post("/v1/datasets/tickets/versions/1/rows", json={"rows": [{"prompt": "p", "response": "r"}]}),
        http.patch("/v1/datasets/tickets/versions/1/rows/r_0000001", json={"response": "technical"}),
        http.patch(
            "/v1/datasets/tickets/versions/1/rows", json={"rows": [{"row_id": "r_0000001", "response": "x"}]}
        ),
        http.delete("/v1/datasets/tickets/versions/1/rows/r_0000001"),
        http.post("/v1/datasets/tickets/versions/1/rows/delete", json={"row_ids": ["r_0000001"]}),
    ]
    for r in writes:
        msg = assert_error(r, 409, "conflict")
        assert "tickets-v1" in msg and "new-version" in msg, msg
    # freezing twice
    msg = assert_error(http.post("/v1/datasets/tickets/versions/1/freeze"), 409, "conflict")
    assert "tickets-v1" in msg and "frozen" in msg
    # nothing changed
    v1 = version(http, "tickets", "1")
    assert v1["row_count"] == 300 and v1["status"] == "frozen"
    assert http.get("/v1/datasets/tickets/versions/1/rows/r_0000001").json()["response"] == "technical"
    # a new version, then a second one while it is active
    r = http.post("/v1/datasets/tickets/versions", json={})
    assert r.status_code == 201, r.text
    assert (
        r.json()["label"] == "tickets-v2"
        and r.json()["status"] == "active"
        and r.json()["parent"] == "tickets-v1"
    )
    msg = assert_error(http.post("/v1/datasets/tickets/versions", json={}), 409, "conflict")
    assert "tickets-v2" in msg and "active" in msg
    # creating a dataset twice
    assert http.post("/v1/datasets", json={"name": "other"}).status_code == 201
    assert_error(http.post("/v1/datasets", json={"name": "other"}), 409, "conflict")


def test_invalid_input(http, tickets):
    msg = assert_error(http.post("/v1/datasets", json={}), 422, "invalid_input")
    assert "name" in msg
    assert_error(
        http.post("/v1/datasets", content=b"not json", headers={"content-type": "application/json"}),
        422,
        "invalid_input",
    )
    msg = assert_error(http.post("/v1/datasets", json={"name": "bad name!"}), 422, "invalid_input")
    assert "bad name!" in msg
    assert_error(http.post("/v1/datasets", json={"name": "-leading-dash"}), 422, "invalid_input")
    msg = assert_error(http.get("/v1/datasets/tickets/versions/vX"), 422, "invalid_input")
    assert "vX" in msg
    assert_error(http.get("/v1/datasets/tickets/versions/tickets-vabc/rows"), 422, "invalid_input")
    msg = assert_error(http.delete("/v1/datasets/tickets"), 422, "invalid_input")
    assert "confirm" in msg
    assert_error(http.delete("/v1/datasets/tickets", params={"confirm": "other"}), 422, "invalid_input")
    assert http.get("/v1/datasets/tickets").status_code == 200  # still there
    assert_error(http.get("/v1/datasets/tickets/versions/1/rows", params={"limit": 0}), 422, "invalid_input")
    assert_error(
        http.get("/v1/datasets/tickets/versions/1/rows", params={"cursor": "abc"}), 422, "invalid_input"
    )
    assert_error(
        http.get("/v1/datasets/tickets/versions/1/rows", params={"meta.a;b": "1"}), 422, "invalid_input"
    )
    assert_error(http.get("/v1/datasets", params={"limit": 0}), 422, "invalid_input")
    assert_error(
        http.get("/v1/datasets/tickets/versions/1/export", params={"format": "xml"}), 422, "invalid_input"
    )
    assert_error(
        http.post("/v1/datasets/tickets/versions/1/rows", json={"rows": [{"prompt": 3}]}),
        422,
        "invalid_input",
    )
    assert_error(http.post("/v1/datasets/tickets/versions/1/rows", json={"rows": []}), 422, "invalid_input")
    assert_error(http.post("/v1/datasets/tickets/versions/1/rows/delete", json={}), 422, "invalid_input")
    # an upload that is not multipart, or has no file part
    assert_error(http.post("/v1/datasets/tickets/upload", json={"path": "/etc/passwd"}), 422, "invalid_input")
    r = http.post(
        "/v1/datasets/tickets/upload", data={"path": "/etc/passwd"}, files={"other": ("x.jsonl", b"{}")}
    )
    assert "file" in assert_error(r, 422, "invalid_input")
    assert version(http, "tickets")["row_count"] == 300


# ---------------------------------------------------------------------------------------------------
# reading rows


def test_rows_pagination_walks_every_row_once_in_order(http, tickets):
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        r = http.get(
            "/v1/datasets/tickets/versions/1/rows",
            params={"limit": 70, **({"cursor": cursor} if cursor else {})},
        )
        assert r.status_code == 200, r.text
        page = r.json()
        assert page["total"] == 300
        assert len(page["rows"]) <= 70
        seen += [row["row_id"] for row in page["rows"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 5
    assert seen == [f"r_{i:07d}" for i in range(300)]
    first = http.get("/v1/datasets/tickets/versions/latest/rows", params={"limit": 1}).json()["rows"][0]
    assert first == spec_rows(1)[0]
    # an exact multiple of the page size ends without an empty extra page
    r = http.get("/v1/datasets/tickets/versions/1/rows", params={"limit": 300}).json()
    assert len(r["rows"]) == 300 and r["next_cursor"] is None


@pytest.fixture
def mixed(engine, write_jsonl):
    rows = spec_rows(40)
    for i, r in enumerate(rows):
        if i % 4 == 0:
            r["metadata"]["cluster_id"] = 12
            r["metadata"]["tags"] = ["ticket_classifier", "reviewed"]
    engine.datasets.upload("mixed", write_jsonl(rows, "mixed.jsonl"))
    return rows


def test_rows_filters(http, mixed):
    def ids(**params) -> list[str]:
        return [r["row_id"] for r in all_rows(http, "mixed", **params)]

    reviewed = [f"r_{i:07d}" for i in range(0, 40, 4)]
    assert ids(**{"meta.cluster_id": "12"}) == reviewed
    assert len(ids(**{"meta.cluster_id": "34"})) == 30
    assert ids(**{"meta.cluster_id": "99"}) == []
    assert ids(tag="reviewed") == reviewed
    assert ids(tag=["ticket_classifier", "reviewed"]) == reviewed
    assert len(ids(tag="ticket_classifier")) == 40
    assert ids(tag="nope") == []
    # text search: prompt or response, case-insensitive
    assert ids(q="QUESTION 3") == [f"r_{i:07d}" for i in [3, *range(30, 40)]]
    assert ids(q="feature_request") == [f"r_{i:07d}" for i in range(40)]  # every prompt names it
    assert ids(q="%") == []  # a wildcard character is searched for literally
    assert ids(q="question 1", tag="reviewed") == ["r_0000012", "r_0000016"]
    # the total counts the filtered rows, and paging keeps the filter
    page = http.get("/v1/datasets/mixed/versions/1/rows", params={"tag": "reviewed", "limit": 3}).json()
    assert page["total"] == 10 and [r["row_id"] for r in page["rows"]] == reviewed[:3]
    page2 = http.get(
        "/v1/datasets/mixed/versions/1/rows",
        params={"tag": "reviewed", "limit": 3, "cursor": page["next_cursor"]},
    ).json()
    assert [r["row_id"] for r in page2["rows"]] == reviewed[3:6]


def test_list_datasets_paginates(http, engine):
    for name in ("c-set", "a-set", "b-set"):
        engine.datasets.create(name)
    r = http.get("/v1/datasets", params={"limit": 2})
    assert r.status_code == 200
    body = r.json()
    assert body["total"] == 3 and body["limit"] == 2 and body["offset"] == 0
    assert [d["name"] for d in body["items"]] == ["a-set", "b-set"]
    body = http.get("/v1/datasets", params={"limit": 2, "offset": 2}).json()
    assert body["total"] == 3 and [d["name"] for d in body["items"]] == ["c-set"]
    assert http.get("/v1/datasets", params={"offset": 5}).json()["items"] == []
    item = http.get("/v1/datasets").json()["items"][0]
    assert item["latest"]["label"] == "a-set-v1" and item["versions"] == 1
    assert [d["name"] for d in http.get("/v1/datasets", params={"q": "b-"}).json()["items"]] == ["b-set"]


# ---------------------------------------------------------------------------------------------------
# upload jobs


def test_upload_is_a_job_with_progress_and_logs(http):
    job = upload(http, "inv", jsonl_bytes(spec_rows(50)), "invoices.jsonl", description="invoices")
    assert job["id"].startswith("job_") and job["kind"] == "dataset.upload"
    assert job["status"] in ("queued", "running", "succeeded")
    done = wait_job(http, job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == 1.0 and done["error"] is None and done["finished_at"]
    assert done["result"]["rows_added"] == 50 and done["result"]["version"]["label"] == "inv-v1"
    logs = http.get(f"/v1/jobs/{job['id']}/logs").json()["items"]
    assert logs and any("50 rows" in line["message"] for line in logs), logs
    assert logs[-1]["message"] == "succeeded"
    listed = http.get("/v1/jobs", params={"kind": "dataset.upload"}).json()["items"]
    assert [j["id"] for j in listed] == [job["id"]]
    ds = http.get("/v1/datasets/inv").json()
    assert ds["description"] == "invoices" and ds["latest"]["row_count"] == 50
    step = [p for p in ds["latest"]["provenance"] if p["kind"] == "upload"]
    assert len(step) == 1 and step[0]["file"] == "invoices.jsonl" and step[0]["job_id"] == job["id"]
    assert [r["row_id"] for r in all_rows(http, "inv")] == [f"r_{i:07d}" for i in range(50)]


def test_bad_file_fails_the_job_and_leaves_the_store_as_it_was(http, engine):
    done = wait_job(http, upload(http, "inv", jsonl_bytes(spec_rows(10)))["id"])
    assert done["status"] == "succeeded"
    before = version(http, "inv")
    rows_before = all_rows(http, "inv")
    bad = [r | {"row_id": f"n_{i}"} for i, r in enumerate(spec_rows(20))]
    content = jsonl_bytes([*bad[:6], '{"prompt": "half a line', *bad[6:]])
    job = wait_job(http, upload(http, "inv", content, "broken.jsonl")["id"])
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_input"
    assert "broken.jsonl" in job["error"]["message"] and "line 7" in job["error"]["message"], job["error"]
    assert job["result"] is None
    after = version(http, "inv")
    assert after["row_count"] == 10 and after["provenance"] == before["provenance"]
    assert after["segments"] == before["segments"]
    assert all_rows(http, "inv") == rows_before
    # into a new dataset: the dataset is not created at all
    job = wait_job(http, upload(http, "fresh", content, "broken.jsonl")["id"])
    assert job["status"] == "failed" and "line 7" in job["error"]["message"]
    assert_error(http.get("/v1/datasets/fresh"), 404, "not_found")
    # a wrong type is named with its line too
    wrong = jsonl_bytes([{"prompt": "a", "response": "b"}, {"prompt": "a", "response": 3}])
    job = wait_job(http, upload(http, "inv", wrong, "typed.jsonl")["id"])
    assert job["status"] == "failed" and "typed.jsonl, line 2" in job["error"]["message"], job["error"]
    assert version(http, "inv")["row_count"] == 10
    # nothing stays staged
    staged = [p for p in engine.settings.staging_dir.rglob("*") if p.is_file()]
    assert staged == []


# ---------------------------------------------------------------------------------------------------
# writing rows


def test_row_add_edit_delete(http, tickets):
    base = "/v1/datasets/tickets/versions/active/rows"
    r = http.post(
        base,
        json={
            "rows": [
                {"row_id": "r_new1", "prompt": "p1", "response": "billing"},
                {"prompt": "p2", "response": "technical", "metadata": {"tags": ["x"]}},
            ]
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["row_count"] == 302
    got = http.get("/v1/datasets/tickets/versions/1/rows/r_new1").json()
    assert got == {"row_id": "r_new1", "prompt": "p1", "response": "billing", "metadata": {}}
    # a generated id
    generated = all_rows(http, "tickets", q="p2")
    assert (
        len(generated) == 1
        and generated[0]["row_id"].startswith("r_")
        and generated[0]["metadata"] == {"tags": ["x"]}
    )
    # a row id that is already there
    assert_error(
        http.post(base, json={"rows": [{"row_id": "r_new1", "prompt": "p", "response": "r"}]}),
        409,
        "conflict",
    )
    # single edit: unspecified fields stay
    r = http.patch(f"{base}/r_0000005", json={"response": "feature_request"})
    assert r.status_code == 200, r.text
    assert r.json()["response"] == "feature_request" and r.json()["prompt"] == spec_rows(6)[5]["prompt"]
    assert (
        http.get("/v1/datasets/tickets/versions/1/rows/r_0000005").json()["metadata"]
        == spec_rows(6)[5]["metadata"]
    )
    # bulk edit
    r = http.patch(
        base,
        json={
            "rows": [{"row_id": "r_0000010", "response": "a"}, {"row_id": "r_0000011", "metadata": {"k": 1}}]
        },
    )
    assert r.status_code == 200, r.text
    assert [(x["row_id"], x["response"]) for x in r.json()["items"]] == [
        ("r_0000010", "a"),
        ("r_0000011", spec_rows(12)[11]["response"]),
    ]
    assert http.get("/v1/datasets/tickets/versions/1/rows/r_0000011").json()["metadata"] == {"k": 1}
    # a bulk edit naming a missing row changes nothing
    r = http.patch(
        base,
        json={"rows": [{"row_id": "r_0000012", "response": "zzz"}, {"row_id": "r_missing", "response": "q"}]},
    )
    assert_error(r, 404, "not_found")
    assert http.get("/v1/datasets/tickets/versions/1/rows/r_0000012").json()["response"] != "zzz"
    # edits keep the row's position
    ids = [x["row_id"] for x in all_rows(http, "tickets")]
    assert ids[5] == "r_0000005" and ids[10] == "r_0000010" and ids[300] == "r_new1"
    # single and bulk delete
    r = http.delete(f"{base}/r_0000001")
    assert r.status_code == 200 and r.json()["row_count"] == 301
    assert_error(http.get("/v1/datasets/tickets/versions/1/rows/r_0000001"), 404, "not_found")
    r = http.post(f"{base}/delete", json={"row_ids": ["r_0000002", "r_0000003"]})
    assert r.status_code == 200 and r.json()["row_count"] == 299
    # a bulk delete naming a missing row deletes nothing
    assert_error(http.post(f"{base}/delete", json={"row_ids": ["r_0000004", "r_gone"]}), 404, "not_found")
    rows = all_rows(http, "tickets")
    assert len(rows) == 299 == version(http, "tickets")["row_count"]
    ids = [x["row_id"] for x in rows]
    assert "r_0000004" in ids and not {"r_0000001", "r_0000002", "r_0000003"} & set(ids)
    assert len(set(ids)) == len(ids)


def test_diff_counts(http, tickets):
    freeze(http, "tickets")
    assert http.post("/v1/datasets/tickets/versions", json={"parent": "tickets-v1"}).status_code == 201
    base = "/v1/datasets/tickets/versions/active/rows"
    assert (
        http.post(
            base, json={"rows": [{"row_id": f"add{i}", "prompt": "p", "response": "r"} for i in range(3)]}
        ).status_code
        == 201
    )
    assert http.post(f"{base}/delete", json={"row_ids": ["r_0000000", "r_0000001"]}).status_code == 200
    assert http.patch(f"{base}/r_0000002", json={"response": "changed"}).status_code == 200
    # an edit that changes nothing is not a change
    assert http.patch(f"{base}/r_0000004", json={"response": spec_rows(5)[4]["response"]}).status_code == 200
    r = http.get("/v1/datasets/tickets/diff")
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["a"], d["b"]) == ("tickets-v1", "tickets-v2")
    assert (d["added"], d["removed"], d["changed"], d["unchanged"]) == (3, 2, 1, 297)
    assert d["added_ids"] == ["add0", "add1", "add2"] and d["removed_ids"] == ["r_0000000", "r_0000001"]
    assert d["changed_ids"] == ["r_0000002"] and d["truncated"] is False
    d = http.get("/v1/datasets/tickets/diff", params={"a": "2", "b": "v1", "limit": 1}).json()
    assert (d["added"], d["removed"], d["changed"]) == (2, 3, 1)
    assert d["added_ids"] == ["r_0000000"] and d["truncated"] is True
    assert_error(
        http.get("/v1/datasets/tickets/diff", params={"b": "1"}), 422, "invalid_input"
    )  # v1 has no parent


def test_export_every_format(http, tickets):
    base = "/v1/datasets/tickets/versions/active/rows"
    http.post(f"{base}/delete", json={"row_ids": ["r_0000000"]})
    http.post(
        base,
        json={
            "rows": [
                {
                    "row_id": "chat1",
                    "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                    "response": "hello",
                    "metadata": {"tags": ["chat"]},
                }
            ]
        },
    )
    expected = spec_rows(300)[1:]
    ids = [r["row_id"] for r in expected] + ["chat1"]

    def get(fmt: str) -> httpx.Response:
        r = http.get("/v1/datasets/tickets/versions/1/export", params={"format": fmt})
        assert r.status_code == 200, r.text
        assert r.headers["x-opentracy-rows"] == "300"
        return r

    r = get("jsonl")
    ext = ".jsonl"
    assert r.headers["content-disposition"] == f'attachment; filename="tickets-v1{ext}"'
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert lines[:-1] == expected
    assert lines[-1]["prompt"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]

    r = get("openai")
    assert 'filename="tickets-v1.jsonl"' in r.headers["content-disposition"]
    recs = [json.loads(x) for x in r.text.splitlines()]
    assert len(recs) == 300
    assert recs[0]["messages"] == [
        {"role": "user", "content": expected[0]["prompt"]},
        {"role": "assistant", "content": expected[0]["response"]},
    ]
    assert (
        recs[-1]["messages"][-1] == {"role": "assistant", "content": "hello"}
        and len(recs[-1]["messages"]) == 3
    )

    r = get("csv")
    assert 'filename="tickets-v1.csv"' in r.headers["content-disposition"]
    assert r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert [x["row_id"] for x in table] == ids
    assert (
        table[0]["prompt"] == expected[0]["prompt"]
        and json.loads(table[0]["metadata"]) == expected[0]["metadata"]
    )

    r = get("parquet")
    assert 'filename="tickets-v1.parquet"' in r.headers["content-disposition"]
    t = pq.read_table(pa.BufferReader(r.content))
    assert t.column("row_id").to_pylist() == ids
    assert t.column("response").to_pylist()[:3] == [x["response"] for x in expected[:3]]

    # a frozen older version exports its own rows
    freeze(http, "tickets")
    http.post("/v1/datasets/tickets/versions", json={})
    http.post("/v1/datasets/tickets/versions/2/rows/delete", json={"row_ids": ["chat1"]})
    r = http.get("/v1/datasets/tickets/versions/2/export")
    assert (
        'filename="tickets-v2.jsonl"' in r.headers["content-disposition"] and len(r.text.splitlines()) == 299
    )
    assert len(http.get("/v1/datasets/tickets/versions/1/export").text.splitlines()) == 300


def test_openapi_and_docs(http):
    r = http.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    for path in (
        "/v1/datasets",
        "/v1/datasets/{name}/upload",
        "/v1/datasets/{name}/versions/{version}/rows",
        "/v1/datasets/{name}/diff",
        "/v1/jobs/{job_id}",
    ):
        assert path in spec["paths"], path
    r = http.get("/docs")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"] and "openapi.json" in r.text
    assert http.get("/health").json()["status"] == "ok"


# ---------------------------------------------------------------------------------------------------
# API key


@pytest.fixture
def keyed(tmp_path: Path, db_url: str):
    settings = Settings.from_env(home=tmp_path / "keyed", database_url=db_url, api_key="s3cret")
    eng = Engine(settings).start()
    try:
        with ServerThread(eng) as srv:
            yield srv, eng
    finally:
        eng.close()


def _v1_requests(app) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """Every /v1 operation the app publishes, with its path parameters filled in."""
    out = []
    for path, ops in app.openapi()["paths"].items():
        if not path.startswith("/v1"):
            continue
        filled = (
            path.replace("{name}", "tickets")
            .replace("{version}", "1")
            .replace("{row_id}", "r_0000001")
            .replace("{job_id}", "job_x")
        )
        out += [(method.upper(), filled) for method in sorted(ops)]
    return out


def test_api_key_guards_every_v1_request(keyed, write_jsonl):
    srv, eng = keyed
    eng.datasets.upload("tickets", write_jsonl(spec_rows(5)))
    from opentracy.server import create_app

    requests = _v1_requests(create_app(eng))
    assert len(requests) >= 20 and ("POST", "/v1/datasets/tickets/upload") in requests
    bad_headers = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic s3cret"},
        {"Authorization": "Bearer"},
        {"Authorization": "s3cret"},
        {"Authorization": "Bearer s3cret-and-more"},
    ]
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        for method, path in requests:
            for h in bad_headers:
                r = c.request(
                    method,
                    path,
                    headers=h,
                    params={"confirm": "tickets"},
                    files={"file": ("x.jsonl", jsonl_bytes(spec_rows(1)))}
                    if path.endswith("/upload")
                    else None,
                )
                assert_error(r, 401, "unauthorized")
                assert (
                    "OPENTRACY_API_KEY" in r.json()["error"]["message"]
                    or "API key" in r.json()["error"]["message"]
                )
        # nothing was touched or staged by the refused requests
        assert eng.datasets.version("tickets").row_count == 5
        assert [p for p in eng.settings.staging_dir.rglob("*") if p.is_file()] == []
        assert eng.jobs.list() == []
        ok = {"Authorization": "Bearer s3cret"}
        for path in (
            "/v1/datasets",
            "/v1/jobs",
            "/v1/datasets/tickets",
            "/v1/datasets/tickets/versions/1/rows",
            "/v1/datasets/tickets/versions/1/export",
        ):
            assert c.get(path, headers=ok).status_code == 200, path
        assert c.get("/v1/datasets", headers={"authorization": "bearer s3cret"}).status_code == 200
        for method, path in requests:
            assert c.request(method, path, headers=ok).status_code != 401, (method, path)
        r = c.get("/health")
        assert r.status_code == 200 and r.json()["status"] == "ok"


# ---------------------------------------------------------------------------------------------------
# the server never opens a path named in a request


def test_upload_never_opens_a_named_path(http, engine, tmp_path):
    target = tmp_path / "target.jsonl"
    target_rows = [{"row_id": "secret", "prompt": "do not read me", "response": "no"}]
    target.write_bytes(jsonl_bytes(target_rows))
    original = target.read_bytes()
    content = jsonl_bytes(spec_rows(4))
    for i, filename in enumerate(["../../evil.jsonl", "..\\..\\evil.jsonl", str(target)]):
        job = upload(
            http,
            f"safe{i}",
            content,
            filename,
            path=str(target),
            staged="../../../target.jsonl",
            filename=str(target),
            format="jsonl",
        )
        done = wait_job(http, job["id"])
        assert done["status"] == "succeeded", done
        assert done["params"]["filename"] in ("evil.jsonl", "target.jsonl")
        assert ".." not in done["params"]["staged"] and "/" not in done["params"]["filename"]
        rows = all_rows(http, f"safe{i}")
        assert [r["row_id"] for r in rows] == [
            f"r_{j:07d}" for j in range(4)
        ]  # the sent bytes, not the named file
        step = next(p for p in version(http, f"safe{i}")["provenance"] if p["kind"] == "upload")
        assert step["file"] in ("evil.jsonl", "target.jsonl")
    # a text part named `file` holding a path is content, not a path to open
    r = http.post(
        "/v1/datasets/safe9/upload",
        data={"file": str(target), "format": "jsonl"},
        files={"other": ("x.txt", b"")},
    )
    if r.status_code == 202:
        done = wait_job(http, r.json()["id"])
        assert done["status"] == "failed" and done["error"]["code"] == "invalid_input", done
    else:
        assert_error(r, 422, "invalid_input")
    assert_error(http.get("/v1/datasets/safe9"), 404, "not_found")
    assert target.read_bytes() == original
    assert list(tmp_path.rglob("evil.jsonl")) == []
    assert [p for p in engine.settings.staging_dir.rglob("*") if p.is_file()] == []


def test_a_bad_option_sent_before_the_file_is_refused_before_the_file_arrives(server, engine):
    # The options were checked only once the whole file had been received and staged. Here the client sends
    # the options and the file's first bytes, then waits: the answer must come without the rest.
    import socket

    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="on_error"\r\n\r\nignore\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="rows.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + jsonl_bytes(spec_rows(50))
    request = (
        "POST /v1/datasets/x/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(head) + (100 << 20)}\r\n\r\n"  # 100 MB more that never come
    ).encode() + head
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        answer = sock.recv(65536).decode("utf-8", "replace")
    assert answer.startswith("HTTP/1.1 422"), answer
    assert "on_error must be 'raise' or 'skip', not 'ignore'" in answer
    assert [p for p in engine.settings.staging_dir.rglob("*") if p.is_file()] == []


def test_a_refused_upload_leaves_nothing_staged(http, engine):
    content = jsonl_bytes(spec_rows(3))
    for bad in ("[not json", "[1, 2]"):
        r = http.post(
            "/v1/datasets/x/upload", files={"file": ("rows.jsonl", content)}, data={"metadata_fields": bad}
        )
        assert "metadata_fields" in assert_error(r, 422, "invalid_input")
    r = http.post(
        "/v1/datasets/x/upload",
        files={"file": ("rows.jsonl", content)},
        data={"description": "d" * (2 << 20)},
    )
    assert_error(r, 422, "invalid_input")
    assert http.get("/v1/jobs").json()["items"] == []
    assert list(engine.settings.staging_dir.iterdir()) == []
    # finished jobs: cancel changes nothing
    job = wait_job(http, upload(http, "x", content)["id"])
    r = http.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "succeeded"


def test_list_datasets_search_is_literal(http, engine):
    for name in ("a_set", "abset", "aset2"):
        engine.datasets.create(name)
    assert [d["name"] for d in http.get("/v1/datasets", params={"q": "a_"}).json()["items"]] == ["a_set"]
    assert http.get("/v1/datasets", params={"q": "%"}).json()["total"] == 0


def _timestamps(value: object, path: str = "") -> list[tuple[str, str]]:
    """Every string under a key ending in `_at`, with where it was found."""
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, str) and k.endswith("_at"):
                found.append((f"{path}.{k}", v))
            else:
                found += _timestamps(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _timestamps(v, f"{path}[{i}]")
    return found


def test_every_timestamp_the_api_gives_carries_its_utc_offset(http, tickets):
    # SQLite keeps no time zone: the catalog's times read back naive there and aware on PostgreSQL, so the
    # API said "…T22:56:55" on one database and "…+00:00" on the other (and a browser takes the first for
    # local time). Both now give UTC with its offset.
    r = http.post(
        "/v1/traces",
        json={
            "trace_id": "t_api_ts",
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "response": "yo",
        },
    )
    assert r.status_code == 201, r.text
    r = http.post(f"/v1/datasets/{tickets}/versions/1/freeze")
    assert r.status_code in (200, 202), r.text
    assert wait_job(http, r.json()["id"])["status"] == "succeeded"
    bodies = [
        http.get(path).json()
        for path in (
            f"/v1/datasets/{tickets}",
            f"/v1/datasets/{tickets}/versions",
            "/v1/datasets",
            "/v1/jobs",
            "/v1/traces",
            "/v1/traces/t_api_ts",
        )
    ]
    stamps = [s for b in bodies for s in _timestamps(b)]
    keys = {p.rsplit(".", 1)[-1] for p, _ in stamps}
    assert {"created_at", "updated_at", "frozen_at", "started_at", "finished_at"} <= keys, keys
    for where, text in stamps:
        parsed = datetime.fromisoformat(text)
        assert parsed.utcoffset() == timedelta(0), (where, text)


def test_the_client_gives_aware_times(client, write_jsonl):
    ds = client.upload_dataset("aware", write_jsonl(spec_rows(5), "a.jsonl"))
    assert ds.created_at is not None and ds.created_at.tzinfo is not None
    assert datetime.now(UTC) - ds.created_at < timedelta(minutes=5)
    job = client.upload_dataset(
        "aware",
        write_jsonl([{k: v for k, v in r.items() if k != "row_id"} for r in spec_rows(5)], "b.jsonl"),
        wait=False,
    )
    for when in (job.created_at, client.wait_job(job.id, progress=False).finished_at):
        assert when is not None and when.tzinfo is not None, when


def test_row_listing_refuses_a_query_parameter_it_does_not_know(http, tickets):
    url = f"/v1/datasets/{tickets}/versions/1/rows"
    # a misspelled metadata filter used to be ignored: every row came back
    msg = assert_error(http.get(url, params={"metadata.cluster_id": "34"}), 422, "invalid_input")
    assert "unknown query parameter 'metadata.cluster_id'" in msg and "meta.cluster_id=34" in msg
    assert "unknown query parameter 'sort'" in assert_error(
        http.get(url, params={"sort": "x"}), 422, "invalid_input"
    )
    msg = assert_error(
        http.get(url, params=[("meta.cluster_id", "34"), ("meta.cluster_id", "35")]), 422, "invalid_input"
    )
    assert "twice" in msg
    page = http.get(
        url,
        params=[("meta.cluster_id", "34"), ("tag", "ticket_classifier"), ("limit", "5"), ("q", "question")],
    )
    assert page.status_code == 200 and page.json()["total"] == 300, page.text
    assert http.get(url, params={"meta.cluster_id": "35"}).json()["total"] == 0


def test_row_writes_over_http_refuse_unknown_fields(http, tickets):
    base = f"/v1/datasets/{tickets}/versions/active/rows"
    r = http.post(base, json={"rows": [{"prompt": "p", "response": "r", "source": "crm"}]})
    assert "rows.0.source" in assert_error(r, 422, "invalid_input")
    r = http.patch(base, json={"rows": [{"row_id": "r_0000001", "respone": "x"}]})
    assert "unknown field 'respone'" in assert_error(r, 422, "invalid_input")
    r = http.patch(f"{base}/r_0000001", json={"respone": "x"})
    assert "respone" in assert_error(r, 422, "invalid_input")
    assert http.get(f"{base}/r_0000001").json()["response"] == spec_rows(2)[1]["response"]
    assert http.get(f"/v1/datasets/{tickets}").json()["latest"]["row_count"] == 300


def test_trace_filters_refuse_what_they_do_not_know(http, engine):
    traces = [
        {
            "trace_id": f"t_f{i}",
            "model": "m",
            "messages": [{"role": "user", "content": f"q{i}"}],
            "response": "a",
        }
        for i in range(3)
    ]
    assert http.post("/v1/traces", json=traces).status_code == 201
    # a misspelled filter used to be ignored: the listing, the count, the export took every trace
    for path in ("/v1/traces", "/v1/traces/count", "/v1/traces/export"):
        msg = assert_error(http.get(path, params={"models": "m"}), 422, "invalid_input")
        assert "unknown query parameter 'models'" in msg, (path, msg)
    msg = assert_error(http.get("/v1/traces", params={"metadata.team": "a"}), 422, "invalid_input")
    assert "meta.team=a" in msg
    assert http.get("/v1/traces", params={"model": "m", "sort": "latency", "limit": 2}).status_code == 200
    assert http.get("/v1/traces/count", params={"meta.team": "a"}).json() == {"count": 0}
    # and a promotion with a misspelled filter took them all into a dataset
    r = http.post("/v1/traces/to-dataset", json={"dataset": "promoted", "filter": {"modle": "x"}})
    assert "modle" in assert_error(r, 422, "invalid_input")
    assert engine.datasets.list()[0] == []
