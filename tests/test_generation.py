"""Synthetic generation against the scripted mock server, through production code (the gateway, the curation
judge and dedup filter, jobs, the datasets store), and through the faces (HTTP API, client, CLI)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from generation_fixtures import Script, write_jsonl

from opentracy import errors
from opentracy.cli import main
from opentracy.distillation.generation import GenerationConfig, SeedOptions, parse_seeds
from opentracy.engine import Engine
from opentracy.llm.gateway import Gateway, load_endpoints
from opentracy.llm.pricing import Pricing
from opentracy.testing import MockLLM

P = [
    "Write a docstring for add(a, b).",
    "Write a docstring for sub(a, b).",
    "Write a docstring for mul(a, b).",
]
TEACHER, JUDGE = "openai/gpt-4o", "openai/gpt-4o-mini"
CLEAN_ENV = {"OPENTRACY_API_KEY": None, "OPENTRACY_URL": None, "COLUMNS": "140"}


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def mock(script: Script):  # type: ignore[no-untyped-def]
    with MockLLM(script=script) as m:
        yield m


def point_at(engine: Engine, mock: MockLLM, pricing: Pricing | None = None) -> Engine:
    """The engine's gateway talks to the mock, with short backoffs (so retries are quick)."""
    if pricing is not None:
        engine.pricing = engine.generation.pricing = pricing
    env = {"OPENAI_BASE_URL": mock.base_url, "OPENAI_API_KEY": "sk-test"}
    engine._gateway = Gateway(aliases=engine.aliases, cache=engine.llm_cache, pricing=engine.pricing,
                              endpoints=load_endpoints(env), backoff_base=0.01, backoff_max=0.05,
                              recorder=engine._record_call)  # fmt: skip
    return engine


@pytest.fixture
def gen(engine: Engine, mock: MockLLM) -> Engine:
    return point_at(engine, mock)


def seeds_file(tmp_path: Path, prompts: list[str] = P, **meta: str) -> Path:
    return write_jsonl(tmp_path / "seeds.jsonl",
                       [{"prompt": p, "metadata": {"topic": "python", "i": i}, **meta} for i, p in enumerate(prompts)])  # fmt: skip


def run(engine: Engine, path: Path, name: str = "docs", **cfg):  # type: ignore[no-untyped-def]
    job = engine.generation.submit(name, path, {"teacher": TEACHER, "judge": JUDGE, **cfg})
    done = engine.jobs.wait(job.id, 120)
    assert done.status == "succeeded", (done.error, engine.jobs.logs(job.id))
    return done


def rows(engine: Engine, name: str = "docs") -> list:
    return engine.datasets.rows(name, limit=1000).rows


def accounted(rep: dict) -> None:
    """Every sample asked for ends kept or dropped, and the counts agree."""
    s = rep["samples"]
    assert s["requested"] == rep["kept"] + sum(rep["dropped"].values()) == s["kept"] + s["dropped"]


# -- selection --------------------------------------------------------------------------------------------


