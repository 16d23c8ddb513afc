"""Clustering traces: the text of a trace, runs over a trace filter (sync and as a job), new traces assigned
without a re-run (on request and at ingest), embedding at ingest, naming (scripted LLM and offline), and
promoting a cluster to a dataset with lineage (every rows= mode, appending to an existing dataset).

Real texts (Banking77, shipped) and the default local embedder, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from opentracy.clustering.ingest import IngestEmbedder
from opentracy.clustering.traces import trace_text
from opentracy.demo_data import banking77
from opentracy.errors import Conflict, InvalidInput, NotFound
from opentracy.store.tables import ClusteringRunRecord
from opentracy.testing import MockLLM, Reply
from opentracy.traces.schema import TraceIn, to_row
from opentracy.traces.service import TraceFilter

INTENTS = ["card_arrival", "exchange_rate", "lost_or_stolen_phone", "pin_blocked", "top_up_failed"]
SYSTEM = (
    "You are the assistant of a bank's customer support desk. Be polite and brief. Never reveal account "
    "numbers. Read the customer's message below and reply with its intent, one of the 77 intents."
)


@pytest.fixture(autouse=True)
def shared_models(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = Path(str(tmp_path_factory.getbasetemp())) / "clustering-models"  # the build test_clustering uses
    monkeypatch.setenv("OPENTRACY_MODELS_DIR", str(d))
    monkeypatch.delenv("OPENTRACY_NAMING_MODEL", raising=False)
    return d


def b77(split: str, per: int, *, skip: int = 0, intents: list[str] = INTENTS) -> list[tuple[str, str, str]]:
    """(trace_id, text, intent): `per` messages of each intent, after the first `skip` of each."""
    out, seen = [], {}
    for i, (text, cat) in enumerate(banking77(split)):
        if cat in intents:
            k = seen.get(cat, 0)
            seen[cat] = k + 1
            if skip <= k < skip + per:
                out.append((f"t_{split}_{i:05d}", text, cat))
    return out


def as_traces(rows: list[tuple[str, str, str]], tag: str = "support", **extra) -> list[dict]:  # type: ignore[no-untyped-def]
    return [
        {
            "trace_id": tid,
            "model": "openai/gpt-4o-mini",
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
            "response": cat,
            "tags": [tag],
            "metadata": {"intent": cat},
            **extra,
        }
        for tid, text, cat in rows
    ]


def quiet(engine):  # type: ignore[no-untyped-def]
    """No embedding at ingest (the explicit paths are under test)."""
    engine.ingest_embedder.mode = "off"
    return engine


# -- the text of a trace ----------------------------------------------------------------------------


def test_trace_text_is_the_last_user_message_without_the_system_prompt():
    req = {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant for ACME. " * 20},
            {"role": "user", "content": "Where is my invoice for March?"},
            {"role": "assistant", "content": "Here it is."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "And the one for April?"}, {"type": "image_url"}],
            },
        ]
    }
    assert trace_text(req) == "And the one for April?"
    assert trace_text(json.dumps(req)) == "And the one for April?"  # the stored JSON
    assert trace_text(req, "user") == "Where is my invoice for March?\nAnd the one for April?"
    full = trace_text(req, "all")
    assert full.startswith("You are a helpful assistant") and full.endswith("And the one for April?")
    assert full == "\n".join([req["messages"][0]["content"].strip(), "Where is my invoice for March?", "Here it is.",
                              "And the one for April?"])  # fmt: skip
    long = {"messages": [{"role": "user", "content": "word " * 1000}]}
    assert len(trace_text(long)) == 2000  # cut: the embedder reads ~1,000 characters anyway
    # no user message: the last non-assistant one (a tool result); nothing at all: ""
    tool = {"messages": [{"role": "system", "content": "s"}, {"role": "tool", "content": "42 rows"}]}
    assert trace_text(tool) == "42 rows"
    assert trace_text({"messages": [{"role": "system", "content": "only instructions"}]}) == ""
    assert (
        trace_text({"messages": [{"role": "user", "content": "  "}, {"role": "user", "content": None}]}) == ""
    )
    with pytest.raises(InvalidInput, match="text must be one of"):
        trace_text(req, "system")


# -- runs over a trace filter -----------------------------------------------------------------------


def test_a_run_over_a_trace_filter_clusters_the_user_messages(engine):
    quiet(engine)
    rows = b77("test", 30)
    engine.traces.ingest(as_traces(rows))
    engine.traces.ingest(as_traces(b77("train", 5), tag="other"))  # not in the filter
    engine.traces.ingest(  # matches, but has no user text: left out and counted
        [
            {
                "trace_id": "t_sys_only",
                "model": "m",
                "messages": [{"role": "system", "content": "x"}],
                "tags": ["support"],
            }
        ]
    )
    run = engine.trace_clusters.run(TraceFilter(tags=["support"]))
    src = run.source
    assert src["kind"] == "traces" and src["filter"] == {"tags": ["support"]} and src["text"] == "last_user"
    assert (
        src["matched"] == len(rows) + 1
        and src["skipped_no_text"] == 1
        and src["skipped_ids"] == ["t_sys_only"]
    )
    assert run.n_items == len(rows) and run.namer == "keywords"
    clusters = engine.clustering.clusters(run.id)
    truth = {tid: (text, cat) for tid, text, cat in rows}
    assert 4 <= len(clusters) <= 9
    for c in clusters:
        members = engine.clustering.members(c.id, limit=None)
        assert all(m.text == truth[m.item_id][0] for m in members)  # the user message, not the system prompt
        cats = [truth[m.item_id][1] for m in members]
        assert max(cats.count(x) for x in set(cats)) / len(cats) > 0.7
    # the same traces with the system prompt in the text: one app's instructions pull everything together
    together = engine.trace_clusters.run(TraceFilter(tags=["support"]), {"previous_run": None}, text="all")
    assert together.source["text"] == "all"
    sims = [
        m.similarity for c in engine.clustering.clusters(together.id) for m in engine.clustering.members(c.id)
    ]
    assert min(sims) > 0.6  # every text is mostly the shared system prompt
    # limit: the oldest N
    few = engine.trace_clusters.run(TraceFilter(tags=["support"]), {"min_cluster_size": 2}, limit=40)
    assert few.source["matched"] == 40


def test_bad_trace_runs_are_refused_before_a_job(engine):
    quiet(engine)
    with pytest.raises(InvalidInput, match="no trace matches the filter"):
        engine.trace_clusters.submit(TraceFilter(tags=["nothing"]))
    engine.traces.ingest(as_traces(b77("test", 2)))
    with pytest.raises(InvalidInput, match="clustering config: min_cluster_size"):
        engine.trace_clusters.submit({}, {"min_cluster_size": 0})
    with pytest.raises(InvalidInput, match="trace filter: since"):
        engine.trace_clusters.submit({"since": "yesterday"})
    with pytest.raises(InvalidInput, match="text must be one of"):
        engine.trace_clusters.submit({}, text="assistant")
    with pytest.raises(InvalidInput, match="naming_model"):
        engine.trace_clusters.submit({}, {"namer": "llm"})
    assert engine.jobs.list() == []
    with pytest.raises(NotFound, match="no clustering run over traces"):
        engine.trace_clusters.assign_new()


def test_a_trace_run_as_a_job_with_progress(engine):
    quiet(engine)
    engine.traces.ingest(as_traces(b77("test", 15)))
    job = engine.trace_clusters.submit(TraceFilter(tags=["support"]), {"min_cluster_size": 3})
    info = engine.jobs.wait(job.id, timeout=120)
    assert info.status == "succeeded", info.error
    assert info.kind == "clustering.traces" and info.progress == 1.0
    run = engine.clustering.get_run(info.result["id"])
    assert run.job_id == job.id and run.source["kind"] == "traces" and run.config["min_cluster_size"] == 3
    logs = " ".join(line["message"] for line in engine.jobs.logs(job.id))
    assert f"over {len(b77('test', 15))} traces" in logs and "named by keywords" in logs


# -- new traces into an existing run ----------------------------------------------------------------


def test_traces_stored_after_a_run_are_assigned_without_a_rerun(engine):
    quiet(engine)
    engine.traces.ingest(as_traces(b77("test", 30)))
    run = engine.trace_clusters.run(TraceFilter(tags=["support"]))
    truth_run = {tid: cat for tid, _, cat in b77("test", 30)}
    majority = {}
    for c in engine.clustering.clusters(run.id):
        cats = [truth_run[m.item_id] for m in engine.clustering.members(c.id, limit=None)]
        majority[c.id] = max(set(cats), key=cats.count)
    before = {c.id: c.size for c in engine.clustering.clusters(run.id)}
    assert engine.trace_clusters.assign_new().new_traces == 0  # nothing new yet

    new = b77("train", 8)
    engine.traces.ingest(as_traces(new))
    engine.traces.ingest(as_traces(b77("train", 3, skip=8), tag="other"))  # outside the run's filter
    first = engine.trace_clusters.assign_new(limit=25)
    assert first.run_id == run.id and first.new_traces == len(new) and first.remaining == len(new) - 25
    assert first.assigned + first.outliers == 25 and first.embed["computed"] == 25
    rest = engine.trace_clusters.assign_new()
    assert rest.new_traces == len(new) - 25 and rest.remaining == 0
    assert engine.trace_clusters.assign_new().new_traces == 0  # each trace once
    assigned = first.assigned + rest.assigned
    assert assigned >= 0.8 * len(new)
    after = {c.id: c.size for c in engine.clustering.clusters(run.id)}
    assert sum(after.values()) - sum(before.values()) == assigned
    assert engine.clustering.get_run(run.id).n_items == run.n_items + len(new)
    # they land in the cluster of their own intent
    right = total = 0
    for c in engine.clustering.clusters(run.id):
        for m in engine.clustering.members(c.id, limit=None):
            if m.item_id.startswith("t_train"):
                total += 1
                right += {tid: cat for tid, _, cat in new}[m.item_id] == majority[c.id]
    assert total == assigned and right / total > 0.85


def test_embedding_at_ingest_fills_the_cache_and_assigns_new_traces(engine):
    emb = engine.ingest_embedder
    emb.mode, emb.max_delay_s, emb.assign_every_s = "on", 0.05, 0.2
    rows = b77("test", 20)
    engine.traces.ingest(as_traces(rows))
    assert emb.flush(120)
    st = emb.stats()
    assert st["offered"] == len(rows) and st["embedded"] == len(rows) and st["errors"] == 0
    assert st["computed"] >= len(rows) - 2  # a text that appears twice is embedded once
    run = engine.trace_clusters.run(TraceFilter(tags=["support"]))
    assert run.metrics["embedding"]["computed"] == 0  # the run found every vector in the cache
    assert st["assigned"] == 0  # there was no run to assign to

    # the recording path (the trace writer) too, and traces arriving after the run are assigned
    new = b77("train", 6)
    for t in as_traces(new):
        engine.trace_writer.put(to_row(msgspec.convert(t, TraceIn), source="proxy"))
    assert engine.trace_writer.flush(30) and emb.flush(120)
    st = emb.stats()
    assert st["embedded"] == len(rows) + len(new)
    assert st["assigned"] + st["outliers"] == len(new)
    assert engine.clustering.get_run(run.id).n_items == len(rows) + len(new)
    assert engine.trace_clusters.assign_new().new_traces == 0  # nothing left for the explicit path


def test_ingest_embedding_is_bounded_and_counts_what_it_skips(engine):
    engine.ingest_embedder.mode = "off"
    rows = b77("test", 6)
    emb = IngestEmbedder(engine.trace_clusters, mode="on", max_queue=10, max_delay_s=0.05, auto_assign=False)
    engine.traces.on_insert.append(emb.offer)
    engine.traces.ingest(as_traces(rows))
    assert emb.flush(120)
    st = emb.stats()
    assert st["offered"] == len(rows) and st["embedded"] == 10 and st["dropped"] == len(rows) - 10
    emb.close()
    off = IngestEmbedder(engine.trace_clusters, mode="off")
    off.offer([{"id": "t_x", "request": "{}"}])
    assert off.stats()["offered"] == 0 and not off.stats()["enabled"]


def test_auto_mode_never_builds_a_model(engine, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENTRACY_MODELS_DIR", str(tmp_path / "no-models"))
    emb = IngestEmbedder(engine.trace_clusters, mode="auto")
    assert not emb.enabled()
    emb.offer([{"id": "t_x", "request": json.dumps({"messages": [{"role": "user", "content": "hi"}]})}])
    assert emb.stats()["offered"] == 0 and not (tmp_path / "no-models").exists()
    # auto never spends money: a run embedded by a provider is not followed at ingest unless asked ("on")
    import time
    from types import SimpleNamespace

    paid = SimpleNamespace(config={"embedder": "openai/text-embedding-3-small"}, source={"text": "last_user"})
    emb._run_at = (time.monotonic(), paid)
    assert not emb._model_ready()
    assert IngestEmbedder(engine.trace_clusters, mode="on").enabled()


# -- naming -------------------------------------------------------------------------------------------


def test_trace_runs_are_named_by_the_llm_when_a_naming_model_is_configured(engine, monkeypatch):
    quiet(engine)
    engine.traces.ingest(as_traces(b77("test", 12)))

    def script(req):  # type: ignore[no-untyped-def]
        user = req["body"]["messages"][-1]["content"]
        kw = user.split("Keywords: ", 1)[1].split("\n", 1)[0].split(", ")[0]
        assert SYSTEM[:40] not in user  # the samples are the users' messages
        return Reply(content=json.dumps({"name": f"Questions on {kw}", "description": f"About {kw}."}))

    with MockLLM(script=script) as mock:
        monkeypatch.setenv("OPENAI_BASE_URL", mock.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("OPENTRACY_NAMING_MODEL", "openai/namer-model")
        run = engine.trace_clusters.run(TraceFilter(tags=["support"]), {"min_cluster_size": 3})
        calls = [r for r in mock.requests if r["path"].endswith("/chat/completions")]
    clusters = engine.clustering.clusters(run.id)
    assert run.namer == "llm:openai/namer-model" and len(calls) == len(clusters)
    assert all(c.namer == "llm:openai/namer-model" and c.name.startswith("Questions on ") for c in clusters)
    assert all(c.description.startswith("About ") for c in clusters)
    # no model configured: the offline namer, and the run says so
    monkeypatch.delenv("OPENTRACY_NAMING_MODEL")
    offline = engine.trace_clusters.run(
        TraceFilter(tags=["support"]), {"min_cluster_size": 3, "previous_run": None}
    )
    assert offline.namer == "keywords"
    assert all(c.namer == "keywords" and c.name for c in engine.clustering.clusters(offline.id))


# -- promote ------------------------------------------------------------------------------------------


@pytest.fixture
def clustered(engine):  # type: ignore[no-untyped-def]
    quiet(engine)
    rows = b77("test", 25)
    engine.traces.ingest(as_traces(rows))
    run = engine.trace_clusters.run(TraceFilter(tags=["support"]))
    clusters = engine.clustering.clusters(run.id)
    return engine, run, clusters


def _rows(engine, name):  # type: ignore[no-untyped-def]
    return list(engine.datasets.iter_rows(name, "active"))


def test_promote_all_rows_with_lineage(clustered):
    engine, run, clusters = clustered
    c = clusters[0]
    res = engine.trace_clusters.promote(c.id, "card-arrival")
    assert res.created and res.version == "card-arrival-v1" and res.rows == "all"
    assert res.selected == c.size and res.added == c.size and res.run_id == run.id
    v = engine.datasets.version("card-arrival", "active")
    assert v.status == "active" and v.number == 1 and v.row_count == c.size
    rows = _rows(engine, "card-arrival")
    members = [m.item_id for m in engine.clustering.members(c.id, limit=None)]
    assert [r.metadata["source_trace_id"] for r in rows] == members  # closest to the centre first
    for r in rows:
        assert r.metadata["cluster_id"] == c.id and r.row_id == f"r_{r.metadata['source_trace_id']}"
        assert isinstance(r.prompt, list) and r.prompt[-1]["role"] == "user"  # the whole request
        assert r.response == engine.traces.get(r.metadata["source_trace_id"]).metadata["intent"]
    step = v.provenance[-1]
    assert step["kind"] == "cluster" and step["cluster_id"] == c.id and step["cluster_name"] == c.name
    assert step["run"]["id"] == run.id and step["run"]["embedder"] == run.embedder
    assert step["run"]["config"]["min_cluster_size"] == 5 and step["run"]["filter"] == {"tags": ["support"]}
    assert step["run"]["text"] == "last_user" and step["added"] == c.size


def test_promote_a_sample_the_closest_or_chosen_traces(clustered):
    engine, run, clusters = clustered
    c = clusters[0]
    members = [m.item_id for m in engine.clustering.members(c.id, limit=None)]

    closest = engine.trace_clusters.promote(c.id, "closest", rows="closest", n=5)
    assert closest.selected == 5
    assert [r.metadata["source_trace_id"] for r in _rows(engine, "closest")] == members[:5]

    s1 = engine.trace_clusters.promote(c.id, "sample-a", rows="sample", n=7, seed=3)
    engine.trace_clusters.promote(c.id, "sample-b", rows="sample", n=7, seed=3)
    engine.trace_clusters.promote(c.id, "sample-c", rows="sample", n=7, seed=4)
    a, b, cc = (
        [r.metadata["source_trace_id"] for r in _rows(engine, n)]
        for n in ("sample-a", "sample-b", "sample-c")
    )
    assert s1.added == 7 and a == b and a != cc and set(a) <= set(members) and len(set(a)) == 7
    assert engine.datasets.version("sample-a", "active").provenance[-1]["seed"] == 3
    big = engine.trace_clusters.promote(c.id, "sample-all", rows="sample", n=10_000)
    assert big.selected == c.size  # more than the cluster holds: all of it

    chosen = [members[3], members[1]]
    ids = engine.trace_clusters.promote(c.id, "chosen", rows=chosen)
    assert ids.rows == "ids" and [r.metadata["source_trace_id"] for r in _rows(engine, "chosen")] == chosen

    other = clusters[1]
    outsider = engine.clustering.members(other.id, limit=1)[0].item_id
    with pytest.raises(InvalidInput, match=f"trace '{outsider}' is not in cluster {c.id}"):
        engine.trace_clusters.promote(c.id, "bad", rows=[members[0], outsider])
    for kw, msg in (
        ({"rows": "sample"}, "needs n"),
        ({"rows": "closest", "n": 0}, "needs n"),
        ({"rows": "all", "n": 3}, "n goes with"),
        ({"rows": "everything"}, "rows must be"),
        ({"rows": []}, "empty"),
    ):
        with pytest.raises(InvalidInput, match=msg):
            engine.trace_clusters.promote(c.id, "bad", **kw)
    with pytest.raises(NotFound):
        engine.trace_clusters.promote("cl_nope", "bad")
    with pytest.raises(NotFound):
        engine.datasets.get("bad")  # nothing was created by a refused promote


def test_promote_into_an_existing_dataset_appends_to_its_active_version(clustered):
    engine, run, clusters = clustered
    a, b = clusters[0], clusters[1]
    engine.trace_clusters.promote(a.id, "tickets", rows="closest", n=4)
    res = engine.trace_clusters.promote(b.id, "tickets", rows="closest", n=3)
    assert not res.created and res.added == 3 and res.version == "tickets-v1"
    v = engine.datasets.version("tickets", "active")
    assert v.row_count == 7 and [p["kind"] for p in v.provenance] == ["create", "cluster", "cluster"]
    assert "cluster" in " ".join(w.code for w in v.warnings)  # rows of two clusters: the spec's warning
    again = engine.trace_clusters.promote(a.id, "tickets", rows="closest", n=6)
    assert again.added == 2 and again.already_present == 4  # a trace is never added twice
    engine.datasets.freeze("tickets")
    with pytest.raises(Conflict, match="no active version.*new-version tickets.*then promote"):
        engine.trace_clusters.promote(a.id, "tickets")
    assert engine.datasets.version("tickets", "latest").row_count == 9  # unchanged


def test_promote_leaves_out_failed_calls_and_answers_without_text(engine):
    quiet(engine)
    rows = b77("test", 20)
    traces = as_traces(rows)
    for t in traces[:5]:
        t["response"] = None
    for t in traces[5:8]:
        t["error"] = "upstream 500"
        t["response"] = None
    engine.traces.ingest(traces)
    run = engine.trace_clusters.run(TraceFilter(tags=["support"]), {"assign_outliers": True})
    res = [engine.trace_clusters.promote(c.id, "all-of-them") for c in engine.clustering.clusters(run.id)]
    assert sum(r.skipped_no_text for r in res) == 5 and sum(r.skipped_errors for r in res) == 3
    assert engine.datasets.version("all-of-them", "active").row_count == len(rows) - 8
    # a selection with no usable trace: refused, nothing created
    broken = traces[0]["trace_id"]
    cid = next(c.id for c in engine.clustering.clusters(run.id) if broken in
               {m.item_id for m in engine.clustering.members(c.id, limit=None)})  # fmt: skip
    with pytest.raises(InvalidInput, match="none of the 1 chosen traces"):
        engine.trace_clusters.promote(cid, "empty", rows=[broken])
    with pytest.raises(NotFound):
        engine.datasets.get("empty")


def test_promote_needs_a_run_over_traces(engine):
    quiet(engine)
    run = engine.clustering.run([(f"i{i}", t) for i, (_, t, _) in enumerate(b77("test", 10))])
    c = engine.clustering.clusters(run.id)[0]
    with pytest.raises(InvalidInput, match="not traces"):
        engine.trace_clusters.promote(c.id, "x")
    with engine.catalog.session() as s:
        assert s.query(ClusteringRunRecord).count() == 1
