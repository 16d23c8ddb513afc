"""Provider overhead benchmark (run by hand, never in CI): what the `anthropic` and `local` providers cost
beside the bare library each wraps, measured in the same run.

1. anthropic: N calls at K in flight against the mock server's `POST /v1/messages` (its own process, fixed
   latency), through the raw `anthropic` SDK (AsyncAnthropic.messages.create, the anchor; its default
   transport and the aiohttp one the provider uses) and through the gateway (`anthropic/…`, cache off,
   cost accounting on). Calls/s beside the ideal (K / latency) and client CPU ms per call.
2. local: a small random Llama (built offline, 4 layers × 256) generating a fixed number of tokens,
   through `model.generate` directly (the anchor, same sampling) and through the gateway (`local/…`).
   Seconds per call and the gateway's overhead per call.

    .venv/bin/python bench/providers.py [--calls 1000] [--in-flight 32] [--latency-ms 200] [--repeat 3]
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

MSG = [{"role": "user", "content": "Classify this ticket: where can I download my invoice for March?"}]
MODEL = "claude-sonnet-4-6"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mock(latency_ms: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "opentracy.cli",
        "mock-llm",
        "--port",
        str(port),
        "--latency-ms",
        str(latency_ms),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("mock-llm did not start")


async def raw_anthropic(url: str, calls: int, in_flight: int, aiohttp: bool) -> tuple[float, float]:
    import anthropic

    kw = {}
    if aiohttp:
        import httpx2

        limits = httpx2.Limits(max_connections=max(in_flight * 2, 100), max_keepalive_connections=in_flight)
        kw["http_client"] = anthropic.DefaultAioHttpClient(limits=limits)
    client = anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0, timeout=60, **kw)
    sem = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with sem:
            m = await client.messages.create(model=MODEL, max_tokens=1024, messages=MSG)
            assert m.content

    await one()  # warm up
    t, c = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one() for _ in range(calls)))
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    await client.close()
    return wall, cpu


async def gateway_anthropic(url: str, calls: int, in_flight: int) -> tuple[float, float]:
    from opentracy.llm.gateway import Endpoint, Gateway
    from opentracy.llm.pricing import Pricing

    ep = Endpoint("anthropic", url, "x", in_flight, kind="anthropic")
    gw = Gateway(endpoints={"anthropic": ep}, pricing=Pricing())
    await gw.complete(f"anthropic/{MODEL}", MSG)  # warm up
    t, c = time.perf_counter(), time.process_time()
    out = await gw.complete_many(
        [{"model": f"anthropic/{MODEL}", "messages": MSG, "sample": i} for i in range(calls)]
    )
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    await gw.aclose()
    bad = [x for x in out if isinstance(x, BaseException)]
    if bad:
        raise SystemExit(f"{len(bad)} gateway calls failed, e.g. {bad[0]!r}")
    assert all(x.cost_usd and x.cost_usd > 0 for x in out)  # accounting really on
    return wall, cpu


def bench_anthropic(args: argparse.Namespace) -> list[dict]:
    proc, url = start_mock(args.latency_ms)
    rows = []
    ideal = args.in_flight / (args.latency_ms / 1000)
    try:
        clients = (
            ("raw anthropic SDK", lambda: raw_anthropic(url, args.calls, args.in_flight, False)),
            ("raw SDK+aiohttp", lambda: raw_anthropic(url, args.calls, args.in_flight, True)),
            ("gateway", lambda: gateway_anthropic(url, args.calls, args.in_flight)),
        )
        for name, fn in clients:
            walls, cpus = [], []
            for _ in range(args.repeat):
                wall, cpu = asyncio.run(fn())
                walls.append(wall)
                cpus.append(cpu)
            wall, cpu = statistics.median(walls), statistics.median(cpus)
            rate = args.calls / wall
            rows.append(
                {
                    "client": name,
                    "calls_per_s": round(rate, 1),
                    "ideal_calls_per_s": round(ideal, 1),
                    "share_of_ideal": round(rate / ideal, 3),
                    "cpu_ms_per_call": round(cpu / args.calls * 1000, 3),
                }
            )
            print(f"  anthropic {name:18s} {rate:7.1f} calls/s ({rate / ideal:.0%} of ideal)  "
                  f"{cpu / args.calls * 1000:.2f} ms CPU/call", flush=True)  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(10)
    return rows


def bench_local(args: argparse.Namespace) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from opentracy.llm.gateway import Endpoint, Gateway
    from opentracy.llm.local_models import ENV_VAR, LocalModelService
    from opentracy.testing.tiny_lm import tiny_causal_lm

    n_tok = args.tokens
    with tempfile.TemporaryDirectory() as d:
        path = tiny_causal_lm(Path(d) / "m", layers=4, hidden=256, vocab_size=300)
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        prompt = "User: " + MSG[0]["content"] + "\n\nAssistant:"
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        # min_new_tokens: every call makes exactly n_tok tokens on both sides
        gc = GenerationConfig(max_new_tokens=n_tok, min_new_tokens=n_tok, do_sample=True, temperature=1.0,
                              top_p=1.0, top_k=0, eos_token_id=2, pad_token_id=3)  # fmt: skip

        def raw() -> float:
            t = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gc)
            assert out.shape[1] - ids.shape[1] == n_tok
            return time.perf_counter() - t

        reg = LocalModelService(None, environ={ENV_VAR: json.dumps({"b": {"base_model": str(path)}})})
        gw = Gateway(
            endpoints={"local": Endpoint("local", None, None, 1, kind="local", options={"registry": reg})}
        )
        gw.complete_sync("local/b", MSG, params={"max_tokens": 2})  # load

        def via_gateway(i: int) -> float:
            t = time.perf_counter()
            c = gw.complete_sync("local/b", MSG, sample=i, params={"max_tokens": n_tok})
            return time.perf_counter() - t, c.output_tokens

        raws, gws, outs = [], [], []
        for i in range(args.local_calls):
            raws.append(raw())
            s, n = via_gateway(i)
            gws.append(s)
            outs.append(n)
        gw.close()
    # the gateway's calls may stop early at an end-of-text token; compare per generated token
    r_med = statistics.median(raws) / n_tok
    g_med = statistics.median(s / max(n, 1) for s, n in zip(gws, outs, strict=True))
    print(f"  local raw generate  {r_med * 1000:.3f} ms/token   gateway {g_med * 1000:.3f} ms/token  "
          f"({g_med / r_med:.2f}×)", flush=True)  # fmt: skip
    return [
        {"client": "raw model.generate", "ms_per_token": round(r_med * 1000, 3)},
        {
            "client": "gateway local/",
            "ms_per_token": round(g_med * 1000, 3),
            "ratio_to_raw": round(g_med / r_med, 3),
            "median_output_tokens": statistics.median(outs),
        },
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--in-flight", type=int, default=32)
    ap.add_argument("--latency-ms", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--local-calls", type=int, default=15)
    args = ap.parse_args()
    a = bench_anthropic(args)
    loc = bench_local(args)
    print()
    print(f"anthropic: {args.calls} calls at {args.in_flight} in flight, {args.latency_ms} ms upstream latency, "
          f"medians of {args.repeat}")  # fmt: skip
    print(f"{'client':18}  {'calls/s':>8}  {'ideal':>6}  {'share':>6}  {'CPU ms/call':>11}")
    for r in a:
        print(f"{r['client']:18}  {r['calls_per_s']:>8}  {r['ideal_calls_per_s']:>6}  {r['share_of_ideal']:>6.0%}  "
              f"{r['cpu_ms_per_call']:>11}")  # fmt: skip
    print(f"\nlocal: {args.tokens} tokens per call, median of {args.local_calls} calls each, interleaved")
    for r in loc:
        print(f"{r['client']:18}  {r['ms_per_token']:>8} ms/token")
    import anthropic
    import torch
    import transformers

    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    path = out / f"providers-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(
        json.dumps(
            {
                "args": vars(args),
                "anthropic": a,
                "local": loc,
                "machine": {
                    "nproc": os.cpu_count(),
                    "python": platform.python_version(),
                    "anthropic": anthropic.__version__,
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                },
            },
            indent=2,
        )
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
