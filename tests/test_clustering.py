"""Clustering: the pipeline's stages, outliers, stable ids, incremental assignment, naming, runs as jobs.

The pipeline tests use synthetic vectors (fast, exact expectations); the service tests use real texts
from the shipped Banking77 data and the default local embedder (int8 ONNX MiniLM, built once for the
session), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from opentracy.clustering import ClusteringConfig, Pipeline
from opentracy.clustering.cluster import AutoClusterer, KMeansClusterer
from opentracy.clustering.cluster._ward import ward_tree
from opentracy.clustering.matching import match
from opentracy.clustering.name import ClusterSummary, KeywordNamer
from opentracy.demo_data import banking77
from opentracy.errors import InvalidInput, NotFound
from opentracy.llm.gateway import Endpoint, Gateway
from opentracy.store.tables import ClusteringRunRecord, ClusterRecord
from opentracy.testing import MockLLM, Reply


def blobs(k: int = 6, per: int = 60, d: int = 32, spread: float = 0.15, seed: int = 0):
    """k well-separated groups of unit vectors, with texts that name their group."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x, y, texts = [], [], []
    words = ["invoice", "password", "shipping", "refund", "upgrade", "cancel", "login", "printer", "weather"]
    for c in range(k):
        v = centres[c] + rng.normal(scale=spread, size=(per, d)) / np.sqrt(d) * 3
        x.append(v)
        y += [c] * per
        texts += [f"question {i} about {words[c]} and {words[c]} issues" for i in range(per)]
    x = np.concatenate(x).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.array(y), texts, centres


# -- the pipeline ----------------------------------------------------------------------------------------


def test_ward_tree_of_weighted_points_matches_scipy_on_unit_weights():
    from scipy.cluster.hierarchy import fcluster, linkage

    x, _, _, _ = blobs(k=5, per=30)
    z1 = linkage(x.astype(np.float64), "ward")
    z2 = ward_tree(x, np.ones(len(x)))
    assert np.allclose(np.sort(z1[:, 2]), np.sort(z2[:, 2]), atol=1e-6)
    for k in (2, 5, 17):
        assert adjusted_rand_score(fcluster(z1, k, "maxclust"), fcluster(z2, k, "maxclust")) == 1.0


def test_ward_tree_weights_count_like_their_items():
    # a weighted centre merges exactly like that many identical items
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(6, 4))
    w = np.array([3, 1, 2, 1, 4, 1])
    expanded = np.repeat(pts, w, axis=0)
    from scipy.cluster.hierarchy import linkage

    heights_expanded = np.sort(linkage(expanded, "ward")[:, 2])[-5:]  # the merges between distinct points
    heights_weighted = np.sort(ward_tree(pts, w)[:, 2])
    assert np.allclose(heights_weighted, heights_expanded, atol=1e-6)


def test_auto_clusterer_finds_the_groups_without_being_told_k():
    x, y, texts, _ = blobs(k=6, per=80)
    r = Pipeline().fit(x, texts, cohesion=0.8)
    assert r.info["chosen_by"].startswith("target cohesion")
    assert adjusted_rand_score(y, r.nearest) > 0.95
    assert 6 <= r.info["n_clusters"] <= 8
    # clusters are ordered largest first, with stats, keywords, samples and map positions
    sizes = [c.size for c in r.clusters]
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) + r.n_outliers == len(x)
    for c in r.clusters:
        assert 0 < c.cohesion <= 1 and c.keywords and len(c.representatives) >= 1 and len(c.diverse) >= 1
        kw = c.keywords[0][0]
        group = y[c.representatives[0]]
        assert kw.split()[0] in texts[np.flatnonzero(y == group)[0]]
    assert r.coords.shape == (len(x), 2) and np.isfinite(r.coords).all()


def test_a_higher_target_cohesion_gives_more_clusters_and_n_clusters_forces_k():
    x, _, texts, _ = blobs(k=6, per=80, spread=0.4)
    coarse = Pipeline(clusterer=AutoClusterer(target_cohesion=0.5)).fit(x, texts)
    fine = Pipeline(clusterer=AutoClusterer(target_cohesion=0.8)).fit(x, texts)
    assert coarse.info["n_clusters"] < fine.info["n_clusters"]
    forced = Pipeline(clusterer=AutoClusterer(n_clusters=3), min_cluster_size=1, outlier_z=100).fit(x, texts)
    assert forced.info["n_clusters"] == 3 and forced.info["chosen_by"] == "given"
    km = Pipeline(clusterer=KMeansClusterer(4), reducer=None, min_cluster_size=1).fit(x, texts)
    assert km.info["n_clusters"] == 4


