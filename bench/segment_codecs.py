"""Segment codecs (run by hand, never in CI): CPU to write the upload benchmark's 1M rows as a segment with
zstd, snappy and lz4, CPU and wall time for DuckDB to scan it, and the file's size. The figures behind
docs/decisions/0031-segment-compression.md.

    .venv/bin/python bench/segment_codecs.py [--rows 1000000] [--repeat 3]

The rows are decoded by the upload's own JSONL decoder from the compact file bench/gen_jsonl.py writes
(under /tmp/opentracy-bench), then written with the segment schema and settings of store/segments.py.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from opentracy.datasets import formats  # noqa: E402
from opentracy.store import segments as S  # noqa: E402

# "segments": what the segment writer uses (segments.SEGMENT_COMPRESSION: snappy, row hashes left raw)
CODECS = ("zstd", "snappy", "lz4", "segments")


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/opentracy-bench"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    src = args.work / f"rows-{args.rows}.jsonl"
    if not src.exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "gen_jsonl.py"), "--rows", str(args.rows),
                        "--out", str(src), "--layout", "compact"], check=True)  # fmt: skip
    tables = []
    for b in formats.duck_jsonl(formats.SourceFile(src)):
        t = b.table
        n = t.num_rows
        tables.append(
            pa.table(
                [t.column("row_id"), pa.array(np.arange(n)), t.column("prompt"), t.column("prompt_messages"),
                 t.column("response"), t.column("metadata"), t.column("row_hash"), pa.array(np.zeros(n, bool))],
                schema=S.SEGMENT_SCHEMA,
            )
        )  # fmt: skip
    out = Path(tempfile.mkdtemp(prefix="bench-codecs-"))
    con = duckdb.connect()
    runs: dict[str, list[tuple[float, float, float]]] = {c: [] for c in CODECS}
    for _ in range(args.repeat):
        for codec in CODECS:
            path = out / f"{codec}.parquet"
            c0 = cpu()
            compression = S.SEGMENT_COMPRESSION if codec == "segments" else codec
            with pq.ParquetWriter(path, S.SEGMENT_SCHEMA, compression=compression, use_dictionary=S.SEGMENT_DICTIONARY,
                                  write_statistics=S.SEGMENT_STATISTICS) as w:  # fmt: skip
                for t in tables:
                    w.write_table(t, row_group_size=S.ROW_GROUP_ROWS)
            write_cpu = cpu() - c0
            c0, t0 = cpu(), time.perf_counter()
            con.sql(
                f"SELECT sum(length(prompt)), sum(length(metadata)), count(row_hash) FROM read_parquet('{path}')"
            ).fetchall()
            runs[codec].append((write_cpu, cpu() - c0, time.perf_counter() - t0))
    print(f"{args.rows:,} rows, medians of {args.repeat}")
    print(f"{'codec':<8} {'write CPU s':>11} {'scan CPU s':>10} {'scan wall s':>11} {'MB':>6}")
    for codec, v in runs.items():
        w, r, rw = (statistics.median(x[i] for x in v) for i in range(3))
        print(
            f"{codec:<8} {w:11.2f} {r:10.2f} {rw:11.2f} {os.path.getsize(out / f'{codec}.parquet') / 1e6:6.0f}"
        )


if __name__ == "__main__":
    main()