def test_keep_best_per_prompt_with_provenance(gen, script, tmp_path):
    q = {P[0]: [2, 5, 3, 4], P[1]: [4, 4, 1, 3], P[2]: [1, 2, 5, 5]}
    script.quality = {(p, k): v for p, qs in q.items() for k, v in enumerate(qs)}
    path = seeds_file(tmp_path, difficulty="easy")
    done = run(gen, path, n_samples=4, params={"temperature": 0.7, "max_tokens": 200})
    rep = done.result["run"]["report"]
    got = rows(gen)
    # the best per prompt; a tie goes to the lower sample index
    assert [(r.prompt, r.metadata["sample"]) for r in got] == [(P[0], 1), (P[1], 0), (P[2], 2)]
    assert [r.metadata["judge_score"] for r in got] == [1.0, 0.75, 1.0]
    for i, r in enumerate(got):
        assert r.metadata["teacher_model"] == TEACHER and r.metadata["judge"]["model"] == JUDGE
        assert r.metadata["topic"] == "python" and r.metadata["i"] == i and r.metadata["difficulty"] == "easy"
        assert r.metadata["generation"]["seed_line"] == i + 1 and r.metadata["generation"]["rank"] == 1
        assert r.response == script.answer(r.prompt, r.metadata["sample"])
    # twelve distinct teacher requests: sample k is seed k, with the given params
    assert sorted(script.teacher_calls) == sorted((p, k) for p in P for k in range(4))
    assert rep["kept"] == 3 and rep["samples"]["generated"] == 12
    assert rep["dropped"] == {"below_threshold": 4, "not_selected": 5}
    accounted(rep)
    assert rep["teacher"]["calls"] == 12 and rep["judge"]["calls"] == 12 and rep["teacher"]["cached"] == 0
    assert rep["cost_usd"] > 0 and rep["stopped_by"] is None
    # provenance: file hash, teacher, judge and every parameter
    v = gen.datasets.version("docs")
    step = v.provenance[-1]
    import hashlib

    assert step["kind"] == "generation" and step["job_id"] == done.id
    assert step["prompts_sha256"] == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert step["prompts"]["file"] == "seeds.jsonl" and step["prompts"]["prompts"] == 3
    assert step["teacher"] == TEACHER and step["judge"] == JUDGE
    assert step["config"]["params"] == {"temperature": 0.7, "max_tokens": 200}
    assert step["config"]["n_samples"] == 4 and step["config"]["keep"] == "best"
    assert step["config"]["judge"]["threshold"] == 0.5 and step["config"]["dedupe"]["enabled"] is True
    assert v.status == "active" and v.row_count == 3
    assert "not_curated" not in [w.code for w in v.warnings]  # judged: a generation with a judge is curated
    # every sample is kept in the run, with its reason
    dropped = gen.generation.samples("docs", outcome="dropped", limit=1000)["items"]
    assert len(dropped) == 9 and all(d["reason"] for d in dropped)
    below = [d for d in dropped if d["rule"] == "below_threshold"]
    assert {(d["prompt"], d["sample"]) for d in below} == {(P[0], 0), (P[1], 2), (P[2], 0), (P[2], 1)}
    assert below[0]["reason"] == "judge score 0.25 < threshold 0.5" and below[0]["score"] == 0.25
    assert below[0]["judge"]["scores"] == {"helpfulness": 0.25, "relevance": 0.25, "format": 0.25}
    ranked = [d for d in dropped if d["rule"] == "not_selected"]
    assert ranked[0]["reason"].startswith("ranked 3 of 4 for its prompt") and ranked[0]["detail"]["rank"] == 3


def test_top_k_and_threshold(gen, script, tmp_path):
    q = {P[0]: [5, 4, 3, 2], P[1]: [4, 4, 5, 1], P[2]: [3, 3, 2, 1]}
    script.quality = {(p, k): v for p, qs in q.items() for k, v in enumerate(qs)}
    path = seeds_file(tmp_path)
    rep = run(gen, path, keep=2, threshold=0.7).result["run"]["report"]
    got = [(r.prompt, r.metadata["sample"], r.metadata["judge_score"]) for r in rows(gen)]
    # top 2 per prompt, best first; P[2]'s best scores 0.5 < 0.7: nothing kept for it
    assert got == [(P[0], 0, 1.0), (P[0], 1, 0.75), (P[1], 2, 1.0), (P[1], 0, 0.75)]
    assert gen.datasets.version("docs").provenance[-1]["config"]["judge"]["threshold"] == 0.7
    assert rows(gen)[0].metadata["judge"]["threshold"] == 0.7
    assert rep["dropped"] == {"below_threshold": 7, "not_selected": 1}
    assert rep["prompts_with_rows"] == 2
    accounted(rep)
    # keep="all": every sample at or above the threshold (default 0.5) becomes a row
    rep = run(gen, path, name="all", keep="all").result["run"]["report"]
    assert rep["kept"] == 8 and rep["dropped"] == {"below_threshold": 4}
    assert [r.metadata["judge_score"] >= 0.5 for r in rows(gen, "all")] == [True] * 8
    assert (
        rep["teacher"]["cached"] == 12 and rep["judge"]["cached"] == 12
    )  # a re-run is answered by the cache
    with pytest.raises(errors.InvalidInput, match="keep=5 is more than n_samples=4"):
        gen.generation.submit("x", path, {"teacher": TEACHER, "keep": 5})
    with pytest.raises(errors.InvalidInput, match="give a judge"):
        gen.generation.submit("x", path, {"teacher": TEACHER, "judge": None, "keep": "best"})


