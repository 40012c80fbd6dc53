"""Per-file cost of a pipeline worker's steps, before and after reading each file only once.

Usage: python benchmarks/embed_read_once.py ARCHIVE [--n 100] [--rounds 3]

"three reads": header from the path (pydicom), decode from the path, sha256 over the file - what
the worker did before. "one read": read the bytes once, xxh3-128 them, header check and decode
parse those bytes - what it does now. Both run the same files, alternating file by file, so a
busy shared machine slows both alike; medians of per-file times. Model input is not part of
this (preprocess is the same on both sides).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path

from cxrtool.embed.shards import content_hash
from cxrtool.io import decode_image, discover_archive
from cxrtool.io.dicom_header import read_dicom_header

MIN_SIDE = 224


def three_reads(path: Path, kind: str) -> str:
    if kind == "dicom":
        read_dicom_header(path)
    decode_image(path, min_side=MIN_SIDE)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def one_read(path: Path, kind: str) -> str:
    data = path.read_bytes()
    digest = content_hash(data)
    if kind == "dicom":
        read_dicom_header(path, data=data)
    decode_image(path, min_side=MIN_SIDE, data=data)
    return digest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("archive", type=Path)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    files = [f for f in discover_archive(args.archive) if not f.problem][: args.n]
    times: dict[str, list[float]] = {"three_reads": [], "one_read": []}
    hash_ms: dict[str, list[float]] = {"sha256": [], "xxh3_128": []}
    one_read(files[0].path, files[0].kind)  # warm-up: codec plugins load on first use
    for r in range(args.rounds):
        for i, f in enumerate(files):
            order = [three_reads, one_read] if (i + r) % 2 == 0 else [one_read, three_reads]
            for fn in order:
                t = time.perf_counter()
                fn(f.path, f.kind)
                times[fn.__name__].append(time.perf_counter() - t)
            data = f.path.read_bytes()
            t = time.perf_counter()
            hashlib.sha256(data).hexdigest()
            hash_ms["sha256"].append(time.perf_counter() - t)
            t = time.perf_counter()
            content_hash(data)
            hash_ms["xxh3_128"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(json.dumps({
        "archive": str(args.archive), "files": len(files), "rounds": args.rounds,
        "mean_file_mb": round(sum(f.path.stat().st_size for f in files) / len(files) / 2**20, 2),
        "median_ms_per_file": {k: round(v, 2) for k, v in med.items()},
        "files_per_s": {k: round(1000 / v, 1) for k, v in med.items()},
        "one_read_speedup": round(med["three_reads"] / med["one_read"], 2),
        "median_hash_ms": {k: round(statistics.median(v) * 1000, 2) for k, v in hash_ms.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
