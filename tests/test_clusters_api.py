"""Clusters through the faces: the HTTP API (/v1/clusters), the Distiller client and the CLI (server and
--local), and `opentracy demo` (on a subset, and once on a machine with no embedding model built yet)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from test_cluster_traces import as_traces, b77

from opentracy import errors
from opentracy.cli import main
from opentracy.client import Cluster, ClusteringRun, Dataset
from opentracy.clustering.demo import TAG, rows, slug, traces

CLEAN_ENV = {
    "OPENTRACY_API_KEY": None,
    "OPENTRACY_URL": None,
    "COLUMNS": "80",
    "OPENTRACY_NAMING_MODEL": None,
}


@pytest.fixture(autouse=True)
def shared_models(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = Path(str(tmp_path_factory.getbasetemp())) / "clustering-models"
    monkeypatch.setenv("OPENTRACY_MODELS_DIR", str(d))
    monkeypatch.delenv("OPENTRACY_NAMING_MODEL", raising=False)
    return d


def cli(*args: str, env: dict | None = None) -> Result:
    r = CliRunner().invoke(main, list(args), env={**CLEAN_ENV, **(env or {})})
    return r


def ok(*args: str, env: dict | None = None) -> Result:
    r = cli(*args, env=env)
    assert r.exit_code == 0, (args, r.output, r.exception)
    return r


def test_cluster_traces_through_the_client(engine, server, client):
    engine.ingest_embedder.mode = "off"
    client.log_traces(as_traces(b77("test", 20)))
    client.log_traces(as_traces(b77("train", 4), tag="other"))
    run = client.cluster_traces(tags=["support"], config={"min_cluster_size": 4})
    assert isinstance(run, ClusteringRun) and run.status == "succeeded" and run.n_items == 100
    assert run.source["filter"] == {"tags": ["support"]} and run.namer == "keywords"
    assert client.clustering_run().id == run.id and client.clustering_runs()[0].id == run.id
    clusters = run.clusters()
    assert clusters and all(isinstance(c, Cluster) for c in clusters)
    assert sum(c.size for c in clusters) + run.n_outliers == run.n_items
    c = clusters[0]
    assert c.name and c.namer == "keywords" and c.keywords and c.samples and 0 < c.cohesion <= 1
    assert client.get_cluster(c.id).size == c.size
    members = c.members(limit=500)
    assert len(members) == c.size and members[0]["item_id"].startswith("t_test_")
    sims = [m["similarity"] for m in members]
    assert sims == sorted(sims, reverse=True)
    points = client.cluster_map(run.id)
    assert len(points) == run.n_items and {"item_id", "cluster_id", "x", "y"} <= set(points[0])
    assert isinstance(client.cluster_outliers(run.id), list)
    renamed = client.rename_cluster(c.id, "Card delivery", "when will my card arrive")
    assert renamed.name == "Card delivery" and renamed.namer == "user"

    # as a job, not waited for
    job = client.cluster_traces(tags=["support"], wait=False)
    assert job.kind == "clustering.traces"
    again = ClusteringRun._from(client, job.wait().result)
    assert c.id in {x.id for x in again.clusters()}  # ids are kept across runs
    assert client.get_cluster(c.id).name == "Card delivery"

    # new traces: assigned without a re-run
    client.log_traces(as_traces(b77("train", 3, skip=4)))
    got = client.assign_traces()
    assert got["run_id"] == again.id and got["new_traces"] == 15 and got["assigned"] + got["outliers"] == 15
    assert client.clustering_run(again.id).n_items == 115
    assert client.ingest_embedding_stats()["mode"] == "off"

    # promote → a dataset with lineage
    ds = client.promote_cluster(c.id, "card-delivery", rows="closest", n=5)
    assert isinstance(ds, Dataset) and ds.label == "card-delivery-v1" and ds.row_count == 5
    rows = list(ds.rows())
    assert all(r.metadata["cluster_id"] == c.id and r.metadata["source_trace_id"] for r in rows)
    step = ds.provenance[-1]
    assert step["kind"] == "cluster" and step["run"]["id"] == again.id and step["rows"] == "closest"
    more = c.promote("card-delivery", rows=[m["item_id"] for m in members[5:7]])
    assert more.row_count == 7


def test_api_errors_have_the_one_shape(engine, server, client):
    engine.ingest_embedder.mode = "off"
    with pytest.raises(errors.NotFound, match="no clustering run"):
        client.list_clusters()
    with pytest.raises(errors.InvalidInput, match="no trace matches the filter"):
        client.cluster_traces(tags=["nothing"])
    client.log_traces(as_traces(b77("test", 3)))
    with pytest.raises(errors.InvalidInput, match="text"):
        client.cluster_traces(text="assistant")
    with pytest.raises(errors.InvalidInput, match="clustering config: target_cohesion"):
        client.cluster_traces(config={"target_cohesion": 3})
    r = httpx.post(f"{server.url}/v1/clusters/cl_nope/promote", json={"dataset": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    run = client.cluster_traces(config={"min_cluster_size": 2})
    cid = run.clusters()[0].id
    r = httpx.post(f"{server.url}/v1/clusters/{cid}/promote", json={"dataset": "x", "rows": "sample"})
    assert r.status_code == 422 and "needs n" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1/clusters/{cid}/promote", json={"dataset": "bad name!"})
    assert r.status_code == 422 and "bad dataset name" in r.json()["error"]["message"]
    assert httpx.get(f"{server.url}/v1/datasets").json()["items"] == []


def test_cli_clusters_against_a_server(engine, server):
    engine.ingest_embedder.mode = "off"
    from opentracy.client import Distiller

    with Distiller(base_url=server.url, progress=False) as d:
        d.log_traces(as_traces(b77("test", 15)))
    url = ["--url", server.url]
    r = ok(*url, "clusters", "run", "--tag", "support", "--min-cluster-size", "3")
    first = r.stdout.splitlines()[0]
    assert first.startswith("cr_") and "clusters over 75 traces" in first and "named by keywords" in first
    r = ok(*url, "clusters", "list", "--json")
    items = json.loads(r.stdout)
    cid = items[0]["id"]
    table = ok(*url, "clusters", "list").stdout
    assert cid in table and items[0]["representatives"][0]["text"][:30] in table
    show = ok(*url, "clusters", "show", cid, "--members", "2").stdout
    assert show.startswith(f"{cid}  {items[0]['name']}") and "members (closest first, 2 of" in show
    assert ok(*url, "clusters", "rename", cid, "Lost phone").stdout.strip() == f"{cid}  Lost phone"
    r = ok(*url, "clusters", "promote", cid, "lost-phone", "-n", "4")
    assert r.stdout.splitlines()[0] == "lost-phone-v1  active  4 rows"
    assert f"4 rows added from {cid} (Lost phone)" in r.stdout
    assert "clusters over 75 traces" in ok(*url, "clusters", "runs").stdout
    assert "0 traces assigned" in ok(*url, "clusters", "assign").stdout
    bad = cli(*url, "clusters", "promote", "cl_nope", "x")
    assert bad.exit_code != 0 and bad.stderr.startswith("error: no cluster 'cl_nope'")
    bad = cli(*url, "clusters", "promote", cid, "x", "--rows", "sample")
    assert bad.exit_code != 0 and "needs n" in bad.stderr and "Traceback" not in bad.output


# -- the demo -------------------------------------------------------------------------------------------


def test_demo_traces_are_spread_over_every_intent_and_stable():
    few = rows("test", 154)
    assert len(few) == 154 and len({r[2] for r in few}) == 77  # all 77 intents, 2 each
    t = traces("test", 10)
    assert t == traces("test", 10) and t[0]["tags"] == [TAG]
    assert t[0]["messages"][0]["role"] == "system" and t[0]["messages"][1]["content"] == few[0][1]
    assert slug("Card payment · cancelled") == "card-payment-cancelled" and slug("· ·") == "cluster"


def test_demo_on_a_subset_then_promote_locally(tmp_path, monkeypatch):
    home = tmp_path / "home"
    env = {"OPENTRACY_HOME": str(home), "OPENTRACY_MODELS_DIR": os.environ["OPENTRACY_MODELS_DIR"]}
    r = ok("demo", "--limit", "400", "--top", "5", env=env)
    out = r.stdout
    assert "clusters over 400 traces" in out and "named by keywords" in out
    assert f"loading 400 Banking77 customer messages (test split) as traces into {home}" in r.stderr
    assert "building the local embedding model" not in r.stderr  # already built for this session
    promote = out.strip().splitlines()[-1].strip()
    assert promote.startswith("opentracy clusters promote cl_") and promote.endswith(
        "--rows closest -n 50 --local"
    )
    cid, name = promote.split()[3], promote.split()[4]
    assert cid in out  # the table shows it
    # the printed command works as printed, with no server
    p = ok(*promote.split()[1:], env=env)
    assert p.stdout.startswith(f"{name}-v1  active  ")
    # running the demo again adds no trace and keeps the cluster ids
    again = ok("demo", "--limit", "400", "--top", "5", env=env)
    assert again.stdout.strip().splitlines()[-1].strip() == promote
    listed = ok("clusters", "list", "--local", "--json", env=env)
    assert cid in {c["id"] for c in json.loads(listed.stdout)}
    # the other commands work locally too: a run over the demo's traces keeps the ids, assign finds nothing new
    rerun = ok("clusters", "run", "--local", "--tag", TAG, env=env)
    assert "clusters over 400 traces" in rerun.stdout.splitlines()[0] and cid in rerun.stdout
    assert "0 traces assigned" in ok("clusters", "assign", "--local", env=env).stdout


def test_demo_builds_the_embedding_model_on_a_fresh_machine(tmp_path):
    env = {"OPENTRACY_HOME": str(tmp_path / "home"), "OPENTRACY_MODELS_DIR": None}
    r = ok("demo", "--limit", "160", "--top", "3", env=env)
    assert "building the local embedding model" in r.stderr and "built " in r.stderr
    assert (tmp_path / "home" / "models" / "all-MiniLM-L6-v2-onnx-int8" / "model.onnx").exists()
    assert "clusters over 160 traces" in r.stdout and "build_model" in r.stdout
