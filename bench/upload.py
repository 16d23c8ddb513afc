"""Upload benchmark: opentracy against `datasets.load_dataset("json", ...)` on a 1M-row JSONL file.

Run by hand (never in CI):  make bench-upload   or   .venv/bin/python bench/upload.py [--rows 50000] [--repeat 3]
[--layout spaced|compact]. The file is written as json.dumps writes it by default (spaced: 1M rows ~435 MB,
the file the issue names) unless --layout compact.

Every measurement runs in a fresh Python process with a fresh data directory, so its peak RSS (VmHWM from
/proc, in MiB, imports included) belongs to that measurement alone. Only the measured call is timed, in
wall seconds and in CPU seconds (user + system, all threads; for HTTP the client's and the server's):

  anchor   datasets.load_dataset("json", data_files=FILE, split="train", cache_dir=<fresh>)
  library  Engine(Settings.from_env(home=<fresh>)).datasets.upload("bench", FILE)
  http     Distiller(base_url=..., progress=False).upload_dataset("bench", FILE) against `opentracy serve`
           in its own process; peak RSS of the server and of the client are both recorded
  versions on the library run's data: freeze v1, new_version, update ~1,000 rows + delete 100 + add 100,
           freeze v2, diff v1 -> v2 (peak RSS per step, reset between steps through /proc/self/clear_refs)

Anchor runs alternate with the opentracy runs (one more anchor than opentracy runs); the table's reference is
the anchors' median, and each run is also given against the mean of the two anchors beside it.
The table is printed and written as JSON to bench/results/upload-<timestamp>.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from _serve import serving

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DATASET = "bench"
RSS_GOAL_MB = 500
N_EDIT, N_DELETE, N_ADD = 1000, 100, 100


# ----------------------------------------------------------------------------------------------
# helpers shared by both sides


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident set size (VmHWM) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmHWM for process {pid}")


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process, all its threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss() -> None:
    """Make VmHWM start again from the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# ----------------------------------------------------------------------------------------------
# the measurements, each run in a fresh process (`--child KIND`); each returns a JSON-able dict


def child_anchor(file: str, home: str) -> dict:
    os.environ["HF_HOME"] = str(Path(home) / "hf")
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    c0, t0 = cpu_seconds(), time.perf_counter()
    ds = datasets.load_dataset("json", data_files=file, split="train", cache_dir=str(Path(home) / "cache"))
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return {"seconds": seconds, "cpu_s": cpu, "rows": ds.num_rows, "rss_mb": peak_rss_mb()}


def child_library(file: str, home: str) -> dict:
    from opentracy.config import Settings
    from opentracy.engine import Engine

    engine = Engine(Settings.from_env(home=home))
    try:
        c0, t0 = cpu_seconds(), time.perf_counter()
        res = engine.datasets.upload(DATASET, file)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    finally:
        engine.close()
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "rows": res.rows_added,
        "skipped": res.skipped,
        "rss_mb": peak_rss_mb(),
    }


def child_http_client(file: str, url: str) -> dict:
    from opentracy.client import Distiller

    with Distiller(base_url=url, progress=False) as client:
        c0, t0 = cpu_seconds(), time.perf_counter()
        client.upload_dataset(DATASET, file)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        rows = client.get_dataset(DATASET).row_count
    return {"seconds": seconds, "client_cpu_s": cpu, "rows": rows, "rss_mb": peak_rss_mb()}


