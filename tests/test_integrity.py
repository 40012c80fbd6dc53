"""A workspace that survives races and faults, tested with real processes and real files: two
`cxrtool embed` racing, a lock left by a `kill -9`'d writer, each file kind cut short, a foreign
shard, a search during index rebuilds, a full disk (a real tmpfs) and a read-only workspace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cxrtool.embed.pipeline import embed_archive
from cxrtool.embed.shards import read_shard_metadata, shard_paths, write_shard
from cxrtool.embed.validate import validate_workspace
from cxrtool.errors import WorkspaceBusyError, WorkspaceError
from cxrtool.index.build import build_index
from cxrtool.index.info import CURRENT, INDEX_FILE, INFO_FILE, current_generation, generations
from cxrtool.index.search import Index
from cxrtool.locks import filesystem_type, workspace_lock
from cxrtool.workspace import Workspace

from .conftest import ARCHIVE

CXRTOOL = [sys.executable, "-m", "cxrtool.cli"]
ROOT = os.geteuid() == 0


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CXRTOOL, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*CXRTOOL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def archive_files() -> set[str]:
    from cxrtool.io.discover import discover_archive

    return {f.rel for f in discover_archive(ARCHIVE)}


def embedded_paths(ws: Path) -> list[str]:
    tables = [pq.read_table(f, columns=["path"]) for f in shard_paths(ws / "shards")]
    return [p for t in tables for p in t.column("path").to_pylist()]


def assert_exactly_once(ws: Path) -> None:
    paths = embedded_paths(ws)
    dups = [p for p, n in Counter(paths).items() if n > 1]
    assert not dups, f"{len(dups)} files embedded twice, e.g. {dups[:3]}"
    report = validate_workspace(ARCHIVE, ws)
    assert report.ok, report.to_dict()


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for word in words:
        assert word in errors[0], errors[0]


def wait_for(condition, timeout: float = 120.0, what: str = "") -> None:
    t = time.monotonic()
    while not condition():
        if time.monotonic() - t > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def lock_held(ws: Path, name: str = "embed-images") -> bool:
    path = ws / ".locks" / f"{name}.lock"
    return path.is_file() and path.stat().st_size > 0


# ------------------------------------------------------------------------------------ locking
def test_two_racing_cli_embeds_write_every_file_once(tmp_path, tiny_model_dir):
    """Both started at once (a cron overlap): they load the model side by side and meet at the lock;
    the one that comes second waits for the whole of the first run, then finds nothing left to do."""
    ws = tmp_path / "ws"
    args = ["embed", str(ARCHIVE), "--workspace", str(ws), "--model", str(tiny_model_dir), "--shard-rows", "16",
            "--json"]
    procs = [start(*args), start(*args)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode in (0, 1), err  # 1: the archive has files that fail, by design
        assert "Traceback" not in err
    waited = [err for _, err in results if "waiting:" in err]
    assert len(waited) == 1 and "cxrtool embed" in waited[0], [err for _, err in results]  # and said for whom
    summaries = [json.loads(out) for out, _ in results]
    assert sorted(s["embedded"] for s in summaries)[0] == 0  # the second found everything done
    assert_exactly_once(ws)


def test_no_wait_refuses_in_one_line_while_another_writer_holds_the_lock(tmp_path, tiny_model_dir):
    ws = tmp_path / "ws"
    with workspace_lock(ws, "embed-images", "cxrtool embed (test holder)"):
        proc = cli("embed", str(ARCHIVE), "--workspace", str(ws), "--model", str(tiny_model_dir), "--no-wait")
        one_line_error(proc, "in use by", "test holder")
        index = cli("index", "--workspace", str(ws), "--no-wait")  # another lock: not refused for being busy
        assert "in use" not in index.stderr
    assert not shard_paths(ws / "shards")


def test_a_waiter_names_a_holder_that_records_itself_just_after_locking(tmp_path):
    """The race of two embeds started together: the second finds the lock taken before the first
    has written who it is; it reads the record again instead of saying "another process"."""
    import fcntl
    import threading

    ws = tmp_path / "ws"
    lock = ws / ".locks" / "embed-images.lock"
    lock.parent.mkdir(parents=True)
    taken = threading.Event()

    def holder() -> None:  # a real second open file description: flock conflicts as between processes
        with open(lock, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            taken.set()
            time.sleep(0.2)
            fh.write(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "command": "cxrtool embed A",
                                 "since": "now"}))
            fh.flush()
            time.sleep(0.5)

    thread = threading.Thread(target=holder)
    thread.start()
    taken.wait()
    try:
        with pytest.raises(WorkspaceBusyError, match="cxrtool embed A"), \
                workspace_lock(ws, "embed-images", "cxrtool embed B", wait=False):
            pass
    finally:
        thread.join()


def test_a_lock_left_by_a_kill_9_writer_is_taken_over(tmp_path, tiny_model_dir):
    ws = tmp_path / "ws"
    args = ["embed", str(ARCHIVE), "--workspace", str(ws), "--model", str(tiny_model_dir), "--shard-rows", "4",
            "--batch-size", "2"]
    proc = start(*args)
    wait_for(lambda: len(shard_paths(ws / "shards")) >= 2 or proc.poll() is not None, what="two shards")
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((ws / ".locks" / "embed-images.lock").read_text())["pid"] == proc.pid  # left behind
    again = cli(*args, "--no-wait", "--json")  # refused if the dead writer's lock still counted
    assert again.returncode in (0, 1), again.stderr
    summary = json.loads(again.stdout)
    assert summary["already_done"] >= 4 and summary["embedded"] > 0
    assert_exactly_once(ws)


def test_parts_run_side_by_side_but_never_beside_a_whole_run(tmp_path, tiny_model):
    ws = tmp_path / "ws"
    with workspace_lock(ws, "embed-images", "part 0", part="part-0000-of-0002"):
        s = embed_archive(ARCHIVE, ws, tiny_model, workers=0, num_parts=2, part_index=1, progress=False, wait=False)
        assert s.embedded > 0
        with pytest.raises(WorkspaceBusyError, match="in use"):
            embed_archive(ARCHIVE, ws, tiny_model, workers=0, num_parts=2, part_index=0, progress=False, wait=False)
        with pytest.raises(WorkspaceBusyError, match="in use"):
            embed_archive(ARCHIVE, ws, tiny_model, workers=0, progress=False, wait=False)


def test_filesystem_type_is_read_from_mountinfo(tmp_path):
    assert filesystem_type(Path("/proc")) == "proc"
    assert filesystem_type(tmp_path)  # whatever it is, it is named


def test_network_filesystems_get_a_note_and_refused_locks_one_line(tmp_path, monkeypatch):
    """No NFS server here: the mount type and the kernel's refusal (ENOLCK, as an NFS mount with
    `nolock` gives) are substituted, to check what the user is told."""
    import errno
    import fcntl

    import cxrtool.locks as locks

    said: list[str] = []
    monkeypatch.setattr(locks, "filesystem_type", lambda path: "nfs")
    with workspace_lock(tmp_path / "ws", "embed-images", "test", say=said.append):
        pass
    assert len(said) == 1 and "is on nfs" in said[0] and "docs/workspace.md" in said[0]

    def refuse(fd, mode):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", refuse)
    with pytest.raises(WorkspaceError, match="does not support file locks") as info, \
            workspace_lock(tmp_path / "ws2", "embed-images", "test", say=said.append):
        pass
    assert "CXRTOOL_LOCKS=off" in info.value.hint
    monkeypatch.setenv("CXRTOOL_LOCKS", "off")
    with workspace_lock(tmp_path / "ws2", "embed-images", "test", say=said.append):
        pass


# ---------------------------------------------------------------------------------- torn files
@pytest.fixture(scope="module")
def indexed(module_tmp, tiny_model):
    """An embedded and indexed workspace (two generations), copied afresh by each test."""
    ws = module_tmp.mktemp("indexed") / "ws"
    embed_archive(ARCHIVE, ws, tiny_model, workers=0, shard_rows=32, progress=False)
    build_index(ws, model=tiny_model)
    build_index(ws, model=tiny_model, rebuild=True)
    assert len(generations(ws / "index")) == 2
    return ws


@pytest.fixture
def workspace(indexed, tmp_path):
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(indexed, ws)
    return ws


def cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def search_cli(ws: Path, model: Path) -> subprocess.CompletedProcess:
    return cli("search", "pleural effusion", "-k", "3", "--dedupe", "0", "--workspace", str(ws), "--model", str(model),
               "--json")


def test_a_shard_cut_short_is_reported_quarantined_and_re_embedded(workspace, tiny_model_dir):
    shard = shard_paths(workspace / "shards")[1]
    lost = pq.read_table(shard, columns=["path"]).column("path").to_pylist()
    cut(shard)
    torn_size = shard.stat().st_size
    report = cli("validate", str(ARCHIVE), "--workspace", str(workspace))
    assert report.returncode == 1 and "Traceback" not in report.stderr
    assert f"bad shard: {shard}" in report.stdout and "cut short" in report.stdout
    hits = search_cli(workspace, tiny_model_dir)  # the index does not need the shard: it answers
    assert hits.returncode == 0 and len(json.loads(hits.stdout)) == 3, hits.stderr
    assert "Traceback" not in hits.stderr
    index = cli("index", "--workspace", str(workspace), "--model", str(tiny_model_dir))
    assert index.returncode == 0 and "did not verify" in index.stderr and "Traceback" not in index.stderr
    embed = cli("embed", str(ARCHIVE), "--workspace", str(workspace), "--model", str(tiny_model_dir), "--json")
    assert embed.returncode in (0, 1) and "Traceback" not in embed.stderr
    assert "did not verify" in embed.stderr and json.loads(embed.stdout)["embedded"] == len(lost)
    moved = list((workspace / "quarantine").rglob(shard.name))
    assert len(moved) == 1 and moved[0].stat().st_size == torn_size  # kept, not deleted
    assert_exactly_once(workspace)
    assert cli("index", "--workspace", str(workspace), "--model", str(tiny_model_dir)).returncode == 0


@pytest.mark.parametrize("name", [INDEX_FILE, INFO_FILE, "rows-00000.parquet", "vectors-00000.npy"])
def test_a_torn_index_file_answers_from_the_previous_generation_then_heals(workspace, tiny_model_dir, name):
    gen = current_generation(workspace / "index")
    cut(gen / name)
    hits = search_cli(workspace, tiny_model_dir)
    assert hits.returncode == 0 and len(json.loads(hits.stdout)) == 3, hits.stderr
    assert "answering from the previous one" in hits.stderr and "Traceback" not in hits.stderr
    healed = cli("index", "--workspace", str(workspace), "--model", str(tiny_model_dir))
    assert healed.returncode == 0 and "damaged" in healed.stderr and "Traceback" not in healed.stderr
    again = search_cli(workspace, tiny_model_dir)
    assert again.returncode == 0 and "note:" not in again.stderr


def test_every_generation_torn_says_what_to_run(workspace, tiny_model_dir):
    for gen in generations(workspace / "index"):
        cut(gen / INDEX_FILE)
    one_line_error(search_cli(workspace, tiny_model_dir), "no whole index")
    (workspace / "index" / CURRENT).write_text("garbage")  # a torn pointer is not followed either
    assert cli("index", "--workspace", str(workspace), "--model", str(tiny_model_dir)).returncode == 0
    assert search_cli(workspace, tiny_model_dir).returncode == 0


def test_no_index_says_what_to_run(tmp_path, tiny_model, tiny_model_dir):
    ws = tmp_path / "ws"
    embed_archive(ARCHIVE, ws, tiny_model, workers=0, progress=False)
    one_line_error(search_cli(ws, tiny_model_dir), "no index")


def test_torn_ledger_and_errors_lines_are_ignored(workspace, tiny_model):
    with open(workspace / "shards" / "shards.jsonl", "a") as fh:
        fh.write('{"shard": "shard-000')
    with open(workspace / "errors.jsonl", "a") as fh:
        fh.write('{"path": "nih/')
    s = embed_archive(ARCHIVE, workspace, tiny_model, workers=0, progress=False)
    assert s.embedded == 0
    assert_exactly_once(workspace)


def test_a_foreign_file_and_a_stray_of_another_model_are_quarantined(workspace, tiny_model):
    shards = workspace / "shards"
    pq.write_table(pa.table({"x": [1, 2, 3]}), shards / "shard-00900.parquet")
    stray_rows = [{"id": 1, "path": "nih/not-really.png"}]
    write_shard(shards / "shard-00901.parquet", stray_rows, np.ones((1, 32), np.float32), "sha256:another-model")
    report = validate_workspace(ARCHIVE, workspace)
    reasons = {Path(b["path"]).name: b["reason"] for b in report.bad_shards}
    assert "foreign" in reasons["shard-00900.parquet"] and "another model" in reasons["shard-00901.parquet"]
    embed_archive(ARCHIVE, workspace, tiny_model, workers=0, progress=False)
    assert {p.name for p in (workspace / "quarantine").rglob("*.parquet")} == {"shard-00900.parquet",
                                                                               "shard-00901.parquet"}
    assert_exactly_once(workspace)


def test_a_whole_workspace_of_another_model_is_refused_not_quarantined(workspace, tiny_model, tiny_text_dir):
    from cxrtool.model import create_model

    (workspace / "embed.json").unlink()  # even without the record, the shards say whose they are
    other = create_model("mobilenetv3_small_050", str(tiny_text_dir), embed_dim=32, input_size=64)
    other.card.fingerprint = "sha256:other"
    with pytest.raises(WorkspaceError, match="another model"):
        embed_archive(ARCHIVE, workspace, other, workers=0, progress=False)
    assert not (workspace / "quarantine").exists()


# ------------------------------------------------------------------------------ whole states
BUILDER = """
import sys, time
from cxrtool.index.build import build_index
ws, model, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    build_index(ws, model=model, rebuild=True, kind="hnsw" if i % 2 else "flat")
print("built", n)
"""


def test_searches_during_index_rebuilds_see_whole_generations(workspace, tiny_model, tiny_model_dir):
    builder = subprocess.Popen([sys.executable, "-c", BUILDER, str(workspace), str(tiny_model_dir), "6"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    query = tiny_model.encode_texts(["pleural effusion"])[0]
    searched, seen = 0, set()
    while builder.poll() is None or searched < 3:
        index = Index.open(workspace, model=tiny_model)
        seen.add(index.info.generation)
        assert len(index.store) == index.info.count == index.index.ntotal  # never a mix of two builds
        hits = index.search(vector=query, k=5, dedupe=None)
        assert len(hits) == 5 and all(h.path for h in hits)
        searched += 1
    _, err = builder.communicate()
    assert builder.returncode == 0, err
    assert len(seen) >= 2, "every search saw one generation: the builds did not overlap the searches"


# -------------------------------------------------------------------------------- OS errors
@contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def can_mount() -> bool:
    if not ROOT:
        return False
    probe = Path("/tmp") / f"cxrtool-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)]
    ok = subprocess.run(mount, capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)], check=False)
    probe.rmdir()
    return ok


needs_mount = pytest.mark.skipif(not can_mount(), reason="needs root (mount a small tmpfs for a real full disk)")


@needs_mount
def test_disk_full_is_one_line_and_the_next_run_resumes(tmp_path, tiny_model_dir):
    with tmpfs(tmp_path / "small", "160k") as ws:
        args = ["embed", str(ARCHIVE), "--workspace", str(ws), "--model", str(tiny_model_dir), "--shard-rows", "8"]
        full = cli(*args)
        one_line_error(full, "disk is full")
        assert not list(ws.rglob("*.tmp")), "a temp file was left on the full disk"
        for shard in shard_paths(ws / "shards"):
            pq.read_table(shard)  # nothing torn
        subprocess.run(["mount", "-o", "remount,size=64m", str(ws)], check=True)
        resumed = cli(*args, "--json")
        assert resumed.returncode in (0, 1), resumed.stderr
        assert json.loads(resumed.stdout)["already_done"] > 0
        assert_exactly_once(ws)


@needs_mount
def test_a_read_only_workspace_is_searched_and_writers_say_why_not(tmp_path, tiny_model_dir):
    with tmpfs(tmp_path / "ro", "64m") as ws:
        assert cli("embed", str(ARCHIVE), "--workspace", str(ws), "--model", str(tiny_model_dir)).returncode in (0, 1)
        assert cli("index", "--workspace", str(ws), "--model", str(tiny_model_dir)).returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(ws)], check=True)
        assert search_cli(ws, tiny_model_dir).returncode == 0  # readers need no write access
        one_line_error(cli("embed", str(ARCHIVE), "--workspace", str(ws), "--model", str(tiny_model_dir)), "read-only")
        one_line_error(cli("index", "--workspace", str(ws), "--rebuild"), "read-only")
        debug = cli("--debug", "index", "--workspace", str(ws), "--rebuild")
        assert "Traceback" in debug.stderr  # --debug keeps it


def test_a_missing_archive_and_workspace_are_one_line(tmp_path):
    one_line_error(cli("embed", str(tmp_path / "nowhere")), "no such file")
    one_line_error(cli("index", "--workspace", str(tmp_path / "nowhere")), "no workspace")


def test_read_shard_metadata_skips_shards_that_do_not_verify(workspace):
    before = read_shard_metadata(workspace / "shards", ["path"]).num_rows
    cut(shard_paths(workspace / "shards")[0])
    assert read_shard_metadata(workspace / "shards", ["path"]).num_rows < before
    assert Workspace(workspace).shards.is_dir()
