"""The Ray engine vs the local engine, in one run: steady-state throughput, start-up, peak memory.

Usage: python benchmarks/ray_engine.py [--n 1000] [--model DIR_OR_NAME] [--threads N]

Archives: the sample archive (sample_data/archive) and ``--n`` real NIH radiographs from
../shared/data (nih_512 + nih_512_extra JPEGs, copied to a temporary folder). For each archive the
local engine and ``--engine ray`` (a local Ray cluster on this machine, started once and timed
separately) embed into fresh workspaces with the same model (default: the bundled one).

- **steady state**: images per second between the first and the last shard row written (the
  writer's calls are timestamped), so cluster start-up, actor model loading and the first batch's
  latency are excluded on both sides;
- **whole run**: embedded / wall seconds of the run (cluster start-up excluded, actor start-up in);
- **start-up**: ``ray.init`` seconds;
- **peak memory**: the largest sum of resident memory over this process and every Ray process
  (raylet, GCS, workers), sampled every 0.2 s; the local runs go first, before the cluster starts.

Prints a table and the ratios ray / local.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def rss_of_tree() -> int:
    """Bytes resident in this process and every ray process on the machine."""
    total = 0
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            if int(proc.name) != me and b"ray" not in cmd:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return total


class Peak:
    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_of_tree())
            time.sleep(0.2)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def timed_run(archive: Path, model, engine: str, tmp: Path, threads: int | None) -> dict:
    from cxrtool.embed import writer as writer_mod
    from cxrtool.embed.pipeline import embed_archive

    stamps: list[tuple[float, int]] = []
    real_write = writer_mod.ShardWriter.write

    def write(self, rows, vectors):
        stamps.append((time.perf_counter(), len(rows)))
        return real_write(self, rows, vectors)

    writer_mod.ShardWriter.write = write
    try:
        ws = Path(tempfile.mkdtemp(dir=tmp))
        with Peak() as peak:
            t = time.perf_counter()
            s = embed_archive(archive, ws, model, progress=False, engine=engine, threads=threads)
            wall = time.perf_counter() - t
    finally:
        writer_mod.ShardWriter.write = real_write
    after_first = sum(n for _, n in stamps[1:])
    steady = after_first / (stamps[-1][0] - stamps[0][0]) if len(stamps) > 1 else float("nan")
    return {"embedded": s.embedded, "wall_s": wall, "img_s": s.embedded / wall, "steady_img_s": steady,
            "peak_rss_mb": peak.peak / 2**20}


def nih_archive(n: int, folder: Path) -> Path:
    files = sorted((SHARED / "nih_512").rglob("*.jpg")) + sorted((SHARED / "nih_512_extra").rglob("*.jpg"))
    if len(files) < n:
        sys.exit(f"only {len(files)} NIH JPEGs under {SHARED}")
    for f in files[:n]:
        shutil.copy(f, folder / f.name)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per Ray model actor")
    args = ap.parse_args()
    import ray

    from cxrtool.model import load_model

    model = load_model(args.model)
    results = {}
    with tempfile.TemporaryDirectory(prefix="cxrtool-ray-bench-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "nih").mkdir()
        nih = nih_archive(args.n, tmp / "nih")
        archives = {"sample_data": REPO / "sample_data" / "archive", f"NIH x{args.n}": nih}
        warm = REPO / "sample_data" / "archive" / "hannover"
        # the local engine first, with no Ray process on the machine (its peak memory is its own)
        timed_run(warm, model, "local", tmp, args.threads)  # the model's first batches, untimed
        for name, archive in archives.items():
            results[name] = {"local": timed_run(archive, model, "local", tmp, args.threads)}
        t = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
        startup = time.perf_counter() - t
        try:
            timed_run(warm, model, "ray", tmp, args.threads)  # actors' and workers' first use, untimed
            for name, archive in archives.items():
                results[name]["ray"] = timed_run(archive, model, "ray", tmp, args.threads)
        finally:
            ray.shutdown()
    print(f"model {model.card.provenance.get('name', '')}; {os.cpu_count()} CPUs; Ray cluster start-up "
          f"{startup:.1f} s (excluded below)")
    print(f"{'archive':<14}{'engine':<7}{'images':>7}{'steady img/s':>14}{'whole img/s':>13}{'peak MB':>9}")
    for name, r in results.items():
        for engine in ("local", "ray"):
            x = r[engine]
            print(f"{name:<14}{engine:<7}{x['embedded']:>7}{x['steady_img_s']:>14.1f}{x['img_s']:>13.1f}"
                  f"{x['peak_rss_mb']:>9.0f}")
        print(f"{'':<14}{'ratio':<7}{'':>7}{r['ray']['steady_img_s'] / r['local']['steady_img_s']:>14.2f}"
              f"{r['ray']['img_s'] / r['local']['img_s']:>13.2f}")
    print(json.dumps({"startup_s": startup, "results": results}))


if __name__ == "__main__":
    main()
