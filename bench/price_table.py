"""Price table benchmark (run by hand, never in CI): genai-prices (what opentracy uses) against litellm's
price map, on coverage of common model ids, cost-lookup time per call, install size and import time.

    .venv/bin/python bench/price_table.py --litellm-wheel /tmp/litellm-*.whl [--litellm-python /tmp/lv/bin/python]

litellm is never installed into this environment: its price map is read from the wheel file
(`pip download litellm --no-deps -d /tmp`), and, with `--litellm-python`, the package itself is timed in a
throwaway virtual environment (`python -m venv /tmp/lv && /tmp/lv/bin/pip install litellm`).
Writes bench/results/price_table-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import zipfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

# provider/model strings as opentracy users write them.
MODELS = [
    "openai/gpt-4o",
    "openai/gpt-4o-mini",
    "openai/gpt-4.1",
    "openai/gpt-4.1-mini",
    "openai/gpt-4.1-nano",
    "openai/o3-mini",
    "openai/o4-mini",
    "openai/gpt-5",
    "openai/gpt-5-mini",
    "openai/text-embedding-3-small",
    "anthropic/claude-3-5-sonnet-20241022",
    "anthropic/claude-sonnet-4-20250514",
    "anthropic/claude-sonnet-4-5",
    "anthropic/claude-3-5-haiku-20241022",
    "anthropic/claude-haiku-4-5",
    "anthropic/claude-opus-4-1",
    "gemini/gemini-2.0-flash",
    "gemini/gemini-2.5-flash",
    "gemini/gemini-2.5-pro",
    "mistral/mistral-large-latest",
    "mistral/mistral-small-latest",
    "groq/llama-3.3-70b-versatile",
    "groq/llama-3.1-8b-instant",
    "together/meta-llama/Llama-3.3-70B-Instruct-Turbo",
    "deepseek/deepseek-chat",
    "xai/grok-3",
    "openrouter/anthropic/claude-3.5-sonnet",
    # the newest of each provider in both tables' snapshots
    "openai/gpt-5.2",
    "openai/gpt-5.5",
    "anthropic/claude-opus-4-5",
    "anthropic/claude-sonnet-5",
    "gemini/gemini-3-pro-preview",
    "gemini/gemini-3.5-flash",
    "xai/grok-4",
    "xai/grok-4.3",
    "mistral/mistral-large-3",
    "mistral/mistral-medium-latest",
    "deepseek/deepseek-reasoner",
]
# litellm provider names of the direct providers whose whole chat list is checked the other way round.
REVERSE = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gemini",
    "xai": "xai",
    "mistral": "mistral",
    "deepseek": "deepseek",
    "groq": "groq",
}
LITELLM_PROVIDER = {"together": "together_ai", "google": "gemini"}


def median_subprocess_s(python: str, code: str, env: dict[str, str] | None = None, n: int = 5) -> float:
    out = []
    for _ in range(n):
        r = subprocess.run(
            [python, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **(env or {})},
        )
        out.append(float(r.stdout.strip().splitlines()[-1]))
    return statistics.median(out)


def dist_bytes(name: str) -> int:
    d = metadata.distribution(name)
    return sum(p.stat().st_size for f in d.files or [] if (p := Path(str(d.locate_file(f)))).is_file())


def per_call_us(fn, n: int = 50_000) -> float:  # type: ignore[no-untyped-def]
    fn(0)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


# -- genai-prices (through opentracy's Pricing) ----------------------------------------------------------
def genai_side() -> dict:
    from opentracy.llm.pricing import Pricing

    p = Pricing(environ={})
    rates = {m: p.rates(m) for m in MODELS}
    covered = [m for m in MODELS if rates[m] is not None]
    cases = {
        "flat (openai/gpt-4o)": "openai/gpt-4o",
        "tiered by prompt length (anthropic/claude-sonnet-4-5)": "anthropic/claude-sonnet-4-5",
        "dated prices (mistral/mistral-small-latest)": "mistral/mistral-small-latest",
        "off-peak hours, computed by the table (deepseek/deepseek-chat)": "deepseek/deepseek-chat",
        "unknown (vllm/x)": "vllm/x",
    }
    timings = {
        k: per_call_us(lambda i, m=m: p.cost(m, 1000 + i, 200), n=5_000 if "deepseek" in m else 50_000)
        for k, m in cases.items()
    }
    raw_calc_us = per_call_us(_raw_calc(), n=5_000)  # the package's own API, for comparison
    py = sys.executable
    import_s = median_subprocess_s(
        py, "import time; t=time.perf_counter(); import genai_prices; print(time.perf_counter()-t)"
    )
    first_cost_s = median_subprocess_s(
        py,
        "import time; t=time.perf_counter(); from opentracy.llm.pricing import Pricing; "
        "Pricing(environ={}).cost('openai/gpt-4o', 1, 1); print(time.perf_counter()-t)",
    )
    return {
        "version": metadata.version("genai-prices"),
        "coverage": {m: rates[m] for m in MODELS},
        "covered": len(covered),
        "per_call_us": timings,
        "genai_calc_price_us": raw_calc_us,
        "import_s": import_s,
        "import_and_first_cost_s": first_cost_s,
        "install_bytes": {"genai-prices": dist_bytes("genai-prices"), "httpx2": dist_bytes("httpx2")},
    }


def _raw_calc():  # type: ignore[no-untyped-def]
    from genai_prices import Usage, calc_price

    return lambda i: calc_price(
        Usage(input_tokens=1000 + i, output_tokens=200), "gpt-4o", provider_id="openai"
    )


# -- litellm's price map, read from the wheel ------------------------------------------------------------
def litellm_lookup(table: dict, model: str) -> dict | None:
    provider, ref = model.split("/", 1)
    lp = LITELLM_PROVIDER.get(provider, provider)
    for key in (model, f"{lp}/{ref}", ref):
        e = table.get(key)
        if e and e.get("litellm_provider") in (provider, lp) and "input_cost_per_token" in e:
            return {
                "key": key,
                "input": round(e["input_cost_per_token"] * 1e6, 6),
                "output": round(e.get("output_cost_per_token", 0) * 1e6, 6),
            }
    return None


def litellm_map_side(wheel: Path) -> dict:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith("model_prices_and_context_window_backup.json"))
        raw = z.read(name)
    t = time.perf_counter()
    table = json.loads(raw)
    load_s = time.perf_counter() - t
    cov = {m: litellm_lookup(table, m) for m in MODELS}
    cache: dict[str, dict | None] = {}

    def cost(i: int) -> float | None:
        m = "openai/gpt-4o"
        e = cache.get(m)
        if e is None:
            e = cache[m] = litellm_lookup(table, m)
        return None if e is None else ((1000 + i) * e["input"] + 200 * e["output"]) / 1e6

    # The other way round: every chat model litellm lists under a direct provider, priced by genai-prices?
    from opentracy.llm.pricing import Pricing

    pricing = Pricing(environ={})
    reverse: dict[str, dict] = {}
    for ours, lp in REVERSE.items():
        ids = [
            k.split("/", 1)[1] if k.startswith(lp + "/") else k
            for k, v in table.items()
            if v.get("litellm_provider") == lp
            and v.get("mode") in ("chat", "responses")
            and "input_cost_per_token" in v
        ]
        missing = [i for i in ids if pricing.cost(f"{ours}/{i}", 1, 1) is None]
        reverse[ours] = {"litellm_chat_models": len(ids), "not_in_genai": missing}
    return {
        "reverse": reverse,
        "wheel": wheel.name,
        "wheel_bytes": wheel.stat().st_size,
        "map_bytes": len(raw),
        "map_entries": len(table),
        "json_load_s": load_s,
        "coverage": cov,
        "covered": sum(v is not None for v in cov.values()),
        "per_call_us_dict_lookup": per_call_us(cost),
    }


# -- litellm the package, in its own venv --------------------------------------------------------------
LITELLM_CODE = r"""
import json, os, time, statistics
t = time.perf_counter()
import litellm
imp = time.perf_counter() - t
n = 20000
litellm.cost_per_token(model="gpt-4o", prompt_tokens=1, completion_tokens=1)
best = float("inf")
for _ in range(3):
    t = time.perf_counter()
    for i in range(n):
        litellm.cost_per_token(model="gpt-4o", prompt_tokens=1000 + i, completion_tokens=200)
    best = min(best, (time.perf_counter() - t) / n * 1e6)