def test_outliers_are_reported_and_can_be_assigned_to_the_nearest_cluster():
    x, y, texts, centres = blobs(k=4, per=60)
    rng = np.random.default_rng(5)
    odd = rng.normal(size=(6, x.shape[1])).astype(np.float32)
    odd /= np.linalg.norm(odd, axis=1, keepdims=True)
    xx = np.concatenate([x, odd])
    tt = texts + [f"unrelated thing {i}" for i in range(6)]
    r = Pipeline().fit(xx, tt, cohesion=0.8)
    out = np.flatnonzero(r.labels < 0)
    assert set(range(len(x), len(xx))) <= set(out.tolist())  # the odd ones are left out
    assert r.info["outliers"] == len(out) and r.info["outlier_share"] == round(len(out) / len(xx), 4)
    assert len(out) < 0.1 * len(xx)
    assert (r.nearest[out] >= 0).all()  # each still knows its nearest cluster

    assigned = Pipeline(assign_outliers=True).fit(xx, tt, cohesion=0.8)
    assert (assigned.labels >= 0).all() and assigned.info["outliers_assigned"]
    assert assigned.info["outliers"] == len(out)  # the report still says how many there were
    assert (assigned.labels == assigned.nearest).all()


def test_clusters_smaller_than_the_minimum_are_dissolved_into_outliers():
    x, _, texts, _ = blobs(k=3, per=50)
    rng = np.random.default_rng(2)
    tiny = rng.normal(size=x.shape[1]).astype(np.float32)
    tiny = np.stack([tiny + rng.normal(scale=0.01, size=x.shape[1]) for _ in range(3)])
    tiny /= np.linalg.norm(tiny, axis=1, keepdims=True)
    xx = np.concatenate([x, tiny])
    tt = texts + ["rare a", "rare b", "rare c"]
    four = AutoClusterer(n_clusters=4)  # three groups and the tiny one
    r = Pipeline(clusterer=four, min_cluster_size=5).fit(xx, tt)
    assert (r.labels[-3:] < 0).all() and r.info["dissolved_small_clusters"] == 1
    assert r.info["n_clusters"] == 3 and r.info["outliers"] >= 3
    r1 = Pipeline(clusterer=four, min_cluster_size=1, outlier_z=100).fit(xx, tt)
    assert (r1.labels[-3:] >= 0).all() and len(set(r1.labels[-3:].tolist())) == 1


def test_matching_keeps_ids_one_to_one_and_above_the_threshold():
    rng = np.random.default_rng(0)
    prev = rng.normal(size=(5, 16))
    prev /= np.linalg.norm(prev, axis=1, keepdims=True)
    cur = np.concatenate([prev[[2, 0, 4]] + rng.normal(scale=0.01, size=(3, 16)), rng.normal(size=(1, 16))])
    cur /= np.linalg.norm(cur, axis=1, keepdims=True)
    m = match(prev, cur, threshold=0.9)
    assert [a for a, _ in m] == [2, 0, 4, None]
    assert match(prev, cur[:, :8], 0.9) == [(None, 0.0)] * 4  # another embedder: nothing matches


def test_keyword_namer_gives_readable_unique_names():
    namer = KeywordNamer()
    names = namer.name(
        [
            ClusterSummary(
                40, ["card payment", "declined", "card", "payment"], ["my card payment was declined"]
            ),
            ClusterSummary(30, ["card payment", "declined", "refund"], ["card payment declined twice"]),
            ClusterSummary(5, [], ["hello"]),
        ]
    )
    assert names[0].name == "Card payment · declined" or names[0].name.startswith("Card payment · declined")
    assert "card" not in names[0].name.split(" · ")[1:]  # contained in "card payment": not repeated
    assert len({n.name.lower() for n in names}) == 3
    assert names[2].name == "Hello" and all(n.namer == "keywords" for n in names)
    assert "40 items about card payment" in names[0].description


# -- the service (real texts, default embedder) --------------------------------------------------------

INTENTS = [
    "card_arrival",
    "exchange_rate",
    "lost_or_stolen_phone",
    "pin_blocked",
    "top_up_failed",
    "verify_my_identity",
]


