"""Synthetic generation benchmark (run by hand, never in CI).

P prompts × N samples against `opentracy mock-llm --latency-ms L` in its own process, teacher openai/gpt-4o
and judge openai/gpt-4o-mini, C calls in flight, on a fresh SQLite catalog each time:

- **ours**: `Generator.run_sync` (generate → dedupe → judge → select), the pipeline a job runs;
- **anchor**: the same calls without the pipeline, measured in the same run: the teacher's P×N calls through
  `gateway.complete` under a semaphore of C, then the curation `Judge.score_rows` on the answers (also C in
  flight). The difference is what the pipeline itself costs (admission, budget, dedupe, selection);
- **re-run**: `ours` again on the same catalog: every answer comes from the cache (what a resumed job pays);
- **cap**: `ours` with spending caps at 10%, 30% and 60% of the estimate: the cost reached beside the cap
  (it must not pass it) and how much of it was used.

    .venv/bin/python bench/generation.py [--prompts 200] [--samples 4] [--latency-ms 100] [--in-flight 32]
                                         [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

TEACHER, JUDGE = "openai/gpt-4o", "openai/gpt-4o-mini"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mock(latency_ms: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opentracy.cli",
            "mock-llm",
            "--port",
            str(port),
            "--latency-ms",
            str(latency_ms),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("mock-llm did not start")


def engine_at(base_url: str):  # type: ignore[no-untyped-def]
    from opentracy.config import Settings
    from opentracy.engine import Engine
    from opentracy.llm.gateway import Gateway, load_endpoints

    eng = Engine(Settings.from_env(home=tempfile.mkdtemp(prefix="bench-gen-"))).start()
    eng._gateway = Gateway(aliases=eng.aliases, cache=eng.llm_cache, pricing=eng.pricing,
                           endpoints=load_endpoints({"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "x"}))  # fmt: skip
    return eng


def seeds(n: int):  # type: ignore[no-untyped-def]
    from opentracy.distillation.generation import parse_seeds

    text = "".join(f"Write a docstring for def f{i}(x, y): return x * {i} + y\n" for i in range(n))
    return parse_seeds(text.encode(), name="seeds.txt")


def run_ours(eng, cfg, s) -> tuple[float, dict]:  # type: ignore[no-untyped-def]
    from opentracy.distillation.generation import Generator

    t0 = time.perf_counter()
    out = Generator(eng.gateway, eng.pricing, cfg, s).run_sync()
    return time.perf_counter() - t0, out.report


def run_anchor(eng, cfg, s) -> float:  # type: ignore[no-untyped-def]
    from opentracy.distillation.curation import Judge

    gw = eng.gateway
    t0 = time.perf_counter()

    async def main() -> None:
        sem = asyncio.Semaphore(cfg.concurrency)

        async def one(seed, k):  # type: ignore[no-untyped-def]
            async with sem:
                c = await gw.complete(TEACHER, seed.messages, params=cfg.params, sample=k, internal=True)
                return {"row_id": f"{seed.line}-{k}", "prompt": seed.prompt, "response": c.content}

        rows = await asyncio.gather(*(one(x, k) for x in s.items for k in range(cfg.n_samples)))
        await Judge(gw, cfg.judge, concurrency=cfg.concurrency).score_rows(rows)
        await gw.aclose()

    asyncio.run(main())
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--latency-ms", type=int, default=100)
    ap.add_argument("--in-flight", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    from opentracy.distillation.generation import GenerationConfig

    cfg = GenerationConfig.build(teacher=TEACHER, judge=JUDGE, n_samples=a.samples, concurrency=a.in_flight,
                                 expected_output_tokens=30)  # fmt: skip
    s = seeds(a.prompts)
    calls = 2 * a.prompts * a.samples
    ideal = calls / a.in_flight * a.latency_ms / 1000
    proc, url = start_mock(a.latency_ms)
    times: dict[str, list[float]] = {"anchor": [], "ours": [], "rerun": []}
    caps: list[dict] = []
    try:
        for _ in range(a.repeat):
            eng = engine_at(url)
            try:
                times["anchor"].append(run_anchor(eng, cfg, s))
            finally:
                eng.close()
            eng = engine_at(url)
            try:
                t, rep = run_ours(eng, cfg, s)
                times["ours"].append(t)
                t2, rep2 = run_ours(eng, cfg, s)
                assert rep2["teacher"]["cached"] == rep2["teacher"]["calls"] == a.prompts * a.samples
                times["rerun"].append(t2)
                full = rep["cost_usd"]
            finally:
                eng.close()
        for share in (0.1, 0.3, 0.6):
            eng = engine_at(url)
            try:
                capped = cfg.model_copy(update={"max_cost_usd": round(full * share, 6)})
                _, rep = run_ours(eng, capped, s)
                caps.append({"cap_share_of_full_cost": share, "cap_usd": capped.max_cost_usd,
                             "cost_usd": rep["cost_usd"], "used": round(rep["cost_usd"] / capped.max_cost_usd, 3),
                             "prompts_done": rep["prompts_generated"], "stopped_by": rep["stopped_by"]})  # fmt: skip
            finally:
                eng.close()
    finally:
        proc.kill()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{a.prompts} prompts x {a.samples} samples = {calls} calls (teacher + judge), {a.in_flight} in flight, "
          f"mock at {a.latency_ms} ms; ideal {ideal:.2f} s; median of {a.repeat}")  # fmt: skip
    print(f"{'':<28}{'seconds':>9}{'vs anchor':>11}{'share of ideal':>16}")
    for k, label in (("anchor", "anchor (gateway + Judge)"), ("ours", "ours (Generator)"),
                     ("rerun", "ours, re-run (all cached)")):  # fmt: skip
        print(f"{label:<28}{med[k]:>9.2f}{med[k] / med['anchor']:>10.2f}x{ideal / med[k]:>15.0%}")
    print("spending cap:")
    for c in caps:
        print(f"  cap {c['cap_share_of_full_cost']:.0%} of the full cost (${c['cap_usd']}): spent ${c['cost_usd']} "
              f"({c['used']:.0%} of the cap), {c['prompts_done']} prompts done, stopped_by={c['stopped_by']}")  # fmt: skip
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    dest = out / f"generation-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    dest.write_text(json.dumps({"args": vars(a), "ideal_s": ideal, "seconds": times, "median": med, "caps": caps,
                                "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                                            "cpus": os.cpu_count()}}, indent=2))  # fmt: skip
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
