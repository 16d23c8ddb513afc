"""The same rows uploaded from each format (run by hand, never in CI): plain JSONL is the anchor, against plain
and gzip CSV, Parquet, and gzip and xz JSONL, through the library, in one process, interleaved.

    .venv/bin/python bench/upload_formats.py [--rows 200000] [--repeat 3]

The rows are the first N of the upload benchmark's file (bench/gen_jsonl.py, json.dumps layout, the seed of
bench/upload.py), written under /tmp/opentracy-bench; CSV and Parquet have the spec's columns (metadata as
JSON text, as opentracy's own export writes them; struct.parquet has it as a struct column, as pyarrow, pandas
and `datasets` write metadata dicts); the chat files hold the same prompts and responses as
chat examples (OpenAI chat JSONL, and a Parquet `messages` column of role/content structs).
Prints each format's median wall and CPU seconds and its time against plain JSONL's.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import lzma
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from upload import ensure_jsonl  # noqa: E402

from opentracy.config import Settings  # noqa: E402
from opentracy.engine import Engine  # noqa: E402


def variants(jsonl: Path, work: Path, rows: int) -> dict[str, Path]:
    """The rows as each format, written once and reused."""
    out = {"jsonl": work / f"fmt-{rows}.jsonl"}
    if not out["jsonl"].exists():
        with open(jsonl, "rb") as src, open(out["jsonl"], "wb") as dst:
            for i, line in enumerate(src):
                if i == rows:
                    break
                dst.write(line)
    plain = out["jsonl"].read_bytes()
    out["csv"] = work / f"fmt-{rows}.csv"
    if not out["csv"].exists():
        with open(out["csv"], "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["row_id", "prompt", "response", "metadata"])
            for line in plain.splitlines():
                r = json.loads(line)
                w.writerow([r["row_id"], r["prompt"], r["response"], json.dumps(r["metadata"])])
    out["parquet"] = work / f"fmt-{rows}.parquet"
    if not out["parquet"].exists():
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        pq.write_table(pcsv.read_csv(out["csv"]), out["parquet"])
    # The spec rows as pyarrow, pandas and `datasets` write them: metadata dicts become a struct column.
    out["struct.parquet"] = work / f"fmt-{rows}-struct.parquet"
    if not out["struct.parquet"].exists():
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(
            pa.Table.from_pylist([json.loads(x) for x in plain.splitlines()]), out["struct.parquet"]
        )
    for name, base, pack in (
        ("jsonl.gz", out["jsonl"], gzip.compress),
        ("jsonl.xz", out["jsonl"], lzma.compress),
        ("csv.gz", out["csv"], gzip.compress),
    ):
        out[name] = work / f"fmt-{rows}.{name}"
        if not out[name].exists():
            out[name].write_bytes(pack(base.read_bytes()))
    # The same rows as chat examples (a system turn, the prompt as the user's, the response as the
    # assistant's): OpenAI chat JSONL, and a Parquet `messages` column as Hugging Face chat datasets have it.
    out["chat.jsonl"] = work / f"fmt-{rows}-chat.jsonl"
    out["chat.parquet"] = work / f"fmt-{rows}-chat.parquet"
    if not (out["chat.jsonl"].exists() and out["chat.parquet"].exists()):
        import pyarrow as pa
        import pyarrow.parquet as pq

        chats = []
        for line in plain.splitlines():
            r = json.loads(line)
            turns = [
                ("system", "You are a support assistant."),
                ("user", r["prompt"]),
                ("assistant", r["response"]),
            ]
            chats.append([{"role": role, "content": text} for role, text in turns])
        out["chat.jsonl"].write_text(
            "".join(json.dumps({"messages": m}) + "\n" for m in chats), encoding="utf-8"
        )
        message = pa.struct([("role", pa.string()), ("content", pa.string())])
        pq.write_table(pa.table({"messages": pa.array(chats, pa.list_(message))}), out["chat.parquet"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/opentracy-bench"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    files = variants(ensure_jsonl(args.work, max(args.rows, 1_000_000)), args.work, args.rows)
    engine = Engine(Settings.from_env(home=tempfile.mkdtemp(prefix="bench-formats-"))).start()
    wall: dict[str, list[float]] = {k: [] for k in files}
    cpu: dict[str, list[float]] = {k: [] for k in files}
    try:
        for _ in range(args.repeat):
            for name, path in files.items():
                t, c = time.perf_counter(), time.process_time()
                res = engine.datasets.upload(f"f{time.monotonic_ns()}", path)
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
                assert res.rows_added == args.rows, (name, res.rows_added)
    finally:
        engine.close()
    anchor = statistics.median(wall["jsonl"])
    print(f"{args.rows:,} rows, medians of {args.repeat}")
    print(f"{'format':<14}  {'MB':>6}  {'seconds':>8}  {'CPU s':>6}  {'x JSONL time':>12}")
    for name, path in files.items():
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name:<14}  {os.path.getsize(path) / 1e6:6.1f}  {w:8.2f}  {c:6.2f}  {w / anchor:12.2f}")


if __name__ == "__main__":
    main()