print(json.dumps({"version": litellm.__version__ if hasattr(litellm, "__version__") else None,
                  "import_s": imp, "cost_per_token_us": best}))
"""


def litellm_pkg_side(python: str) -> dict:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_OFFLINE_MODE": "true"}
    runs = []
    for _ in range(3):
        r = subprocess.run([python, "-c", LITELLM_CODE], capture_output=True, text=True, check=True, env=env)
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    du = lambda p: int(subprocess.run(["du", "-sb", p], capture_output=True, text=True).stdout.split()[0])  # noqa: E731
    ver = subprocess.run(
        [python, "-c", "from importlib.metadata import version; print(version('litellm'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "version": ver,
        "import_s": statistics.median(r["import_s"] for r in runs),
        "cost_per_token_us": statistics.median(r["cost_per_token_us"] for r in runs),
        "package_bytes": du(str(Path(site) / "litellm")),
        "site_packages_bytes_with_deps": du(site),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--litellm-wheel", type=Path, default=None)
    ap.add_argument("--litellm-python", default=None)
    args = ap.parse_args()
    res: dict = {"machine": platform.platform(), "python": platform.python_version(), "genai": genai_side()}
    if args.litellm_wheel:
        res["litellm_map"] = litellm_map_side(args.litellm_wheel)
    if args.litellm_python:
        res["litellm_pkg"] = litellm_pkg_side(args.litellm_python)

    g, lm = res["genai"], res.get("litellm_map")
    print(f"{'model':50}  {'genai-prices $/1M in, out':28}  litellm map $/1M in, out")
    for m in MODELS:
        gr = g["coverage"][m]
        gs = "—" if gr is None else f"{gr['input']}, {gr['output']}" + (" *" if "varies" in gr else "")
        ls = (
            ""
            if lm is None
            else ("—" if lm["coverage"][m] is None else "{input}, {output}".format(**lm["coverage"][m]))
        )
        print(f"{m:50}  {gs:28}  {ls}")
    print(
        f"covered: genai-prices {g['covered']}/{len(MODELS)}"
        + (f", litellm map {lm['covered']}/{len(MODELS)}" if lm else "")
    )
    print("  (* price varies: by prompt length (tiers) or by time of day (off-peak); the base rate is shown)")
    for k, v in g["per_call_us"].items():
        print(f"Pricing.cost, cached lookup, {k}: {v:.2f} µs/call")
    print(f"genai_prices.calc_price itself (gpt-4o): {g['genai_calc_price_us']:.1f} µs/call")
    print(
        f"genai-prices import {g['import_s'] * 1e3:.0f} ms; import + first cost {g['import_and_first_cost_s'] * 1e3:.0f} ms"
    )
    print(f"genai-prices install: {sum(g['install_bytes'].values()) / 1e6:.1f} MB ({g['install_bytes']})")
    if lm:
        total = sum(r["litellm_chat_models"] for r in lm["reverse"].values())
        miss = sum(len(r["not_in_genai"]) for r in lm["reverse"].values())
        print(f"litellm's chat models of direct providers that genai-prices cannot price: {miss} of {total}")
        for prov, r in lm["reverse"].items():
            shown = ", ".join(r["not_in_genai"][:8]) + (", …" if len(r["not_in_genai"]) > 8 else "")
            print(f"  {prov}: {len(r['not_in_genai'])} of {r['litellm_chat_models']}  {shown}")
        print(
            f"litellm map: {lm['map_entries']} entries, {lm['map_bytes'] / 1e6:.1f} MB JSON, json.load "
            f"{lm['json_load_s'] * 1e3:.0f} ms, cached dict lookup {lm['per_call_us_dict_lookup']:.2f} µs/call; "
            f"wheel {lm['wheel_bytes'] / 1e6:.1f} MB"
        )
    if "litellm_pkg" in res:
        p = res["litellm_pkg"]
        print(
            f"litellm {p['version']}: import {p['import_s']:.2f} s, cost_per_token {p['cost_per_token_us']:.1f} µs/call, "
            f"package {p['package_bytes'] / 1e6:.0f} MB, site-packages with deps {p['site_packages_bytes_with_deps'] / 1e6:.0f} MB"
        )
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    path = out / f"price_table-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(res, indent=2, default=str))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
