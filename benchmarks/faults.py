"""Every everyday fault against the real `cxrtool` command, one table: fault, outcome, files lost,
duplicates, tracebacks shown.

Real processes on real files: two embeds racing, `kill -9` at random points (embed and index
build), each file kind cut short, a foreign shard and a stray of another model, searches during
index rebuilds, a full disk and a read-only workspace (a real tmpfs: needs root, else those rows
say "skipped"). After each fault the scenario runs what a user would (`embed` / `index` again)
and counts, with `cxrtool validate`'s rule, the archive files neither embedded nor listed with a
reason (lost) and the files embedded twice (duplicates); "tracebacks" counts Python tracebacks in
everything the commands printed (there should be none: `--debug` is never passed).

    python benchmarks/faults.py [--archive sample_data/archive] [--model DIR] [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
CXRTOOL = [sys.executable, "-m", "cxrtool.cli"]


class Scenario:
    """One fault: runs commands, collects their stderr, and checks the workspace at the end."""

    def __init__(self, name: str, archive: Path, ws: Path, model: str | None) -> None:
        self.name, self.archive, self.ws, self.model = name, archive, ws, model
        self.stderr: list[str] = []

    def args(self, command: str, *extra: str) -> list[str]:
        model = ["--model", self.model] if self.model and command in ("embed", "index", "search") else []
        archive = [str(self.archive)] if command in ("embed", "validate") else []
        return [*CXRTOOL, command, *archive, "--workspace", str(self.ws), *model, *extra]

    def run(self, command: str, *extra: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.args(command, *extra), capture_output=True, text=True, timeout=900)
        self.stderr.append(proc.stderr)
        return proc

    def start(self, command: str, *extra: str) -> subprocess.Popen:
        return subprocess.Popen(self.args(command, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)

    def collect(self, proc: subprocess.Popen) -> int:
        _, err = proc.communicate(timeout=900)
        self.stderr.append(err or "")
        return proc.returncode

    def search(self) -> subprocess.CompletedProcess:
        return self.run("search", "pleural effusion", "-k", "3", "--dedupe", "0", "--json")

    def result(self, outcome: str) -> dict:
        from cxrtool.embed.shards import shard_paths
        from cxrtool.embed.validate import validate_workspace

        paths = [p for f in shard_paths(self.ws / "shards")
                 for p in pq.read_table(f, columns=["path"]).column("path").to_pylist()]  # every shard, verified or not
        report = validate_workspace(self.archive, self.ws, limit=10**9)
        return {"fault": self.name, "outcome": outcome, "files_lost": len(report.missing),
                "duplicates": sum(n - 1 for n in Counter(paths).values() if n > 1),
                "tracebacks": sum(err.count("Traceback") for err in self.stderr), "validate_ok": report.ok}


def one_line(proc: subprocess.CompletedProcess) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    return errors[0][:90] if len(errors) == 1 else f"{len(errors)} error lines"


def cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def wait_for(condition: Callable[[], bool], timeout: float = 300) -> bool:
    t = time.monotonic()
    while not condition():
        if time.monotonic() - t > timeout:
            return False
        time.sleep(0.05)
    return True


# --------------------------------------------------------------------------------- scenarios
def racing_embeds(s: Scenario, rng: random.Random) -> str:
    first = s.start("embed", "--shard-rows", "16")
    wait_for(lambda: (s.ws / ".locks" / "embed-images.lock").is_file() or first.poll() is not None)
    second = s.start("embed", "--shard-rows", "16")
    codes = s.collect(first), s.collect(second)
    waited = "waiting:" in s.stderr[-1]
    return f"exit {codes}; second {'waited for the first' if waited else 'did not wait'}"


def kill_9_then_no_wait(s: Scenario, rng: random.Random) -> str:
    proc = s.start("embed", "--shard-rows", "8")
    wait_for(lambda: len(list((s.ws / "shards").glob("shard-*.parquet"))) >= 2 or proc.poll() is not None)
    time.sleep(rng.uniform(0, 2))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    again = s.run("embed", "--shard-rows", "8", "--no-wait", "--json")
    done = json.loads(again.stdout) if again.stdout.strip() else {}
    return f"lock taken over at once (exit {again.returncode}); {done.get('already_done')} kept, " \
           f"{done.get('embedded')} embedded"


def kill_9_three_times(s: Scenario, rng: random.Random) -> str:
    kills = 0
    for _ in range(3):
        proc = s.start("embed", "--shard-rows", "8")
        time.sleep(rng.uniform(2.0, 8.0))
        kills += proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = s.run("embed", "--shard-rows", "8")
    return f"{kills} killed mid-run, then exit {final.returncode}"


def torn_shard(s: Scenario, rng: random.Random) -> str:
    shards = sorted((s.ws / "shards").glob("shard-*.parquet"))
    cut(rng.choice(shards), rng.uniform(0.1, 0.9))
    steps = [("validate", s.run("validate").returncode), ("search", s.search().returncode),
             ("index", s.run("index").returncode), ("embed", s.run("embed").returncode),
             ("validate", s.run("validate").returncode), ("index", s.run("index").returncode)]
    moved = len(list((s.ws / "quarantine").rglob("*.parquet")))
    return ", ".join(f"{c} {r}" for c, r in steps) + f"; {moved} quarantined"


def foreign_shard(s: Scenario, rng: random.Random) -> str:
    pq.write_table(pa.table({"x": [1, 2, 3]}), s.ws / "shards" / "shard-00990.parquet")
    return _repair(s)


def stray_shard(s: Scenario, rng: random.Random) -> str:
    import numpy as np

    from cxrtool.embed.shards import write_shard

    write_shard(s.ws / "shards" / "shard-00991.parquet", [{"id": 7, "path": "stray.png"}],
                np.ones((1, 8), np.float32), "sha256:another-model")
    return _repair(s)


def _repair(s: Scenario) -> str:
    before = s.run("validate").returncode
    s.run("embed")
    moved = len(list((s.ws / "quarantine").rglob("*.parquet")))
    return f"validate {before} -> embed quarantined {moved} -> validate {s.run('validate').returncode}"


def torn_index_file(name: str) -> Callable[[Scenario, random.Random], str]:
    def scenario(s: Scenario, rng: random.Random) -> str:
        from cxrtool.index.info import current_generation

        cut(current_generation(s.ws / "index") / name, rng.uniform(0.1, 0.9))
        first = s.search()
        fallback = "previous generation" if "answering from the previous one" in first.stderr else one_line(first)
        healed = s.run("index")
        after = s.search()
        return f"search {first.returncode} ({fallback}); index {healed.returncode}; search {after.returncode}"
    return scenario


def every_generation_torn(s: Scenario, rng: random.Random) -> str:
    from cxrtool.index.info import INDEX_FILE, generations

    for gen in generations(s.ws / "index"):
        cut(gen / INDEX_FILE)
    first = s.search()
    healed = s.run("index")
    return f"search {first.returncode} ({one_line(first)}); index {healed.returncode}; search {s.search().returncode}"


def kill_9_during_index(s: Scenario, rng: random.Random) -> str:
    proc = s.start("index", "--rebuild", "--kind", "hnsw")
    time.sleep(rng.uniform(1.0, 4.0))
    mid = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = s.search()
    again = s.run("index", "--no-wait")
    return f"{'killed mid-build' if mid else 'build had finished'}; search {first.returncode}; " \
           f"index --no-wait {again.returncode}"


BUILDER = """
import sys
from cxrtool.index.build import build_index
for i in range(int(sys.argv[3])):
    build_index(sys.argv[1], model=sys.argv[2] or None, rebuild=True, kind="hnsw" if i % 2 else "flat")
