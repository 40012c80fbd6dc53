"""Loopback load test of `cxrtool serve`: latency percentiles and errors under concurrent queries.

Usage: python benchmarks/serve_load.py [--workspace DIR] [--requests 120] [--concurrency 1,4,16]
                                       [--time-limit 60] [--json FILE]

Starts the real `cxrtool serve` command in a subprocess on 127.0.0.1 (a free port), then sends
bounded phases of requests from this process (httpx, asyncio; at most ``--requests`` requests and
``--time-limit`` seconds per phase; only loopback is ever contacted) and stops the server:

- text queries, each one new (no query-vector cache hit), at each concurrency level;
- the same few text queries repeated (the page re-runs a query as filters change: cache hits);
- "more like this" (an indexed image's stored vector: no model call);
- thumbnails of every indexed image: first render (disk cache emptied before) and cached;
- image uploads (DICOM and PNG files from the archive, decoded and embedded per request);
- /api/health while 16 text queries run: the event loop must keep answering.

Without ``--workspace`` it embeds and indexes sample_data/ with the default model into a
temporary folder first (about 20 s). Latency is wall time per request as the client sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
FINDINGS = ["pleural effusion", "cardiomegaly", "pneumothorax", "atelectasis", "consolidation", "pulmonary edema",
            "pneumonia", "nodule", "mass", "emphysema", "fibrosis", "hernia", "infiltrate", "lung opacity",
            "pleural thickening", "support devices", "enlarged cardiac silhouette", "clear lungs"]
QUALIFIERS = ["", "small", "large", "left", "right", "bilateral", "mild", "moderate", "severe", "new", "no",
              "possible", "basal", "apical", "lower lobe", "upper lobe"]


def unique_queries() -> list[str]:
    """Distinct text queries (so none is a cache hit), in a fixed shuffled order."""
    queries = sorted({" ".join(f"{a} {b} {f}".split()) for f in FINDINGS for a in QUALIFIERS for b in QUALIFIERS})
    random.Random(0).shuffle(queries)
    return queries


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def phase(client: httpx.AsyncClient, name: str, make_request, count: int, concurrency: int,
                time_limit: float) -> dict:
    """Send ``count`` requests, ``concurrency`` at a time, stopping at ``time_limit`` seconds."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = itertools.count()
    deadline = time.monotonic() + time_limit
    start = time.perf_counter()

    async def worker() -> None:
        while time.monotonic() < deadline:
            i = next(counter)
            if i >= count:
                return
            t0 = time.perf_counter()
            try:
                response = await make_request(client, i)
                ok = response.status_code == 200
                key = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                ok, key = False, type(exc).__name__
            if ok:
                latencies.append((time.perf_counter() - t0) * 1000)
            else:
                errors[key] = errors.get(key, 0) + 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    done = len(latencies) + sum(errors.values())
    row = {"phase": name, "concurrency": concurrency, "requests": done, "errors": sum(errors.values()),
           "error_kinds": errors, "seconds": round(seconds, 2), "req_per_s": round(done / seconds, 1)}
    if latencies:
        row.update(p50_ms=round(statistics.median(latencies), 1), p99_ms=round(percentile(latencies, 99), 1),
                   max_ms=round(max(latencies), 1))
    print(f"{name:<34} c={concurrency:<3} n={done:<4} err={row['errors']:<3} "
          f"p50={row.get('p50_ms', '-'):>7} ms  p99={row.get('p99_ms', '-'):>7} ms  {row['req_per_s']:>6} req/s",
          flush=True)
    return row


def build_sample_workspace(folder: Path) -> Path:
    ws = folder / "ws"
    if not (ws / "index" / "index.json").is_file():
        cli = [sys.executable, "-m", "cxrtool"]
        subprocess.run([*cli, "embed", str(REPO / "sample_data" / "archive"), "--workspace", str(ws)], check=True)
        subprocess.run([*cli, "index", "--workspace", str(ws)], check=True)
    return ws