def test_without_a_judge_every_clean_sample_is_kept(gen, script, tmp_path):
    script.same = {(P[0], 1): 0}
    rep = run(gen, seeds_file(tmp_path), judge=False, keep="all", n_samples=2).result["run"]["report"]
    assert rep["kept"] == 5 and rep["dropped"] == {"exact_duplicate": 1} and rep["judge"] is None
    assert script.judge_calls == []
    got = rows(gen)
    assert all("judge_score" not in r.metadata for r in got)
    assert "not_curated" in [w.code for w in gen.datasets.version("docs").warnings]


def test_duplicates_are_collapsed_before_judging(gen, script, tmp_path):
    script.quality = {(P[0], 0): 4, (P[0], 3): 5}
    script.same = {(P[0], 1): 0}  # sample 1 says exactly what sample 0 says
    script.near = {(P[0], 2): 0}  # sample 2 says it with one word changed
    script.fail_status = 500
    rep = run(gen, seeds_file(tmp_path, P[:1])).result["run"]["report"]
    assert rep["dropped"] == {"exact_duplicate": 1, "near_duplicate": 1, "not_selected": 1}
    assert rep["judge"]["calls"] == 2 and len(script.judge_calls) == 2  # the copies were not paid for
    assert [r.metadata["sample"] for r in rows(gen)] == [3]
    d = {x["sample"]: x for x in gen.generation.samples("docs", outcome="dropped")["items"]}
    assert d[1]["reason"] == "exact duplicate of sample 0" and d[1]["detail"]["duplicate_of_sample"] == 0
    assert d[2]["reason"].startswith("near duplicate of sample 0 (similarity")
    assert d[1]["score"] is None and d[1]["judge"] is None


def test_errors_of_the_teacher_are_dropped_before_judging(gen, script, tmp_path, mock):
    from opentracy.testing import Reply

    base = script

    def teacher(req):  # type: ignore[no-untyped-def]
        body = req["body"]
        if isinstance(body, dict) and not body.get("response_format") and body.get("seed") == 1:
            return Reply(content="I'm sorry, but I can't help with that.")
        if isinstance(body, dict) and not body.get("response_format") and body.get("seed") == 2:
            return Reply(content="def add(a, b):\n    ```python\n    return", finish_reason="length")
        return base(req)

    mock.script = teacher
    rep = run(gen, seeds_file(tmp_path, P[:2]), n_samples=3).result["run"]["report"]
    assert rep["dropped"] == {"refusal": 2, "truncated": 2}
    assert rep["judge"]["calls"] == 2 and rep["kept"] == 2


def test_provider_failures_mid_run_are_retried_or_recorded(gen, script, tmp_path):
    script.quality = {(P[1], 0): 5}
    script.fail = {(P[0], 2): None, (P[1], 0): 2}  # always 500; 500 twice, then an answer
    script.judge_fail = {P[2]}  # the judge always answers 500 for the third prompt
    done = run(gen, seeds_file(tmp_path))
    rep = done.result["run"]["report"]
    accounted(rep)
    assert rep["samples"]["generated"] == 11 and rep["samples"]["teacher_errors"] == 1
    assert rep["teacher"]["errors"] == 1 and rep["teacher"]["calls"] == 11
    assert rep["dropped"]["teacher_error"] == 1 and rep["dropped"]["judge_error"] == 4
    assert rep["judge"]["errors"] == 4 and rep["prompts_with_rows"] == 2
    # the retried sample made it, and won its prompt
    assert script.teacher_calls.count((P[1], 0)) == 3
    got = rows(gen)
    assert (got[1].prompt, got[1].metadata["sample"], got[1].metadata["judge_score"]) == (P[1], 0, 1.0)
    assert script.teacher_calls.count((P[0], 2)) == 5  # 1 + the gateway's 4 retries
    failed = gen.generation.samples("docs", rule="teacher_error")["items"]
    assert [(f["prompt"], f["sample"]) for f in failed] == [(P[0], 2)]
    assert "500" in failed[0]["error"] and failed[0]["reason"].startswith("the teacher call failed")
    bad = gen.generation.samples("docs", rule="judge_error")["items"]
    assert {b["prompt"] for b in bad} == {P[2]} and all("judge call failed" in b["reason"] for b in bad)