def child_versions(home: str, rows: int) -> dict:
    """Freeze v1, edit a new version, freeze v2 and diff them, on the data the library upload left."""
    from opentracy.config import Settings
    from opentracy.engine import Engine

    engine = Engine(Settings.from_env(home=home))
    svc = engine.datasets
    out: dict = {}

    def step(key: str, fn):  # type: ignore[no-untyped-def]
        reset_peak_rss()
        t0 = time.perf_counter()
        result = fn()
        out[key] = {"seconds": time.perf_counter() - t0, "rss_mb": peak_rss_mb()}
        return result

    # Edit every k-th row, delete the last N_DELETE rows, add N_ADD new ones.
    every = max(1, (rows - N_DELETE) // N_EDIT)
    edit_ids = [f"r_{i:07d}" for i in range(0, rows - N_DELETE, every)][:N_EDIT]
    delete_ids = [f"r_{i:07d}" for i in range(rows - N_DELETE, rows)]
    new_rows = [
        {
            "row_id": f"new_{i:04d}",
            "prompt": f"an added row, number {i}",
            "response": "billing",
            "metadata": {"cluster_id": 0, "tags": ["bench", "added"]},
        }
        for i in range(N_ADD)
    ]
    try:
        step("freeze_v1", lambda: svc.freeze(DATASET, 1))
        svc.new_version(DATASET)

        def edit() -> None:
            svc.update_rows(DATASET, [{"row_id": r, "response": "edited"} for r in edit_ids])
            svc.delete_rows(DATASET, delete_ids)
            svc.add_rows(DATASET, new_rows)

        step("edit", edit)
        v2 = step("freeze_v2", lambda: svc.freeze(DATASET, 2))
        d = step("diff", lambda: svc.diff(DATASET, 1, 2))
    finally:
        engine.close()
    out["v2_rows"] = v2.row_count
    out["diff_counts"] = {
        "added": d.added,
        "removed": d.removed,
        "changed": d.changed,
        "unchanged": d.unchanged,
    }
    out["diff_expected"] = {
        "added": N_ADD,
        "removed": N_DELETE,
        "changed": len(edit_ids),
        "unchanged": rows - N_DELETE - len(edit_ids),
    }
    return out


CHILDREN = {
    "anchor": child_anchor,
    "library": child_library,
    "http": child_http_client,
    "versions": child_versions,
}


def run_child(kind: str, **kwargs: object) -> dict:
    """Run one measurement in a fresh interpreter; it prints its result as the last line of stdout."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--child-args", json.dumps(kwargs)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"the {kind} measurement failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# the parent: data file, fresh directories, the server, medians, the table


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            n += chunk.count(b"\n")
    return n


def ensure_jsonl(work: Path, rows: int, layout: str = "spaced") -> Path:
    path = work / (f"rows-{rows}.jsonl" if layout == "compact" else f"rows-{rows}-{layout}.jsonl")
    if path.exists() and count_lines(path) == rows:
        print(f"reusing {path}", flush=True)
        return path
    print(f"writing {rows:,} rows to {path} ...", flush=True)
    tmp = path.with_suffix(".tmp")
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gen_jsonl.py"), "--rows", str(rows), "--out", str(tmp),
         "--layout", layout],
        check=True,
    )  # fmt: skip
    tmp.replace(path)
    return path


def fresh_dir(work: Path, name: str) -> Path:
    d = work / "runs" / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def measure_anchor(file: Path, work: Path, tag: str) -> dict:
    home = fresh_dir(work, f"anchor-{tag}")
    try:
        return run_child("anchor", file=str(file), home=str(home))
    finally:
        shutil.rmtree(home, ignore_errors=True)


def measure_library_and_versions(file: Path, work: Path, rows: int, tag: str) -> tuple[dict, dict]:
    home = fresh_dir(work, f"library-{tag}")
    try:
        lib = run_child("library", file=str(file), home=str(home))
        ver = run_child("versions", home=str(home), rows=rows)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return lib, ver


def measure_http(file: Path, work: Path, tag: str) -> dict:
    home = fresh_dir(work, f"http-{tag}")
    try:
        with serving(home, work / f"server-{tag}.log") as (server, url):
            server_cpu = cpu_seconds(server.pid)
            res = run_child("http", file=str(file), url=url)
            # the server's CPU over the upload (and the client's last lookup): it does nothing else meanwhile
            res["cpu_s"] = res["client_cpu_s"] + cpu_seconds(server.pid) - server_cpu
            res["client_rss_mb"] = res.pop("rss_mb")
            res["server_rss_mb"] = peak_rss_mb(server.pid)
            return res
    finally:
        shutil.rmtree(home, ignore_errors=True)


def machine_info() -> dict:
    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = int(
        next(
            ln.split()[1]
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        )
    )
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    )
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory_gb": round(mem_kb / 1024**2, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "git": f"{git}{'-dirty' if dirty else ''}",
        "packages": {p: version(p) for p in ("opentracy", "duckdb", "pyarrow", "msgspec", "datasets")},
    }


def paired_ratios(runs: dict[str, list[dict]]) -> dict[str, list[float]]:
    """Per run: (mean of the anchor runs just before and after it) / (its seconds), for library and http."""
    a = [r["seconds"] for r in runs["anchor"]]
    return {
        k: [round((a[i] + a[i + 1]) / 2 / r["seconds"], 3) for i, r in enumerate(runs[k]) if i + 1 < len(a)]
        for k in ("library", "http")
    }


def summarize(rows: int, runs: dict[str, list[dict]]) -> list[dict]:
    """One line per measurement: medians, ratio to the anchor, goals and whether they were met."""

    def med(key: str, field: str) -> float:
        return statistics.median(r[field] for r in runs[key])

    anchor_rps = rows / med("anchor", "seconds")
    lines: list[dict] = []

    def line(
        name: str,
        seconds: float | None,
        rss: float,
        goals: list[tuple[str, bool]],
        ratio: bool = False,
        rate: bool = True,
        cpu: float | None = None,
    ) -> None:
        rps = rows / seconds if seconds and rate else None
        lines.append(
            {
                "measurement": name,
                "seconds": round(seconds, 3) if seconds is not None else None,
                "cpu_s": round(cpu, 2) if cpu is not None else None,
                "rows_per_s": round(rps) if rps else None,
                "ratio_vs_anchor": round(rps / anchor_rps, 2) if ratio and rps else None,
                "peak_rss_mb": rss,
                "goal": ", ".join(g for g, _ in goals) or "-",
                "met": all(ok for _, ok in goals) if goals else None,
                "missed": [g for g, ok in goals if not ok],
            }
        )

    def rss_goal(rss: float) -> tuple[str, bool]:
        return (f"RSS < {RSS_GOAL_MB} MB", rss < RSS_GOAL_MB)

    line(
        "anchor: datasets.load_dataset",
        med("anchor", "seconds"),
        med("anchor", "rss_mb"),
        [],
        ratio=True,
        cpu=med("anchor", "cpu_s"),
    )
    s, rss = med("library", "seconds"), med("library", "rss_mb")
    line(
        "library: Engine.datasets.upload",
        s,
        rss,
        [(">= 1.0x anchor", rows / s >= 1.0 * anchor_rps), rss_goal(rss)],
        True,
        cpu=med("library", "cpu_s"),
    )
    s, rss = med("http", "seconds"), med("http", "server_rss_mb")
    line(
        "http: upload_dataset (server RSS)",
        s,
        rss,
        [(">= 0.7x anchor", rows / s >= 0.7 * anchor_rps), rss_goal(rss)],
        True,
        cpu=med("http", "cpu_s"),
    )
    rss = med("http", "client_rss_mb")
    line("http: client process", None, rss, [rss_goal(rss)])
    for key, name, goal in [
        ("freeze_v1", "freeze v1 (1 segment)", 3.0),
        ("edit", f"edit v2: {N_EDIT} upd+{N_DELETE} del+{N_ADD} add", None),
        ("freeze_v2", "freeze v2 (compacts edits)", 3.0),
        ("diff", "diff v1 -> v2", 1.0),
    ]:
        s = statistics.median(r[key]["seconds"] for r in runs["versions"])
        rss = statistics.median(r[key]["rss_mb"] for r in runs["versions"])
        goals = [rss_goal(rss)] + ([(f"< {goal:g} s", s < goal)] if goal else [])
        line(name, s, rss, goals, rate=key != "edit")  # rows/s of an edit of 1,200 rows means nothing
    return lines


def print_table(lines: list[dict]) -> None:
    def fmt(v: object, spec: str = "") -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "NO"
        return format(v, spec)

    head = ["measurement", "seconds", "CPU s", "rows/s", "x anchor", "peak RSS MB", "goal", "met?"]
    body = [
        [
            ln["measurement"],
            fmt(ln["seconds"], ".2f"),
            fmt(ln["cpu_s"], ".2f"),
            fmt(ln["rows_per_s"], ","),
            fmt(ln["ratio_vs_anchor"], ".2f"),
            fmt(ln["peak_rss_mb"], ".0f"),
            ln["goal"],
            fmt(ln["met"]) + (f" ({', '.join(ln['missed'])})" if ln["missed"] else ""),
        ]
        for ln in lines
    ]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    right = {1, 2, 3, 4, 5}
    for i, r in enumerate([head, *body]):
        cells = (
            c.rjust(w) if j in right else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        print("  ".join(cells).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in the JSONL file (default 1,000,000)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/opentracy-bench"), help="work directory")
    ap.add_argument("--repeat", type=int, default=1, help="runs of every measurement; medians are reported")
    ap.add_argument(
        "--layout",
        choices=["spaced", "compact"],
        default="spaced",
        help="JSONL as json.dumps writes it by default (spaced, ~435 MB for 1M rows, the issue's file) or compact",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-args", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print(json.dumps(CHILDREN[args.child](**json.loads(args.child_args))), flush=True)
        return

    if args.rows < N_EDIT + N_DELETE + 1:
        ap.error(f"--rows must be more than {N_EDIT + N_DELETE}")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    file = ensure_jsonl(work, args.rows, args.layout)
    runs: dict[str, list[dict]] = {"anchor": [], "library": [], "versions": [], "http": []}

    def note(what: str, r: dict) -> None:
        extra = f", server {r['server_rss_mb']:.0f} MB" if "server_rss_mb" in r else ""
        rss = r.get("rss_mb", r.get("client_rss_mb"))
        cpu = f", {r['cpu_s']:.2f} CPU-s" if "cpu_s" in r else ""
        print(f"  {what}: {r['seconds']:.2f} s{cpu}, peak RSS {rss:.0f} MB{extra}", flush=True)

    started = time.time()
    # Anchors and opentracy runs alternate (anchor, opentracy, anchor, ..., anchor), so every run has an
    # anchor on each side: the machine's speed drifts over minutes, and the paired ratios below follow it.
    for i in range(args.repeat):
        print(f"anchor {i + 1}/{args.repeat + 1}", flush=True)
        runs["anchor"].append(measure_anchor(file, work, f"a{i}"))
        note("load_dataset", runs["anchor"][-1])
        print(f"opentracy {i + 1}/{args.repeat}", flush=True)
        lib, ver = measure_library_and_versions(file, work, args.rows, str(i))
        runs["library"].append(lib)
        runs["versions"].append(ver)
        note("library upload", lib)
        for k in ("freeze_v1", "edit", "freeze_v2", "diff"):
            print(f"  {k}: {ver[k]['seconds']:.2f} s, peak RSS {ver[k]['rss_mb']:.0f} MB", flush=True)
        runs["http"].append(measure_http(file, work, str(i)))
        note("http upload (client)", runs["http"][-1])
    print(f"anchor {args.repeat + 1}/{args.repeat + 1}", flush=True)
    runs["anchor"].append(measure_anchor(file, work, f"a{args.repeat}"))
    note("load_dataset", runs["anchor"][-1])

    problems = [
        f"{k} read {r['rows']:,} rows"
        for k in ("anchor", "library", "http")
        for r in runs[k]
        if r["rows"] != args.rows
    ]
    problems += [
        f"diff found {r['diff_counts']}, expected {r['diff_expected']}"
        for r in runs["versions"]
        if r["diff_counts"] != r["diff_expected"]
    ]

    lines = summarize(args.rows, runs)
    print(
        f"\n{args.rows:,} rows, {file.stat().st_size / 1e6:.0f} MB JSONL ({args.layout}); medians of {args.repeat} run(s), anchor of {args.repeat + 1}\n"
    )
    print_table(lines)
    paired = paired_ratios(runs)
    for k, v in paired.items():
        print(f"{k} x anchor, each run against the mean of the anchors either side: median {statistics.median(v):.2f}"
              f" (runs: {', '.join(f'{x:.2f}' for x in v)})")  # fmt: skip
    d = runs["versions"][-1]["diff_counts"]
    print(
        f"\ndiff v1 -> v2 found: added {d['added']:,}, removed {d['removed']:,}, changed {d['changed']:,}, unchanged {d['unchanged']:,}"
    )
    for p in problems:
        print(f"PROBLEM: {p}")

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"upload-{stamp}.json"
    report = {
        "timestamp": stamp,
        "rows": args.rows,
        "file_bytes": file.stat().st_size,
        "layout": args.layout,
        "repeat": args.repeat,
        "wall_seconds": round(time.time() - started, 1),
        "rss_unit": "MiB (VmHWM)",
        "machine": machine_info(),
        "summary": lines,
        "paired_ratios": paired,
        "problems": problems,
        "runs": runs,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
