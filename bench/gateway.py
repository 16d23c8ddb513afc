"""Gateway throughput benchmark (run by hand, never in CI).

2,000 chat calls at 32 and at 128 in flight against `opentracy mock-llm --latency-ms 200` running in its own
process, once through the raw `openai` SDK (AsyncOpenAI, the anchor) and once through the gateway (cache
off, cost accounting on), in the same run. Reports calls/s beside the ideal (in flight / latency), the
share of ideal, and client CPU ms per call (this process only; the server is another process).

    .venv/bin/python bench/gateway.py [--calls 2000] [--latency-ms 200] [--repeat 3]
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
import time
from datetime import UTC, datetime
from pathlib import Path

MSG = [{"role": "user", "content": "Classify this ticket: where can I download my invoice for March?"}]


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


async def run_raw(
    base_url: str, calls: int, in_flight: int, aiohttp: bool = False
) -> tuple[float, float, int]:
    import openai

    kw = {}
    if aiohttp:  # the transport the gateway uses, with the same pool size
        import httpx2

        limits = httpx2.Limits(max_connections=max(in_flight * 2, 100), max_keepalive_connections=in_flight)
        kw["http_client"] = openai.DefaultAioHttpClient(limits=limits)
    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, **kw)
    sem = asyncio.Semaphore(in_flight)
    ok = 0

    async def one(i: int) -> None:
        nonlocal ok
        async with sem:
            r = await client.chat.completions.create(model="gpt-4o-mini", messages=MSG, seed=i)
            ok += bool(r.choices)

    await one(-1)  # warm up the connection pool
    ok = 0
    t, c = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(calls)))
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    await client.close()
    return wall, cpu, ok


async def run_gateway(base_url: str, calls: int, in_flight: int) -> tuple[float, float, int]:
    from opentracy.llm.gateway import Endpoint, Gateway
    from opentracy.llm.pricing import Pricing

    gw = Gateway(endpoints={"openai": Endpoint("openai", base_url, "x", in_flight)}, pricing=Pricing())
    await gw.complete("openai/gpt-4o-mini", MSG, sample=-1)  # warm up
    t, c = time.perf_counter(), time.process_time()
    out = await gw.complete_many(
        [{"model": "openai/gpt-4o-mini", "messages": MSG, "sample": i} for i in range(calls)]
    )
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    await gw.aclose()
    bad = [x for x in out if isinstance(x, BaseException)]
    if bad:
        raise SystemExit(f"{len(bad)} gateway calls failed, e.g. {bad[0]!r}")
    assert all(x.cost_usd is not None and x.cost_usd > 0 for x in out)  # accounting really on
    return wall, cpu, len(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--latency-ms", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--in-flight", type=int, nargs="+", default=[32, 128])
    args = ap.parse_args()
    proc, base_url = start_mock(args.latency_ms)
    rows = []
    try:
        for n in args.in_flight:
            ideal = n / (args.latency_ms / 1000)
            clients = (
                ("raw openai SDK", run_raw),
                ("raw SDK+aiohttp", lambda u, c, n: run_raw(u, c, n, aiohttp=True)),
                ("gateway", run_gateway),
            )
            for name, fn in clients:
                walls, cpus = [], []
                for _ in range(args.repeat):
                    wall, cpu, ok = asyncio.run(fn(base_url, args.calls, n))
                    assert ok == args.calls
                    walls.append(wall)
                    cpus.append(cpu)
                wall, cpu = statistics.median(walls), statistics.median(cpus)
                rate = args.calls / wall
                rows.append(
                    {
                        "in_flight": n,
                        "client": name,
                        "seconds": round(wall, 3),
                        "calls_per_s": round(rate, 1),
                        "ideal_calls_per_s": round(ideal, 1),
                        "share_of_ideal": round(rate / ideal, 3),
                        "cpu_ms_per_call": round(cpu / args.calls * 1000, 3),
                    }
                )
                print(f"  {n:4d} in flight  {name:15s} {rate:7.1f} calls/s ({rate / ideal:.0%} of ideal)  "
                      f"{cpu / args.calls * 1000:.2f} ms CPU/call", flush=True)  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(10)
    goals = {32: 0.95, 128: 0.85}
    print()
    print(f"{args.calls} calls, {args.latency_ms} ms upstream latency, medians of {args.repeat}")
    print(
        f"{'in flight':>9}  {'client':15}  {'calls/s':>8}  {'ideal':>6}  {'share':>6}  {'CPU ms/call':>11}  goal"
    )
    for r in rows:
        goal = ""
        if r["client"] == "gateway":
            g = goals.get(r["in_flight"])
            met = (g is None or r["share_of_ideal"] >= g) and r["cpu_ms_per_call"] < 1.5
            goal = f">= {g:.0%} of ideal, < 1.5 ms CPU: {'met' if met else 'NOT met'}" if g else ""
        print(f"{r['in_flight']:>9}  {r['client']:15}  {r['calls_per_s']:>8}  {r['ideal_calls_per_s']:>6}  "
              f"{r['share_of_ideal']:>6.0%}  {r['cpu_ms_per_call']:>11}  {goal}")  # fmt: skip
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    path = out / f"gateway-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    import openai

    path.write_text(
        json.dumps(
            {
                "calls": args.calls,
                "latency_ms": args.latency_ms,
                "repeat": args.repeat,
                "rows": rows,
                "machine": {
                    "nproc": os.cpu_count(),
                    "python": platform.python_version(),
                    "openai": openai.__version__,
                },
            },
            indent=2,
        )
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
