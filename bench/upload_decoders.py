"""Which JSONL decoder at which size (run by hand, never in CI): the DuckDB decoder against the
line-by-line one, on the first N rows of the upload benchmark's file, in one process, interleaved.

    .venv/bin/python bench/upload_decoders.py [--rows 2500,10000,25000,100000,250000,500000,1000000]

It writes the rows with bench/gen_jsonl.py (same seed as bench/upload.py) under /tmp/opentracy-bench and
prints the median upload time of each decoder per size. The crossover sets FAST_JSONL_MIN_BYTES
(opentracy/datasets/formats.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opentracy.config import Settings  # noqa: E402
from opentracy.datasets import formats  # noqa: E402
from opentracy.engine import Engine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="2500,10000,25000,100000,250000,500000,1000000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/opentracy-bench"))
    args = ap.parse_args()
    sizes = [int(x) for x in args.rows.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    full = args.work / f"rows-{max(sizes)}.jsonl"
    if not full.exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "gen_jsonl.py"), "--rows", str(max(sizes)),
                        "--out", str(full), "--layout", "compact"], check=True)  # fmt: skip
    engine = Engine(Settings.from_env(home=tempfile.mkdtemp(prefix="bench-decoders-"))).start()
    print(f"{'rows':>9}  {'MB':>6}  {'duckdb s':>9}  {'python s':>9}  duckdb/python")
    try:
        for n in sizes:
            path = args.work / f"head-{n}.jsonl"
            if not path.exists():
                with open(full, "rb") as src, open(path, "wb") as out:
                    for i, line in enumerate(src):
                        if i == n:
                            break
                        out.write(line)
            times: dict[str, list[float]] = {"duckdb": [], "python": []}
            for _ in range(args.repeat):
                for mode, threshold in (("duckdb", 0), ("python", 1 << 62)):
                    formats.FAST_JSONL_MIN_BYTES = threshold
                    t = time.perf_counter()
                    engine.datasets.upload(f"d{time.monotonic_ns()}", path)
                    times[mode].append(time.perf_counter() - t)
            d, p = (statistics.median(times[k]) for k in ("duckdb", "python"))
            print(f"{n:>9,}  {os.path.getsize(path) / 1e6:6.1f}  {d:9.3f}  {p:9.3f}  {d / p:.2f}", flush=True)
    finally:
        engine.close()


if __name__ == "__main__":
    main()