def test_a_teacher_that_cannot_be_reached_fails_the_job_at_once(engine, tmp_path):
    from conftest import free_port

    env = {"OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1", "OPENAI_API_KEY": "sk-test"}
    engine._gateway = Gateway(aliases=engine.aliases, cache=engine.llm_cache, pricing=engine.pricing,
                              endpoints=load_endpoints(env), backoff_base=0.01, backoff_max=0.05)  # fmt: skip
    job = engine.generation.submit("docs", seeds_file(tmp_path), {"teacher": TEACHER})
    done = engine.jobs.wait(job.id, 60)
    assert done.status == "failed" and done.error["code"] == "teacher_unavailable"
    assert "cannot use the teacher openai/gpt-4o" in done.error["message"]
    with pytest.raises(errors.NotFound):
        engine.datasets.get("docs")
    assert list(engine.settings.staging_dir.iterdir()) == []  # the staged prompts file is gone


def test_no_key_and_no_server_is_refused_before_the_job(engine, tmp_path):
    engine._gateway = Gateway(aliases=engine.aliases, cache=engine.llm_cache, pricing=engine.pricing,
                              endpoints=load_endpoints({}))  # fmt: skip
    with pytest.raises(
        errors.InvalidInput, match="the teacher openai/gpt-4o cannot be reached: no OPENAI_API_KEY"
    ):
        engine.generation.submit("docs", seeds_file(tmp_path), {"teacher": TEACHER})
    assert engine.jobs.list() == [] and list(engine.settings.staging_dir.iterdir()) == []


def test_nothing_kept_writes_nothing_and_says_why(gen, script, tmp_path):
    script.default = 1
    job = gen.generation.submit("docs", seeds_file(tmp_path), {"teacher": TEACHER})
    done = gen.jobs.wait(job.id, 60)
    assert done.status == "failed" and done.error["code"] == "nothing_kept"
    assert (
        "12 samples asked of 3 prompts, 12 generated, 0 kept; dropped: below_threshold 12;"
        in done.error["message"]
    )
    assert done.error["details"]["report"]["dropped"] == {"below_threshold": 12}
    with pytest.raises(errors.NotFound):
        gen.datasets.get("docs")


# -- the spending cap -------------------------------------------------------------------------------------


def test_spending_cap_stops_cleanly_and_keeps_what_was_finished(engine, mock, script, tmp_path):
    # Prices that make the arithmetic plain: only output tokens cost, 1 USD per 1,000 for the teacher.
    prices = {TEACHER: {"input": 0, "output": 1000}, JUDGE: {"input": 0, "output": 100}}
    gen = point_at(engine, mock, Pricing(prices))
    prompts = [f"Write a docstring for f{i}(x)." for i in range(20)]
    path = seeds_file(tmp_path, prompts)
    est = gen.generation.estimate(path, {"teacher": TEACHER, "n_samples": 2, "expected_output_tokens": 25})
    # 20 prompts x 2 samples x 25 tokens x $0.001 + 40 judge calls x 60 tokens x $0.0001
    assert est["teacher"]["cost_usd"] == pytest.approx(1.0) and est["judge"]["cost_usd"] == pytest.approx(
        0.24
    )
    cap = 0.3
    job = gen.generation.submit("docs", path, {"teacher": TEACHER, "n_samples": 2, "max_cost_usd": cap,
                                               "expected_output_tokens": 25, "concurrency": 2})  # fmt: skip
    done = gen.jobs.wait(job.id, 60)
    assert done.status == "succeeded", done.error
    rep = done.result["run"]["report"]
    assert rep["stopped_by"] == "spending_cap" and rep["stopped_in"] == "generate"
    assert rep["cost_usd"] <= cap
    k = rep["prompts_generated"]
    assert 2 <= k < 20
    # the prompts started were finished: generated, judged and selected; none after them was asked
    assert {p for p, _ in script.teacher_calls} == set(prompts[:k])
    assert rep["dropped"]["spending_cap"] == (20 - k) * 2 and rep["samples"]["not_generated"] == (20 - k) * 2
    assert rep["judge"]["samples_judged"] == 2 * k
    accounted(rep)
    assert [r.prompt for r in rows(gen)] == prompts[:k]
    logs = " ".join(x["message"] for x in gen.jobs.logs(job.id))
    assert "spending cap $0.3: stopping before prompt" in logs
    assert "stopped by the spending cap ($0.3) in the generate phase" in logs
    # the cost reported is the calls' list price
    t = rep["teacher"]
    assert t["cost_usd"] == pytest.approx(t["output_tokens"] / 1000)
    # raising the cap and running again pays only for the prompts not done yet
    before = len(script.teacher_calls)
    job = gen.generation.submit("docs2", path, {"teacher": TEACHER, "n_samples": 2, "max_cost_usd": 10,
                                                "expected_output_tokens": 25})  # fmt: skip
    rep2 = gen.jobs.wait(job.id, 60).result["run"]["report"]
    assert rep2["stopped_by"] is None and rep2["teacher"]["cached"] == 2 * k
    assert len(script.teacher_calls) - before == (20 - k) * 2
    assert rep2["cached_cost_usd"] == pytest.approx(rep["cost_usd"], abs=1e-9)