def start_server(ws: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "cxrtool", "serve", "--workspace", str(ws), "--port", str(port),
                             "--device", "cpu"])
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/api/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.3)
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode})")
    proc.kill()
    raise SystemExit("the server did not start within 180 s")


async def run(base: str, archive: Path, args: argparse.Namespace) -> list[dict]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        first = (await client.get("/api/search", params={"q": "chest", "k": 200, "dedupe": 0})).json()["images"]
        ids = [h["id"] for h in first]
        queries = unique_queries()
        n, limit = args.requests, args.time_limit
        slices = itertools.count()  # each text phase takes its own slice of the queries: none repeats

        def text(i_base: int):
            async def request(c: httpx.AsyncClient, i: int) -> httpx.Response:
                return await c.get("/api/search", params={"q": queries[(i_base + i) % len(queries)], "k": 20})
            return request

        async def repeated(c: httpx.AsyncClient, i: int) -> httpx.Response:
            return await c.get("/api/search", params={"q": FINDINGS[i % 3], "k": 20, "per_study": i % 2 == 0})

        async def like(c: httpx.AsyncClient, i: int) -> httpx.Response:
            return await c.get("/api/search", params={"like": ids[i % len(ids)], "k": 20})

        async def thumb(c: httpx.AsyncClient, i: int) -> httpx.Response:
            return await c.get(f"/api/images/{ids[i % len(ids)]}/thumb")

        uploads = [p for p in sorted((archive / "pacs").rglob("*")) if p.is_file() and "SR" not in p.name]
        uploads += sorted((archive / "hannover").rglob("*.png"))
        payloads = [(p.name, p.read_bytes()) for p in uploads]

        async def upload(c: httpx.AsyncClient, i: int) -> httpx.Response:
            name, data = payloads[i % len(payloads)]
            return await c.post("/api/search/image", params={"name": name, "k": 20}, content=data)

        async def health(c: httpx.AsyncClient, i: int) -> httpx.Response:
            return await c.get("/api/health")

        rows = [await phase(client, "warm-up (text)", text(next(slices) * n), 10, 1, limit)]
        for c in args.concurrency:
            rows.append(await phase(client, "text query, new each time", text(next(slices) * n), n, c, limit))
        rows.append(await phase(client, "text query, repeated (cached)", repeated, n, 16, limit))
        rows.append(await phase(client, "more like this (stored vector)", like, n, 16, limit))
        rows.append(await phase(client, "thumbnail, first render", thumb, len(ids), 8, limit))
        rows.append(await phase(client, "thumbnail, cached", thumb, len(ids), 16, limit))
        rows.append(await phase(client, "image upload (DICOM/PNG)", upload, min(n, 60), 4, limit))
        busy = asyncio.create_task(phase(client, "text query, background load", text(next(slices) * n), n, 16, limit))
        await asyncio.sleep(0.5)
        rows.append(await phase(client, "/api/health during text load", health, 100, 1, limit))
        rows.append(await busy)
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, help="An embedded + indexed workspace (default: sample_data, "
                        "default model, in a temporary folder).")
    parser.add_argument("--requests", type=int, default=120, help="Requests per phase (upper bound).")
    parser.add_argument("--concurrency", default="1,4,16", help="Concurrency levels for the new-text-query phase.")
    parser.add_argument("--time-limit", type=float, default=60.0, help="Seconds per phase (upper bound).")
    parser.add_argument("--json", type=Path, help="Also write the rows as JSON here.")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    tmp = None
    if args.workspace is None:
        tmp = Path(tempfile.mkdtemp(prefix="cxrtool-serve-load-"))
        args.workspace = build_sample_workspace(tmp)
    ws = args.workspace
    shutil.rmtree(ws / "serve-cache", ignore_errors=True)  # first renders are really first
    archive = Path(json.loads((ws / "embed.json").read_text())["archive"])
    proc, base = start_server(ws)
    print(f"serving {ws} at {base}; {os.cpu_count()} CPUs", flush=True)
    try:
        rows = asyncio.run(run(base, archive, args))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
