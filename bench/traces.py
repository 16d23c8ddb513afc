"""Traces benchmark (run by hand, never in CI).

1. Proxy overhead: N chat calls at 32 in flight against `opentracy mock-llm --latency-ms 200` (its own
   process), once straight to the mock (the anchor) and once through `opentracy serve` (its own process, on
   SQLite, OPENAI_BASE_URL pointing at the mock), in the same run; non-streaming and streaming. Reports
   calls/s, p50/p90 latency, the p50 added by the proxy, and checks that every call became a trace.
2. Batch ingest: M traces through `POST /v1/traces` in batches, to the same server (SQLite); traces/s.

    .venv/bin/python bench/traces.py [--calls 2000] [--ingest 200000] [--batch 1000] [--repeat 3]
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

import httpx

MSG = [{"role": "user", "content": "Classify this ticket: where can I download my invoice for March?"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{what} did not start")


def start(args: list[str], env: dict[str, str], what: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "opentracy.cli", *args, "--port", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc, what)
    return proc, port


async def drive(base_url: str, calls: int, in_flight: int, stream: bool) -> dict:
    import httpx2
    import openai

    limits = httpx2.Limits(max_connections=in_flight * 2, max_keepalive_connections=in_flight)
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key="x", max_retries=0, http_client=openai.DefaultAioHttpClient(limits=limits)
    )
    sem = asyncio.Semaphore(in_flight)
    lat: list[float] = []

    async def one(i: int) -> None:
        async with sem:
            t = time.perf_counter()
            if stream:
                s = await client.chat.completions.create(
                    model="gpt-4o-mini", messages=MSG, seed=i, stream=True
                )
                async for _ in s:
                    pass
            else:
                await client.chat.completions.create(model="gpt-4o-mini", messages=MSG, seed=i)
            lat.append(time.perf_counter() - t)

    await asyncio.gather(*(one(-1 - i) for i in range(in_flight)))  # warm the pools
    lat.clear()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(calls)))
    wall = time.perf_counter() - t0
    await client.close()
    lat.sort()
    return {
        "calls_per_s": calls / wall,
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p90_ms": lat[int(len(lat) * 0.9)] * 1000,
        "seconds": wall,
    }


def count_traces(url: str, expect: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    n = -1
    while time.monotonic() < deadline:
        n = httpx.get(f"{url}/v1/traces/count", params={"source": "proxy"}).json()["count"]
        if n >= expect:
            return n
        time.sleep(0.2)
    return n


def make_traces(n: int, start: int) -> list[dict]:
    words = ["card", "invoice", "transfer", "refund", "balance", "pin", "account", "top-up", "limit", "fee"]
    out = []
    for i in range(start, start + n):
        prompt = " ".join(words[(i * 7 + k) % len(words)] for k in range(40))
        out.append(
            {
                "model": "openai/gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "Classify the ticket."},
                    {"role": "user", "content": prompt},
                ],
                "response": words[i % len(words)],
                "usage": {"input_tokens": 60, "output_tokens": 2},
                "latency_ms": 300 + i % 100,
                "tags": ["bench", "prod" if i % 2 else "staging"],
                "user_id": f"u{i % 500}",
                "metadata": {"team": "support", "i": i},
            }
        )
    return out


def bench_ingest(url: str, total: int, batch: int) -> dict:
    bodies = [json.dumps(make_traces(batch, k)).encode() for k in range(0, total, batch)]
    with httpx.Client(base_url=url, timeout=120) as h:
        h.post("/v1/traces", content=bodies[0][:0] or json.dumps(make_traces(10, -10)).encode())  # warm
        t0 = time.perf_counter()
        for b in bodies:
            r = h.post("/v1/traces", content=b, headers={"content-type": "application/json"})
            r.raise_for_status()
        wall = time.perf_counter() - t0
    return {"traces": total, "batch": batch, "seconds": wall, "traces_per_s": total / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--in-flight", type=int, default=32)
    ap.add_argument("--latency-ms", type=int, default=200)
    ap.add_argument("--ingest", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="bench-traces-")
    mock, mport = start(["mock-llm", "--latency-ms", str(args.latency_ms)], {}, "mock-llm")
    mock_url = f"http://127.0.0.1:{mport}/v1"
    env = {
        "OPENTRACY_HOME": home,
        "OPENAI_BASE_URL": mock_url,
        "OPENAI_API_KEY": "x",
        "OPENTRACY_API_KEY": "",
    }
    server, sport = start(["serve", "--log-level", "warning"], env, "opentracy serve")
    url = f"http://127.0.0.1:{sport}"
    rows: list[dict] = []
    recorded = 0
    try:
        for stream in (False, True):
            for name, base in (("direct", mock_url), ("proxy", f"{url}/v1")):
                runs = [
                    asyncio.run(drive(base, args.calls, args.in_flight, stream)) for _ in range(args.repeat)
                ]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                med.update(path=name, stream=stream)
                rows.append(med)
                print(f"  {'stream' if stream else 'plain ':6s} {name:6s} {med['calls_per_s']:7.1f} calls/s  "
                      f"p50 {med['p50_ms']:6.1f} ms  p90 {med['p90_ms']:6.1f} ms", flush=True)  # fmt: skip
        expect = 2 * args.repeat * (args.calls + args.in_flight)
        recorded = count_traces(url, expect)
        ingest = [bench_ingest(url, args.ingest, args.batch) for _ in range(args.repeat)]
        ing = {k: statistics.median(r[k] for r in ingest) for k in ingest[0]}
        print(
            f"  ingest {ing['traces_per_s']:,.0f} traces/s ({args.ingest:,} in batches of {args.batch})",
            flush=True,
        )
    finally:
        server.terminate()
        server.wait(30)
        mock.terminate()
        mock.wait(10)
    print()
    print(
        f"{args.calls} calls at {args.in_flight} in flight, {args.latency_ms} ms upstream latency, medians of {args.repeat}"
    )
    print(f"{'mode':6}  {'path':6}  {'calls/s':>8}  {'p50 ms':>7}  {'p90 ms':>7}  vs direct")
    for stream in (False, True):
        d = next(r for r in rows if r["stream"] == stream and r["path"] == "direct")
        p = next(r for r in rows if r["stream"] == stream and r["path"] == "proxy")
        for r in (d, p):
            extra = ""
            if r is p:
                added = p["p50_ms"] - d["p50_ms"]
                share = p["calls_per_s"] / d["calls_per_s"]
                ok = added < 2 and share >= 0.95
                extra = f"+{added:.2f} ms p50, {share:.1%} throughput (goal < 2 ms, >= 95%): {'met' if ok else 'NOT met'}"
            print(
                f"{'stream' if stream else 'plain':6}  {r['path']:6}  {r['calls_per_s']:8.1f}  {r['p50_ms']:7.1f}  {r['p90_ms']:7.1f}  {extra}"
            )
    print(
        f"traces recorded: {recorded} of {expect} proxied calls ({'all' if recorded == expect else 'MISSING SOME'})"
    )
    ok = ing["traces_per_s"] >= 20000
    print(
        f"batch ingest (SQLite): {ing['traces_per_s']:,.0f} traces/s (goal >= 20,000): {'met' if ok else 'NOT met'}"
    )
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    path = out / f"traces-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(
        json.dumps(
            {"args": vars(args), "proxy": rows, "recorded": recorded, "expected": expect, "ingest": ing,
             "machine": platform.platform(), "cpus": os.cpu_count()},
            indent=2,
        )
    )  # fmt: skip
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