"""


def search_during_rebuilds(s: Scenario, rng: random.Random) -> str:
    from cxrtool.index.search import Index

    builder = subprocess.Popen([sys.executable, "-c", BUILDER, str(s.ws), s.model or "", "5"],
                               stderr=subprocess.PIPE, text=True)
    searches, mixed, generations = 0, 0, set()
    while builder.poll() is None:
        index = Index.open(s.ws)
        generations.add(index.info.generation)
        mixed += not (len(index.store) == index.info.count == index.index.ntotal)
        ids = index.search_vectors(index.store.vectors([0]), k=5)[1]
        mixed += bool((ids < 0).any())
        searches += 1
    s.stderr.append(builder.communicate()[1])
    return f"{searches} searches over {len(generations)} generations, {mixed} saw a mix"


@contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def disk_full(s: Scenario, rng: random.Random) -> str:
    with tmpfs(s.ws, "200k"):
        full = s.run("embed", "--shard-rows", "8")
        subprocess.run(["mount", "-o", "remount,size=256m", str(s.ws)], check=True)
        resumed = s.run("embed", "--shard-rows", "8", "--json")
        row = f"exit {full.returncode} ({one_line(full)}); resume exit {resumed.returncode}, " \
              f"{json.loads(resumed.stdout)['already_done'] if resumed.stdout.strip() else '?'} kept"
        s.row = s.result(row)  # measured before the tmpfs goes away
    return row


def read_only(s: Scenario, rng: random.Random) -> str:
    with tmpfs(s.ws, "256m"):
        s.run("embed")
        s.run("index")
        subprocess.run(["mount", "-o", "remount,ro", str(s.ws)], check=True)
        search, embed, index = s.search(), s.run("embed"), s.run("index", "--rebuild")
        row = f"search {search.returncode}; embed {embed.returncode} ({one_line(embed)}); index {index.returncode}"
        s.row = s.result(row)
    return row


SCENARIOS: list[tuple[str, Callable, str]] = [
    # (fault, function, starting state: "empty" workspace or a copy of the "indexed" one)
    ("two embeds racing on one workspace", racing_embeds, "empty"),
    ("kill -9 mid-embed, then embed --no-wait", kill_9_then_no_wait, "empty"),
    ("kill -9 at 3 random points, then finish", kill_9_three_times, "empty"),
    ("a shard cut short", torn_shard, "indexed"),
    ("a foreign Parquet file among the shards", foreign_shard, "indexed"),
    ("a stray shard of another model", stray_shard, "indexed"),
    ("index.faiss cut short", torn_index_file("index.faiss"), "indexed"),
    ("index.json cut short", torn_index_file("index.json"), "indexed"),
    ("index rows table cut short", torn_index_file("rows-00000.parquet"), "indexed"),
    ("index vectors file cut short", torn_index_file("vectors-00000.npy"), "indexed"),
    ("every index generation torn", every_generation_torn, "indexed"),
    ("kill -9 during an index rebuild", kill_9_during_index, "indexed"),
    ("searches during 5 index rebuilds", search_during_rebuilds, "indexed"),
    ("disk full while embedding (200 KB tmpfs)", disk_full, "mount"),
    ("read-only workspace", read_only, "mount"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=REPO / "sample_data" / "archive")
    parser.add_argument("--model", default=None, help="model directory or hub name (default: the bundled model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="run only faults whose name contains one of these (comma-separated)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    archive = args.archive.resolve()
    root_ok = os.geteuid() == 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="cxrtool-faults-") as tmp:
        base = Path(tmp) / "indexed"
        setup = Scenario("setup", archive, base, args.model)
        setup.run("embed", "--shard-rows", "32")
        setup.run("index")
        setup.run("index", "--rebuild")  # two generations
        for i, (name, fn, start) in enumerate(SCENARIOS):
            if args.only and not any(part in name for part in args.only.split(",")):
                continue
            ws = Path(tmp) / f"s{i:02d}"
            s = Scenario(name, archive, ws, args.model)
            if start == "indexed":
                shutil.copytree(base, ws)
            if start == "mount" and not root_ok:
                rows.append({"fault": name, "outcome": "skipped (needs root for a tmpfs)", "files_lost": "",
                             "duplicates": "", "tracebacks": "", "validate_ok": ""})
                continue
            t = time.perf_counter()
            try:
                outcome = fn(s, rng)
                row = getattr(s, "row", None) or s.result(outcome)
            except Exception as exc:  # a scenario that breaks is a finding, not a crash of the table
                print(f"{name}: what the commands printed on stderr:\n" + "\n".join(s.stderr)[-4000:], file=sys.stderr)
                row = {"fault": name, "outcome": f"SCENARIO FAILED: {type(exc).__name__}: {exc}"[:160],
                       "files_lost": "?", "duplicates": "?", "tracebacks": sum(e.count("Traceback") for e in s.stderr),
                       "validate_ok": False}
            row["seconds"] = round(time.perf_counter() - t, 1)
            rows.append(row)
            print(f"{name}: {row['outcome']}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| fault | outcome | files lost | duplicates | tracebacks shown | validate |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ok = {True: "ok", False: "NOT OK", "": ""}[r["validate_ok"]]
        print(f"| {r['fault']} | {r['outcome']} | {r['files_lost']} | {r['duplicates']} | {r['tracebacks']} | {ok} |")


if __name__ == "__main__":
    main()