def test_a_cap_needs_known_prices(engine, mock, tmp_path):
    env = {"OPENAI_BASE_URL": mock.base_url, "OPENAI_API_KEY": "sk-test"}
    engine._gateway = Gateway(aliases=engine.aliases, cache=engine.llm_cache, pricing=engine.pricing,
                              endpoints=load_endpoints(env))  # fmt: skip
    with pytest.raises(
        errors.InvalidInput, match="max_cost_usd needs the price of the teacher openai/no-such-model"
    ):
        engine.generation.submit(
            "docs", seeds_file(tmp_path), {"teacher": "openai/no-such-model", "max_cost_usd": 1}
        )
    est = engine.generation.estimate(seeds_file(tmp_path), {"teacher": "openai/no-such-model"})
    assert est["cost_usd"] is None and est["unknown_prices"] == ["openai/no-such-model"]


def test_estimate_is_prompts_times_samples_times_tokens_times_price(gen, tmp_path):
    path = seeds_file(tmp_path)
    est = gen.generation.estimate(path, {"teacher": TEACHER, "judge": JUDGE, "n_samples": 3,
                                         "params": {"max_tokens": 500}})  # fmt: skip
    tin = sum(3 + 4 + (len(p) + 3) // 4 for p in P)
    assert est["prompts"] == 3 and est["samples"] == 9
    assert est["teacher"]["input_tokens"] == 3 * tin and est["teacher"]["output_tokens"] == 9 * 300
    assert est["teacher"]["cost_usd"] == pytest.approx((3 * tin * 2.5 + 9 * 300 * 10) / 1e6, abs=1e-6)
    assert est["teacher"]["cost_usd_max"] == pytest.approx((3 * tin * 2.5 + 9 * 500 * 10) / 1e6, abs=1e-6)
    assert est["judge"]["calls"] == 9 and est["judge"]["output_tokens"] == 9 * 60
    assert est["cost_usd"] == pytest.approx(est["teacher"]["cost_usd"] + est["judge"]["cost_usd"])
    assert est["teacher"]["price_per_million_tokens"]["input"] == 2.5
    # the estimate is recorded with the job, and the run's report shows it beside the actual cost
    rep = run(gen, path, n_samples=3).result["run"]["report"]
    assert rep["estimate"]["samples"] == 9 and rep["estimate"]["cost_usd"] > rep["cost_usd"]


# -- datasets: new, appended, replaced --------------------------------------------------------------------


def test_existing_dataset_gets_a_new_version(gen, script, tmp_path, write_jsonl):
    from conftest import spec_rows

    up = write_jsonl([{k: r[k] for k in ("row_id", "prompt", "response", "metadata")} for r in spec_rows(5)])
    gen.datasets.upload("docs", up)
    path = seeds_file(tmp_path)
    run(gen, path)
    vs = gen.datasets.versions("docs")
    assert [(v.label, v.status, v.row_count) for v in vs] == [
        ("docs-v1", "frozen", 5),
        ("docs-v2", "active", 8),
    ]
    got = rows(gen)
    assert [r.row_id for r in got[:5]] == [f"r_{i:07d}" for i in range(5)]  # the parent's rows, first
    assert [r.prompt for r in got[5:]] == P
    assert vs[1].provenance[-1]["kind"] == "generation" and vs[1].parent == "docs-v1"
    # the same generation again: the same row ids, replaced (not doubled); the teacher is not asked again
    calls = len(script.teacher_calls)
    run(gen, path)
    assert gen.datasets.version("docs").row_count == 8 and len(script.teacher_calls) == calls
    # mode="replace": the next version holds the generated rows only
    run(gen, path, mode="replace")
    assert [v.row_count for v in gen.datasets.versions("docs")] == [5, 8, 8, 3]
    assert len(gen.generation.runs("docs")) == 3


# -- seed files -------------------------------------------------------------------------------------------


def test_seed_formats_and_templates():
    txt = parse_seeds(b"first prompt\n\n  second prompt  \nfirst prompt\n", name="s.txt")
    assert [s.prompt for s in txt.items] == ["first prompt", "second prompt"]
    assert txt.duplicates == [{"line": 4, "same_as": 1}] and txt.blank_lines == 1 and txt.format == "txt"
    tpl = parse_seeds(b"add\nsub\n", SeedOptions(template="Write a docstring for {prompt}()."), name="s.txt")
    assert [s.prompt for s in tpl.items] == ["Write a docstring for add().", "Write a docstring for sub()."]
    csv = parse_seeds(b'name,code,lang\nadd,"def add(a, b):\n    return a + b",py\n', name="fns.csv",
                      opts=SeedOptions(template="Document {name}:\n{code}", system="Be brief."))  # fmt: skip
    (c,) = csv.items
    assert c.line == 2 and c.metadata == {
        "name": "add",
        "code": "def add(a, b):\n    return a + b",
        "lang": "py",
    }
    assert c.prompt == [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Document add:\ndef add(a, b):\n    return a + b"}]  # fmt: skip
    csv2 = parse_seeds(b"prompt,topic\nhello,greet\n", name="p.csv")
    assert csv2.items[0].prompt == "hello" and csv2.items[0].metadata == {"topic": "greet"}
    js = parse_seeds(
        b'{"prompt": "a", "system": "sys", "metadata": {"tags": ["x"]}, "level": 2}\n'
        b'{"prompt": [{"role": "user", "content": "b"}]}\n',
        SeedOptions(prompt_field="prompt", template=None), name="p.jsonl",
    )  # fmt: skip
    assert js.items[0].messages == [{"role": "system", "content": "sys"}, {"role": "user", "content": "a"}]
    assert js.items[0].metadata == {"level": 2, "tags": ["x"]} and js.items[1].prompt == "b"
    js2 = parse_seeds(b'{"q": "c", "n": 3}\n', SeedOptions(template="{q} times {n}"), name="p.jsonl")
    assert js2.items[0].prompt == "c times 3" and js2.items[0].metadata == {"q": "c", "n": 3}
    assert (
        parse_seeds(b"{{literal}} {prompt}\n", SeedOptions(template="{{x}} {prompt}"), name="s.txt")
        .items[0]
        .prompt
        == "{x} {{literal}} {prompt}"
    )
    assert txt.sha256.startswith("sha256:") and len(txt.sha256) == 71


BAD_FILES = [
    ("empty.txt", b"", {}, "empty.txt: the file is empty: it holds no prompts"),
    ("blank.txt", b"\n  \n\n", {}, "blank.txt: the file is empty"),
    ("bad.jsonl", b'{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c"\n', {}, "bad.jsonl, line 3: not valid JSON"),
    ("list.jsonl", b'{"prompt": "a"}\n["b"]\n', {}, "list.jsonl, line 2: each line must be a JSON object, not list"),
    ("noprompt.jsonl", b'{"prompt": "a"}\n{"text": "b"}\n', {}, "noprompt.jsonl, line 2: no 'prompt' field (fields: text)"),
    ("num.jsonl", b'{"prompt": 7}\n', {}, "num.jsonl, line 1: field 'prompt' must be text"),
    ("nocol.csv", b"text,topic\nhello,greet\n", {}, "nocol.csv, line 1: no 'prompt' column (columns: text, topic)"),
    ("header.csv", b"prompt\n", {}, "header.csv: the file holds no prompts after the header"),
    ("ragged.csv", b"prompt,topic\na,b\nc,d,e\n", {}, "ragged.csv, line 3: 3 values for 2 columns"),
    ("tpl.csv", b"name,lang\nadd,py\n", {"prompt_template": "Document {code}"},
     "tpl.csv, line 1: template variable {code} is not a column (columns: name, lang)"),
    ("tpl.jsonl", b'{"code": "x"}\n{"name": "y"}\n', {"prompt_template": "Document {code}"},
     "tpl.jsonl, line 2: template variable {code} has no value on this line (fields: name)"),
    ("tpl.txt", b"add\n", {"prompt_template": "Document {code}"},
     "tpl.txt, line 1: template variable {code}: a text file has one column, {prompt}"),
    ("attr.txt", b"add\n", {"prompt_template": "{prompt.__class__}"}, "only plain column names are allowed"),
    ("brace.txt", b"add\n", {"prompt_template": "Document {prompt"}, "brace.txt: the prompt template is not valid"),
    ("latin1.txt", "ok\ncaf\u00e9\n".encode("latin-1"), {}, "latin1.txt, line 2: not UTF-8 text (byte 0xe9)"),
    ("meta.jsonl", b'{"prompt": "a", "metadata": {"judge_score": 1}}\n', {},
     "meta.jsonl, line 1: metadata key 'judge_score' is set by generation"),
    ("tags.jsonl", b'{"prompt": "a"}\n{"prompt": "b", "tags": "x"}\n', {},
     "tags.jsonl, line 2: metadata.tags must be a list of strings"),
    ("seeds.dat", b"a\n", {}, "cannot tell the format from the name 'seeds.dat'"),
]  # fmt: skip


@pytest.mark.parametrize("name,data,opts,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_prompt_files_name_the_line(name, data, opts, message):
    with pytest.raises(errors.InvalidInput) as e:
        cfg = GenerationConfig.build({"teacher": TEACHER}, **opts)
        parse_seeds(data, cfg.seeds, name=name)
    assert message in e.value.message, e.value.message


def test_bad_prompt_files_over_http_leave_nothing_behind(gen, client, tmp_path):
    for name, data, opts, message in BAD_FILES[:7] + BAD_FILES[9:11]:
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(errors.InvalidInput) as e:
            client.generate_dataset(name="docs", prompts_path=p, teacher=TEACHER, **opts)
        assert message in str(e.value), str(e.value)
        with pytest.raises(errors.InvalidInput):
            client.estimate_generation(p, TEACHER, **opts)
    assert gen.jobs.list() == [] and list(gen.settings.staging_dir.iterdir()) == []
    with pytest.raises(errors.NotFound):
        gen.datasets.get("docs")
    with pytest.raises(errors.InvalidInput, match="no such file"):
        client.generate_dataset(name="docs", prompts_path=tmp_path / "nope.txt", teacher=TEACHER)
    # the server refuses a request without a config, or with a bad one
    r = httpx.post(f"{client.base_url}/v1/datasets/docs/generate", files={"file": ("a.txt", b"hi\n")})
    assert r.status_code == 422 and "form field 'config'" in r.json()["error"]["message"]
    r = httpx.post(f"{client.base_url}/v1/datasets/docs/generate", files={"file": ("a.txt", b"hi\n")},
                   data={"config": json.dumps({"teacher": TEACHER, "n_samples": 0})})  # fmt: skip
    assert r.status_code == 422 and "n_samples" in r.json()["error"]["message"]
    assert list(gen.settings.staging_dir.iterdir()) == []


# -- the faces --------------------------------------------------------------------------------------------


def test_client_and_cli(gen, client, script, tmp_path):
    path = tmp_path / "fns.csv"
    path.write_text("name,lang\nadd,py\nsub,py\nmul,py\n", encoding="utf-8")
    est = client.estimate_generation(
        path, TEACHER, 2, JUDGE, prompt_template="Document {name}()", max_cost_usd=5
    )
    assert est["samples"] == 6 and est["within_cap"] is True and est["seeds"]["format"] == "csv"
    job = client.generate_dataset(name="fns", prompts_path=path, teacher=TEACHER, n_samples=2, judge=JUDGE,
                                  prompt_template="Document {name}()", keep=1, temperature=0.3, wait=False)  # fmt: skip
    assert job.kind == "dataset.generate"
    done = job.wait()
    assert done.status == "succeeded"
    got = client.get_dataset("fns")
    assert got.label == "fns-v1" and got.row_count == 3
    assert [r.prompt for r in got.rows()] == ["Document add()", "Document sub()", "Document mul()"]
    assert next(iter(got.rows())).metadata["name"] == "add"
    rep = client.generation_report("fns")
    assert rep["output"] == "fns-v1" and rep["config"]["params"] == {"temperature": 0.3}
    assert rep["prompts"]["file"] == "fns.csv" and rep["report"]["kept"] == 3
    assert len(list(client.generation_samples("fns", page_size=2))) == 6
    assert len(client.generation_runs("fns")) == 1
    # the CLI: the estimate alone, then a run
    url = client.base_url
    r = CliRunner().invoke(main, ["--url", url, "generate", "fns2", str(path), "--teacher", TEACHER, "-n", "2",
                                  "--template", "Document {name}()", "--estimate"], env=CLEAN_ENV)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (
        "estimate: 3 prompts x 2 samples = 6 teacher calls" in r.output
        and "teacher openai/gpt-4o" in r.output
    )
    r = CliRunner().invoke(main, ["--url", url, "generate", "fns2", str(path), "--teacher", TEACHER, "-n", "2",
                                  "--template", "Document {name}()", "--keep", "all", "--threshold", "0.25"],
                           env=CLEAN_ENV)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "fns2-v1  active  6 rows" in r.output and "6 samples asked, 6 generated, 6 kept" in r.output
    r = CliRunner().invoke(main, ["--url", url, "generation", "samples", "fns2", "--json"], env=CLEAN_ENV)
    assert r.exit_code == 0 and len(r.output.strip().splitlines()) == 6
    r = CliRunner().invoke(main, ["--url", url, "generation", "runs", "fns2"], env=CLEAN_ENV)
    assert r.exit_code == 0 and "fns2-v1" in r.output
    r = CliRunner().invoke(main, ["--url", url, "generate", "x", str(tmp_path / "none.txt"), "--teacher", TEACHER],
                           env=CLEAN_ENV)  # fmt: skip
    assert r.exit_code != 0 and "no such file" in r.output


def test_progress_per_phase_and_cancel(engine, tmp_path):
    prompts = [f"Write a docstring for g{i}(x)." for i in range(12)]
    with MockLLM(script=Script(), latency_ms=30) as m:
        gen = point_at(engine, m)
        job = gen.generation.submit(
            "docs", seeds_file(tmp_path, prompts), {"teacher": TEACHER, "concurrency": 2}
        )
        seen: list[tuple[float, str]] = []
        while not (info := gen.jobs.get(job.id)).done:
            seen.append((info.progress, info.message))
            time.sleep(0.02)
        assert info.status == "succeeded"
        phases = [msg.split(":")[0] for _, msg in seen if ":" in msg]
        assert "generate" in phases and "judge" in phases
        assert phases.index("generate") < phases.index("judge")
        assert [p for p, _ in seen] == sorted(p for p, _ in seen)  # it only moves forward
        assert any(msg.startswith("generate: ") and " of 48 samples, $" in msg for _, msg in seen)
        # cancel mid-generation: nothing is written, the staged file is removed
        job = gen.generation.submit("docs2", seeds_file(tmp_path, [p + "!" for p in prompts]),
                                    {"teacher": TEACHER, "concurrency": 1})  # fmt: skip
        deadline = time.monotonic() + 30
        while gen.jobs.get(job.id).progress < 0.05:  # a few samples in
            assert time.monotonic() < deadline
            time.sleep(0.01)
        gen.jobs.cancel(job.id)
        info = gen.jobs.wait(job.id, 30)
        assert info.status == "cancelled"
    with pytest.raises(errors.NotFound):
        gen.datasets.get("docs2")
    assert list(gen.settings.staging_dir.iterdir()) == []


def test_a_csv_seed_prompt_may_be_longer_than_the_csv_modules_default_limit() -> None:
    """Python's csv refuses fields over 131,072 characters unless told otherwise; a long seed prompt is fine."""
    import csv

    limit = csv.field_size_limit()
    csv.field_size_limit(131_072)  # as in a fresh process, whatever an earlier test lifted
    try:
        long = "word " * 60_000
        seeds = parse_seeds(f'prompt,topic\n"{long}",x\nshort,y\n'.encode(), name="long.csv")
        assert [s.messages[-1]["content"] for s in seeds.items] == [long, "short"]
    finally:
        csv.field_size_limit(limit)
