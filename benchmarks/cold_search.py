"""A text search as a user types it in a shell: a whole new `cxrtool search` process, each time.

Usage: python benchmarks/cold_search.py [--runs 5] [--workspace DIR] [--baseline-rev REV]

Embeds sample_data with the bundled model into a workspace and indexes it (as `make demo` does,
with a throwaway $CXRTOOL_CACHE, so the state is the one `cxrtool index` leaves), then times
`cxrtool search QUERY` end to end, median of --runs fresh processes, with each process's peak
resident memory (from wait4, per process):

- "first time": the query-vector cache emptied before each run, so the text side runs (ONNX
  Runtime + tokenizers where the index exported it);
- "repeated": the same query again (its sentences come from the query-vector cache);
- "baseline": with --baseline-rev, the same command from that git revision's source tree (on
  PYTHONPATH, e.g. the commit before this work), on the same machine in the same run.

Every run's stdout must name the same top hit (the runs answer the same question). The OS page cache
is warm (the files were read before): "cold" here means a new process, as in a shell. Prints a table
and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUERIES = ("left pleural effusion", "cardiomegaly", "small right apical pneumothorax after chest tube removal")


def timed(cmd: list[str], env: dict, runs: int, before=None) -> dict:
    seconds, peaks, tops = [], [], set()
    for _ in range(runs):
        if before:
            before()
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
            _, status, rusage = os.wait4(proc.pid, 0)  # this child's own peak resident memory
            seconds.append(time.perf_counter() - t0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            if proc.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed: {err.read().strip()[-400:]}")
            tops.add(json.loads(out.read())[0]["id"])
        peaks.append(rusage.ru_maxrss / 1024)
    return {"median_s": round(statistics.median(seconds), 3), "min_s": round(min(seconds), 3),
            "max_s": round(max(seconds), 3), "peak_mb": round(max(peaks)), "top_hits": sorted(tops)}


def baseline_tree(rev: str, into: Path) -> Path:
    """``git archive REV src`` extracted under ``into``: the source tree to put on PYTHONPATH, with
    this checkout's bundled model in place of REV's (the workspace is embedded with it, and the
    comparison is of the code, not of the model)."""
    archive = into / "src.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), rev, "src"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    bundled = into / "src" / "cxrtool" / "default_model"
    shutil.rmtree(bundled, ignore_errors=True)
    shutil.copytree(REPO / "src" / "cxrtool" / "default_model", bundled)
    return into / "src"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workspace", type=Path, default=None, help="keep the workspace (and its cache) here")
    ap.add_argument("--baseline-rev", default=None, help="also time this git revision's source (same workspace)")
    args = ap.parse_args()
    root = args.workspace or Path(tempfile.mkdtemp(prefix="cxrtool-cold-"))
    ws, cache = root / "ws", root / "cache"
    env = {**os.environ, "CXRTOOL_CACHE": str(cache), "CXRTOOL_WORKSPACE": str(ws), "CXRTOOL_MODEL": ""}
    cli = [sys.executable, "-m", "cxrtool.cli"]
    report: dict = {"runs": args.runs}
    if not (ws / "index").is_dir():
        t = time.perf_counter()
        subprocess.run([*cli, "embed", str(REPO / "sample_data" / "archive")], env=env, check=True,
                       capture_output=True)
        subprocess.run([*cli, "index"], env=env, check=True, capture_output=True)
        report["embed_and_index_s"] = round(time.perf_counter() - t, 1)
    report["text_export_present"] = any((cache / "onnx").glob("text-*.onnx"))

    def forget_queries() -> None:
        shutil.rmtree(cache / "queries", ignore_errors=True)

    rows = {}
    for query in QUERIES:
        cmd = [*cli, "search", query, "--json"]
        rows[f'"{query}", first time'] = timed(cmd, env, args.runs, before=forget_queries)
        rows[f'"{query}", repeated'] = timed(cmd, env, args.runs)
    if args.baseline_rev:
        with tempfile.TemporaryDirectory() as tmp:
            src = baseline_tree(args.baseline_rev, Path(tmp))
            base_env = {**env, "PYTHONPATH": str(src)}
            for query in QUERIES[:1]:
                rows[f'"{query}", baseline {args.baseline_rev}'] = timed(
                    [*cli, "search", query, "--json"], base_env, args.runs)
    report["rows"] = rows
    width = max(len(k) for k in rows)
    print(f"{'cxrtool search ...':<{width}}  median s   min s   max s  peak MB")
    for name, r in rows.items():
        print(f"{name:<{width}}  {r['median_s']:8.2f}  {r['min_s']:6.2f}  {r['max_s']:6.2f}  {r['peak_mb']:7d}")
    print(json.dumps(report))
    if args.workspace is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
