"""Reads benchmark: a version's rows through the client and the HTTP server, beside a local anchor.

Run by hand (never in CI):  .venv/bin/python bench/rows.py [--rows 1000000] [--repeat 3]

One server (`opentracy serve`, its own process) holds a dataset uploaded from the upload benchmark's file
(bench/gen_jsonl.py, json.dumps layout). Measured in this process, alternating, medians of --repeat:

  anchor     every line of the same JSONL file parsed with json.loads into a tuple: the cost of having the
             rows in Python at all, with no server, no store and no network
  stream     Distiller.rows(): every row, unfiltered (one streamed answer)
  pages      Distiller.rows_page(limit=1000) from the first page to the last
  page       the first page of 100 rows (ms)
  filtered   rows_page(q=<a word>, limit=100): the first page (counts the matches) and the next (ms)

The table is printed and written as JSON to bench/results/rows-<timestamp>.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

from _serve import serving

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
T = TypeVar("T")


def bench_file(rows: int) -> Path:
    path = Path(tempfile.gettempdir()) / "opentracy-bench" / f"rows-{rows}-spaced.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / "gen_jsonl.py"), "--rows", str(rows), "--out", str(path)],
            check=True,
        )
    return path


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    file = bench_file(args.rows)

    from opentracy.client import Distiller

    work = Path(tempfile.mkdtemp(prefix="opentracy-rows-bench-"))
    try:
        with (
            serving(work / "home", work / "server.log") as (_, url),
            Distiller(base_url=url, progress=False, timeout=600) as c,
        ):
            ds = c.upload_dataset("bench", file)
            n = ds.row_count

            def anchor() -> int:
                k = 0
                with open(file, "rb") as f:
                    for line in f:
                        d = json.loads(line)
                        (d["row_id"], d["prompt"], d["response"], d["metadata"])
                        k += 1
                return k

            def stream() -> int:
                return sum(1 for _ in c.rows("bench"))

            def pages() -> int:
                k, cursor = 0, None
                while True:
                    got, cursor = c.rows_page("bench", limit=1000, cursor=cursor)
                    k += len(got)
                    if not cursor:
                        return k

            results: dict[str, list[float]] = {k: [] for k in ("anchor", "stream", "pages")}
            page_ms: dict[str, list[float]] = {"first": [], "filtered first": [], "filtered next": []}
            # a new search term each time, so that every first page counts its matches afresh
            terms = ["passcode", "cheque", "stolen", "refund", "declined", "virtual", "pending", "identity"]
            for i in range(args.repeat):
                term = terms[i % len(terms)]
                for name, fn in (("anchor", anchor), ("stream", stream), ("pages", pages)):
                    secs, count = timed(fn)
                    if count != n:
                        raise SystemExit(f"{name} read {count} rows, expected {n}")
                    results[name].append(secs)
                secs, _ = timed(partial(c.rows_page, "bench", limit=100))
                page_ms["first"].append(secs * 1000)
                secs, (_, nxt) = timed(partial(c.rows_page, "bench", limit=100, q=term))
                page_ms["filtered first"].append(secs * 1000)
                secs, _ = timed(partial(c.rows_page, "bench", limit=100, q=term, cursor=nxt))
                page_ms["filtered next"].append(secs * 1000)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n{n:,} rows ({file.stat().st_size / 1e6:.0f} MB JSONL); medians of {args.repeat}\n")
    print(f"{'measurement':<44} {'seconds':>8} {'rows/s':>11} {'x anchor':>9}")
    labels = {
        "anchor": "anchor: json.loads of every line of the file",
        "stream": "Distiller.rows() (streamed)",
        "pages": "Distiller.rows_page(limit=1000), every page",
    }
    for k, label in labels.items():
        print(f"{label:<44} {med[k]:>8.2f} {n / med[k]:>11,.0f} {med['anchor'] / med[k]:>9.2f}")
    print()
    for k, v in page_ms.items():
        print(f"one page of 100 rows, {k:<22} {statistics.median(v):>8.1f} ms")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"rows-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(
        json.dumps({"rows": n, "seconds": results, "page_ms": page_ms, "repeat": args.repeat}, indent=2)
    )
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