def subset(split: str, intents: list[str] = INTENTS, per: int | None = None) -> list[tuple[str, str, str]]:
    """(item_id, text, intent) rows of a few intents."""
    out, seen = [], {}
    for i, (text, cat) in enumerate(banking77(split)):
        if cat in intents and (per is None or seen.get(cat, 0) < per):
            seen[cat] = seen.get(cat, 0) + 1
            out.append((f"{split}_{i}", text, cat))
    return out


@pytest.fixture(autouse=True)
def shared_models(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = Path(str(tmp_path_factory.getbasetemp())) / "clustering-models"
    monkeypatch.setenv("OPENTRACY_MODELS_DIR", str(d))
    return d


def test_run_stores_named_clusters_with_stats_samples_and_artifacts(engine):
    rows = subset("test")
    run = engine.clustering.run([(i, t) for i, t, _ in rows])
    assert run.status == "succeeded" and run.n_items == len(rows) and run.namer == "keywords"
    assert run.embedder.startswith("all-MiniLM-L6-v2/onnx-int8@")
    assert 5 <= run.n_clusters <= 12 and run.outlier_share < 0.1
    assert run.metrics["chosen_by"] == "target cohesion (embedder)" and run.metrics["target_cohesion"] == 0.8
    assert run.metrics["embedding"]["computed"] == len(rows)
    clusters = engine.clustering.clusters(run.id)
    assert [c.position for c in clusters] == list(range(len(clusters)))
    assert sum(c.size for c in clusters) + run.n_outliers == len(rows)
    truth = {i: cat for i, _, cat in rows}
    for c in clusters:
        assert c.name and c.namer == "keywords" and c.keywords and c.new and c.id.startswith("cl_")
        assert 0 < c.cohesion <= 1 and 0 < c.share <= 1
        assert c.representatives and c.diverse
        reps = [s.similarity for s in c.representatives]
        assert reps == sorted(reps, reverse=True)
        members = engine.clustering.members(c.id, limit=None)
        assert len(members) == c.size and all(m.cluster_id == c.id for m in members)
        # a cluster is mostly one intent
        cats = [truth[m.item_id] for m in members]
        assert max(cats.count(x) for x in set(cats)) / len(cats) > 0.7
    assert engine.clustering.samples(clusters[0].id)["representatives"][0] == clusters[0].representatives[0]
    points = engine.clustering.map(run.id)
    assert len(points) == len(rows) and all(np.isfinite([p.x, p.y]).all() for p in points)
    # per-item data are artifacts, not catalog rows
    arts = run.metrics and engine.clustering._run_record(run.id).artifacts
    assert len(arts["assignments"]) == 1 and engine.artifacts.exists(arts["centroids"])
    assert engine.clustering.get_run().id == run.id and engine.clustering.runs()[0].id == run.id


def test_rerun_keeps_cluster_ids_and_names(engine):
    rows = subset("test")
    items = [(i, t) for i, t, _ in rows]
    first = engine.clustering.run(items)
    engine.clustering.rename(engine.clustering.clusters(first.id)[0].id, "Card delivery", "where is my card")
    second = engine.clustering.run(items)
    assert second.previous_run_id == first.id and second.metrics["embedding"]["computed"] == 0
    a = {c.id: c for c in engine.clustering.clusters(first.id)}
    b = {c.id: c for c in engine.clustering.clusters(second.id)}
    assert set(a) == set(b) and second.metrics["matched"] == len(a)
    for cid, c in b.items():
        assert c.size == a[cid].size and c.name == a[cid].name and not c.new
        assert c.matched_similarity is not None and c.matched_similarity > 0.99
    renamed = [c for c in b.values() if c.namer == "user"]
    assert len(renamed) == 1 and renamed[0].name == "Card delivery"

    # more data: the clusters found before keep their ids where they are found again
    more = items + [(i, t) for i, t, _ in subset("train", per=60)]
    third = engine.clustering.run(more)
    c3 = engine.clustering.clusters(third.id)
    kept = [c for c in c3 if c.id in a]
    assert len(kept) >= 0.8 * len(a) and third.metrics["matched"] == len(kept)
    assert all(c.matched_similarity >= 0.85 for c in kept)
    # a fresh start (previous_run=None) makes new ids
    fresh = engine.clustering.run(items, {"previous_run": None})
    assert not set(c.id for c in engine.clustering.clusters(fresh.id)) & set(a)


def test_new_items_are_assigned_to_existing_clusters_without_a_rerun(engine):
    rows = subset("test")
    run = engine.clustering.run([(i, t) for i, t, _ in rows])
    before = {c.id: c.size for c in engine.clustering.clusters(run.id)}
    # where the intents landed in the run
    truth = {i: cat for i, _, cat in rows}
    majority: dict[str, str] = {}
    for cid in before:
        cats = [truth[m.item_id] for m in engine.clustering.members(cid, limit=None)]
        majority[cid] = max(set(cats), key=cats.count)
    new = subset("train", per=10)
    res = engine.clustering.assign(
        [(i, t) for i, t, _ in new] + [("odd_1", "What is the boiling point of water on Mars?")]
    )
    assert res.run_id == run.id and res.embed["computed"] == len(new) + 1
    by_id = {a.item_id: a for a in res.items}
    assert by_id["odd_1"].cluster_id is None and by_id["odd_1"].nearest_cluster_id in before
    # each new item lands in a cluster of its own intent (or is left out), as the run's items did
    placed = [(i, cat) for i, _, cat in new if by_id[i].cluster_id is not None]
    assert len(placed) > 0.8 * len(new)
    right = sum(1 for i, cat in placed if majority[by_id[i].cluster_id] == cat)
    assert right / len(placed) > 0.85
    after = {c.id: c.size for c in engine.clustering.clusters(run.id)}
    assert sum(after.values()) - sum(before.values()) == res.assigned
    assert engine.clustering.get_run(run.id).n_items == len(rows) + len(new) + 1
    assert [m.item_id for m in engine.clustering.outliers(run.id) if m.item_id == "odd_1"] == ["odd_1"]
    cid = by_id[new[0][0]].cluster_id
    assert new[0][0] in {m.item_id for m in engine.clustering.members(cid, limit=None)}
    # the same items again are skipped and listed, not assigned twice
    again = engine.clustering.assign([(new[0][0], new[0][1]), ("odd_2", "my card has not arrived yet")])
    assert again.skipped == [new[0][0]] and [a.item_id for a in again.items] == ["odd_2"]
    # assign_outliers puts even the odd one in its nearest cluster
    forced = engine.clustering.assign(
        [("odd_3", "What is the boiling point of water on Mars?")], assign_outliers=True
    )
    assert forced.items[0].cluster_id == forced.items[0].nearest_cluster_id


def test_assign_outliers_option_leaves_nothing_unclustered(engine):
    rows = subset("test", per=20)
    items = [(i, t) for i, t, _ in rows] + [("odd", "Translate 'good morning' into Japanese, please.")]
    run = engine.clustering.run(items, {"assign_outliers": True})
    assert run.n_outliers == 0 and run.metrics["outliers"] >= 1 and run.metrics["outliers_assigned"]
    assert engine.clustering.outliers(run.id) == []
    plain = engine.clustering.run(items, {"previous_run": None})
    assert plain.n_outliers >= 1 and "odd" in {m.item_id for m in engine.clustering.outliers(plain.id)}


def llm_gateway(engine, mock):  # type: ignore[no-untyped-def]
    engine._gateway = Gateway(
        aliases=engine.aliases,
        cache=engine.llm_cache,
        pricing=engine.pricing,
        endpoints={"openai": Endpoint("openai", mock.base_url, "k", 16)},
        backoff_base=0.01,
        max_retries=1,
    )


def test_llm_namer_through_the_gateway_with_a_scripted_server(engine):
    def script(req):  # type: ignore[no-untyped-def]
        user = req["body"]["messages"][-1]["content"]
        kw = user.split("Keywords: ", 1)[1].split("\n", 1)[0].split(", ")[0]
        return Reply(content=json.dumps({"name": f"About {kw}", "description": f"Requests about {kw}."}))

    rows = subset("test", per=25)
    with MockLLM(script=script) as mock:
        llm_gateway(engine, mock)
        run = engine.clustering.run([(i, t) for i, t, _ in rows], {"naming_model": "openai/mock-model"})
        calls = [r for r in mock.requests if r["path"].endswith("/chat/completions")]
    clusters = engine.clustering.clusters(run.id)
    assert run.namer == "llm:openai/mock-model" and run.metrics["namers"] == ["llm:openai/mock-model"]
    assert len(calls) == len(clusters)
    for c in clusters:
        assert c.namer == "llm:openai/mock-model" and c.name == f"About {c.keywords[0]}"
        assert c.description == f"Requests about {c.keywords[0]}."
    body = calls[0]["body"]
    assert body["model"] == "mock-model" and body["response_format"]["type"] == "json_schema"
    assert "Most typical requests:" in body["messages"][-1]["content"]
    # a re-run names nothing new (ids and names are kept), so no call is made
    with MockLLM(script=script) as mock:
        llm_gateway(engine, mock)
        engine.clustering.run([(i, t) for i, t, _ in rows], {"naming_model": "openai/mock-model"})
        assert [r for r in mock.requests if r["path"].endswith("/chat/completions")] == []


def test_llm_namer_failures_fall_back_to_keywords_and_say_so(engine):
    rows = subset("test", per=20)
    with MockLLM(script=[{"reply": {"status": 500, "content": "model overloaded"}}]) as mock:
        llm_gateway(engine, mock)
        run = engine.clustering.run([(i, t) for i, t, _ in rows], {"naming_model": "openai/mock-model"})
    clusters = engine.clustering.clusters(run.id)
    assert all(c.namer.startswith("keywords (llm failed: ") and "500" in c.namer for c in clusters)
    assert all(c.name for c in clusters) and run.metrics["namers"][0].startswith("keywords (llm failed")
    # a later run with a working model upgrades the keyword names
    with MockLLM(script=lambda req: Reply(content='{"name": "Named", "description": "d"}')) as mock:
        llm_gateway(engine, mock)
        again = engine.clustering.run([(i, t) for i, t, _ in rows], {"naming_model": "openai/mock-model"})
    assert all(c.namer == "llm:openai/mock-model" for c in engine.clustering.clusters(again.id))


def test_llm_namer_needs_a_model(engine):
    with pytest.raises(InvalidInput, match="naming_model"):
        engine.clustering.run([("a", "hello there")], {"namer": "llm"})


@pytest.mark.parametrize(
    "items, message",
    [
        ([("a", "hi"), ("a", "again")], "appears twice"),
        ([("a", "hi"), ("b", "   ")], "row 1: text of item 'b' is empty"),
        ([("a", "hi"), ("", "x")], "row 1: item_id must be a non-empty string"),
        ([("a", 3)], "row 0: text of item 'a' must be a string"),
        ([("a",)], "row 0: each item must be a pair"),
        ([], "nothing to cluster"),
    ],
)
def test_bad_items_are_refused_and_nothing_is_stored(engine, items, message):
    with pytest.raises(InvalidInput, match=message):
        engine.clustering.run(items)
    with pytest.raises(InvalidInput, match=message):
        engine.submit_clustering(items)
    with engine.catalog.session() as s:
        assert s.query(ClusteringRunRecord).count() == 0 and s.query(ClusterRecord).count() == 0
    assert engine.jobs.list() == []


def test_bad_config_is_refused(engine):
    with pytest.raises(ValueError):
        ClusteringConfig(target_cohesion=1.5)
    with pytest.raises(InvalidInput, match="clustering config: target_cohesion"):
        engine.clustering.run([("a", "hi")], {"target_cohesion": 1.5})
    with pytest.raises(InvalidInput, match="clustering config: clusterer"):
        engine.submit_clustering([("a", "hi")], {"clusterer": "spectral"})
    with pytest.raises(InvalidInput, match="needs n_clusters"):
        engine.clustering.run([("a", "hi")], {"clusterer": "kmeans"})
    assert engine.jobs.list() == [] and engine.clustering.runs() == []


def test_unknown_ids_are_not_found(engine):
    with pytest.raises(NotFound):
        engine.clustering.get_run()
    with pytest.raises(NotFound):
        engine.clustering.cluster("cl_nope")
    with pytest.raises(NotFound):
        engine.clustering.assign([("a", "hello")])


def test_a_run_as_a_job(engine):
    rows = subset("test", per=20)
    job = engine.submit_clustering([(i, t) for i, t, _ in rows], {"min_cluster_size": 3})
    info = engine.jobs.wait(job.id, timeout=120)
    assert info.status == "succeeded", info.error
    run = engine.clustering.get_run(info.result["id"])
    assert run.job_id == job.id and run.config["min_cluster_size"] == 3 and run.n_items == len(rows)
    logs = " ".join(line["message"] for line in engine.jobs.logs(job.id))
    assert "clusters over" in logs and "named by keywords" in logs
    assert not any(engine.settings.staging_dir.glob("clustering-*.parquet"))  # staged items cleaned up
