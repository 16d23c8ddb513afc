"""Generation on a real server: the spec's sample verbatim (with `opentracy mock-llm` behind
`OPENAI_BASE_URL`), and a server process killed mid-generation that resumes without paying again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import free_port
from test_client import SPEC_FILE, FixedPortServer, _port_8000_problem
from test_restart import ServerProcess, wait_end

from opentracy.testing import MockLLM

# The synthetic sample of spec/datasets.md, character for character, after the page's client set-up.
SPEC_SETUP = """from opentracy import Distiller

d = Distiller(base_url="http://localhost:8000")
"""
SPEC_SAMPLE = """d.generate_dataset(
    name="python-docstrings-v1",
    prompts_path="./data/prompt_seeds.txt",
    teacher="openai/gpt-4o",
    n_samples=4,
    judge="openai/gpt-4o-mini",
)
"""
SEEDS = [
    "Write a docstring for def add(a, b): return a + b",
    "Write a docstring for def slugify(text): return '-'.join(text.lower().split())",
    "Write a docstring for def mean(xs): return sum(xs) / len(xs)",
    "Write a docstring for def clamp(x, lo, hi): return max(lo, min(x, hi))",
    "Write a docstring for def is_even(n): return n % 2 == 0",
    "Write a docstring for def flatten(xss): return [x for xs in xss for x in xs]",
]


class MockLLMProcess:
    """`opentracy mock-llm --port N` in a subprocess: the standalone scripted server, as a user runs it."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"mock-{self.port}.log"

    def __enter__(self) -> MockLLMProcess:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "opentracy.cli", "mock-llm", "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "opentracy mock-llm did not start"
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait(10)


def test_spec_generate_sample_runs_verbatim(engine, tmp_path, monkeypatch):
    if SPEC_FILE.exists():  # keep the copies above honest where the spec is at hand
        text = SPEC_FILE.read_text(encoding="utf-8")
        assert SPEC_SAMPLE in text and SPEC_SETUP in text
    problem = _port_8000_problem()
    assert problem is None, (
        f"this test runs the spec's sample, which talks to http://localhost:8000, but {problem}"
    )
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prompt_seeds.txt").write_text("\n".join(SEEDS) + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENTRACY_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with MockLLMProcess(tmp_path) as mock:
        # configuration alone: the server's `openai/...` models reach the mock through OPENAI_BASE_URL
        monkeypatch.setenv("OPENAI_BASE_URL", f"{mock.url}/v1")
        ns: dict = {}
        with FixedPortServer(engine, 8000):
            exec(compile(SPEC_SETUP + SPEC_SAMPLE, "spec/datasets.md", "exec"), ns)
            try:
                d = ns["d"]
                ds = d.get_dataset("python-docstrings-v1")
                rows = list(ds.rows())
                report = d.generation_report("python-docstrings-v1")
            finally:
                ns["d"].close()
    assert ds.label == "python-docstrings-v1-v1" and ds.status == "active"
    rep = report["report"]
    assert rep["prompts"] == 6 and rep["samples"]["requested"] == 24 and rep["samples"]["generated"] == 24
    assert rep["teacher"]["model"] == "openai/gpt-4o" and rep["teacher"]["calls"] == 24
    assert rep["judge"]["model"] == "openai/gpt-4o-mini" and rep["judge"]["errors"] == 0
    assert (
        rep["kept"] == ds.row_count == len(rows) and 1 <= len(rows) <= 6
    )  # keep="best": at most one a prompt
    assert rep["samples"]["requested"] == rep["kept"] + sum(rep["dropped"].values())
    assert len({r.prompt for r in rows}) == len(rows) and {r.prompt for r in rows} <= set(SEEDS)
    for r in rows:
        assert r.metadata["teacher_model"] == "openai/gpt-4o" and 0.5 <= r.metadata["judge_score"] <= 1
        assert r.metadata["judge"]["model"] == "openai/gpt-4o-mini" and r.metadata["sample"] in range(4)
        assert r.response
    step = ds.provenance[-1]
    assert step["kind"] == "generation" and step["prompts"]["file"] == "prompt_seeds.txt"
    assert step["prompts_sha256"].startswith("sha256:") and step["config"]["n_samples"] == 4


def teacher_requests(mock: MockLLM) -> list[tuple[str, int]]:
    return [
        (r["body"]["messages"][-1]["content"], r["body"].get("seed"))
        for r in list(mock.requests)
        if r["path"].endswith("/chat/completions") and not r["body"].get("response_format")
    ]


def test_generation_killed_mid_run_resumes_without_paying_again(tmp_path, db_url, monkeypatch):
    home = tmp_path / "home"
    prompts = [f"Write a docstring for def f{i}(x): return x * {i}" for i in range(60)]
    src = tmp_path / "seeds.txt"
    src.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    in_flight = 4
    config = {
        "teacher": "openai/gpt-4o",
        "judge": "openai/gpt-4o-mini",
        "n_samples": 4,
        "concurrency": in_flight,
    }
    with MockLLM(latency_ms=40) as mock:
        monkeypatch.setenv("OPENAI_BASE_URL", mock.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        with ServerProcess(home, db_url, free_port()) as srv:
            with open(src, "rb") as f:
                r = httpx.post(f"{srv.url}/v1/datasets/docs/generate", files={"file": ("seeds.txt", f)},
                               data={"config": json.dumps(config)}, timeout=30)  # fmt: skip
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            assert r.json()["params"]["estimate"]["samples"] == 240
            deadline = time.monotonic() + 60
            while len(teacher_requests(mock)) < 100:
                assert time.monotonic() < deadline, "the teacher never got going"
                time.sleep(0.01)
            srv.kill()
        time.sleep(0.3)  # calls in flight at the kill may still arrive
        before = teacher_requests(mock)
        mock.reset()
        assert 100 <= len(before) < 200  # killed half-way through the generate phase
        staged = list((home / "staging").iterdir())
        assert len(staged) == 1  # the prompts file waits for the resumed job
        with ServerProcess(home, db_url, free_port()) as srv:
            done = wait_end(srv.url, job_id, timeout=120)
            assert done["status"] == "succeeded", done
            assert done["attempts"] == 2
            logs = httpx.get(f"{srv.url}/v1/jobs/{job_id}/logs").json()["items"]
            versions = httpx.get(f"{srv.url}/v1/datasets/docs/versions").json()["items"]
        after = teacher_requests(mock)
    rep = done["result"]["run"]["report"]
    # Nothing answered before the kill is asked again; at most the calls in flight at the kill are repeated.
    repeated = set(before) & set(after)
    assert len(repeated) <= in_flight, len(repeated)
    assert len(before) + len(after) <= 240 + in_flight
    assert rep["teacher"]["cached"] >= len(before) - in_flight
    assert rep["teacher"]["calls"] == 240 and rep["samples"]["generated"] == 240
    assert rep["cached_cost_usd"] > 0 and rep["cost_usd"] > rep["cached_cost_usd"]
    assert rep["samples"]["requested"] == rep["kept"] + sum(rep["dropped"].values())
    assert any("answers received before come from the cache" in x["message"] for x in logs)
    assert [(v["label"], v["status"]) for v in versions] == [("docs-v1", "active")]
    assert versions[0]["row_count"] == rep["kept"]
    assert not os.listdir(home / "staging")  # the staged file is removed once the job ended
